"""The hidden population of the synthetic Galaxy Zoo and the catalogues it yields: GZ1 table 2 and the GZ2
filename mapping, in the official columns.

One latent population (true type, distance, size, surface brightness, inclination, arms, seeing ...) drives
both the votes and the pixels (render.py). Votes derive from the truth *through visibility*: a distant, small,
faint or edge-on spiral looks smooth to volunteers (the real GZ1 bias), so UNCERTAIN galaxies look genuinely
ambiguous and a confident spiral shows its arms. Classification is a real task, not a lookup. Everything here
is vectorised over all rows: the join benchmark uses the full 667,944-row size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from galmorph.data.gzcsv import MAPPING_COLUMNS, TABLE2_COLUMNS
from galmorph.errors import UserError

SAMPLES: tuple[str, ...] = ("original", "extra", "stripe82", "stripe82_coadd_1", "stripe82_coadd_2")

REFERENCE_SIZE = 424
"""Every length in the population is in pixels of a 424x424 cut-out; other image sizes scale them."""

# Independent random streams, so e.g. changing mapping_fraction does not change the votes.
STREAM_CATALOGUE, STREAM_MAPPING, STREAM_MISSING, STREAM_RENDER = 11, 12, 13, 14

SPIRAL, ELLIPTICAL, LENTICULAR = "spiral", "elliptical", "lenticular"
_MORPH_SHARES = (0.65, 0.19, 0.16)  # lenticulars: smooth disks, early type but a split vote
_MERGER_SHARE = 0.03  # galaxies with an interacting companion (P_MG votes)
_DUPLICATE_SHARE = 0.004  # mapping rows repeating an objid (the real mapping has some)
_COADD_SHARE = 0.003  # mapping rows of Stripe 82 coadds: objids that are not in table 2
_FLAG_NOISE = 0.135  # scatter of the earlier estimate the flags come from
FLAG_THRESHOLD = 0.8  # the GZ1 flag threshold on the debiased fractions
# Where morphology becomes half visible: r_e in PSF FWHMs for arms, an edge-on disk, the debiasing's
# observables and a confidently smooth profile; and the surface brightness at r_e in sky-noise units.
_RES_ARMS, _RES_EDGE, _RES_OBS, _RES_SMOOTH, _SN_HALF = 1.6, 1.4, 1.5, 2.35, 5.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sky_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """RA/Dec in degrees inside the SDSS DR7 legacy footprint: the northern cap plus the southern stripes."""
    north = rng.random(n) < 0.88
    north_ra = rng.uniform(110.0, 260.0, n)
    north_dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(-5.0)), math.sin(math.radians(70.0)), n)))
    stripe_dec = np.array([0.0, 14.5, 29.5])[rng.integers(0, 3, n)]  # stripes 82, 76, 86
    south_ra = np.mod(rng.uniform(-50.0, 60.0, n), 360.0)
    south_dec = stripe_dec + rng.uniform(-1.25, 1.25, n)
    return np.where(north, north_ra, south_ra), np.where(north, north_dec, south_dec)


def _ascii_columns(parts: list[np.ndarray | bytes]) -> list[str]:
    """Join fixed-width pieces (digit arrays as int, literal separators as bytes) into strings, vectorised:
    formatting 667,944 coordinates one f-string at a time would take seconds."""
    n = next(len(p) for p in parts if isinstance(p, np.ndarray) and p.ndim == 2)
    cols = []
    for p in parts:
        if isinstance(p, bytes):
            cols.append(np.broadcast_to(np.frombuffer(p, dtype=np.uint8), (n, len(p))))
        else:
            cols.append((p + ord("0")).astype(np.uint8))
    buf = np.ascontiguousarray(np.concatenate(cols, axis=1))
    return [b.decode("ascii") for b in buf.view(f"S{buf.shape[1]}").ravel().tolist()]


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) decimal digits of non-negative integers, zero-padded."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers) % 10


def _format_ra(ra_deg: np.ndarray) -> list[str]:
    """hh:mm:ss.ss (integer arithmetic, so 59.999 s never prints as 60.00)."""
    centis = np.rint(np.mod(ra_deg, 360.0) / 15.0 * 360000.0).astype(np.int64) % (24 * 360000)
    h, rest = np.divmod(centis, 360000)
    m, rest = np.divmod(rest, 6000)
    sec, cs = np.divmod(rest, 100)
    return _ascii_columns([_digits(h, 2), b":", _digits(m, 2), b":", _digits(sec, 2), b".", _digits(cs, 2)])


def _format_dec(dec_deg: np.ndarray) -> list[str]:
    """±dd:mm:ss.s as in the real table 2."""
    tenths = np.rint(np.abs(dec_deg) * 36000.0).astype(np.int64)
    d, rest = np.divmod(tenths, 36000)
    m, rest = np.divmod(rest, 600)
    sec, ts = np.divmod(rest, 10)
    sign = np.where(dec_deg < 0, ord("-"), ord("+")).astype(np.int64)[:, None] - ord("0")
    body = [_digits(d, 2), b":", _digits(m, 2), b":", _digits(sec, 2), b".", _digits(ts, 1)]
    return _ascii_columns([sign, *body])


def _objids(
    rng: np.random.Generator, n: int, *, sky_version: int, reruns: tuple[int, ...], runs: tuple[int, int]
) -> np.ndarray:
    """Unique SDSS object ids with the real bit layout (sky version, rerun, run, camcol, field, object)."""
    ids = np.empty(0, dtype=np.int64)
    while len(ids) < n:
        k = n - len(ids)
        fresh = (
            (np.int64(sky_version) << 59)
            | (rng.choice(np.asarray(reruns, dtype=np.int64), k) << 48)
            | (rng.integers(runs[0], runs[1], k, dtype=np.int64) << 32)
            | (rng.integers(1, 7, k, dtype=np.int64) << 29)
            | (rng.integers(11, 800, k, dtype=np.int64) << 16)
            | rng.integers(1, 1500, k, dtype=np.int64)
        )
        ids = np.concatenate([ids, fresh])
        ordered = np.sort(ids)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(repeated):  # keep the first occurrence of each id, draw again for the rest
            _, first = np.unique(ids, return_index=True)
            ids = ids[np.sort(first)]
    return ids


def _votes(pop: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Vote counts (n, 6) in the GZ1 order EL, CW, ACW, EDGE, DK, MG.

    Each category's probability follows from the true type and how visible its morphology is; a per-galaxy
    jitter stands in for the crowd, and the counts are a multinomial draw of NVOTE volunteers.
    """
    morph, v_el = pop["morph"], pop["v_el"]
    early = morph != SPIRAL
    dk = 0.01 + 0.07 * (1.0 - pop["sn"]) + np.where(early, 0.1 * (1.0 - v_el), 0.0)
    mg = np.where(pop["merger"], 0.25 + 0.5 * pop["v_obs"], 0.006)
    edge_on = np.clip((0.45 - pop["cos_i"]) / 0.3, 0.0, 1.0)
    # Spirals: invisible arms look smooth (the GZ1 bias towards ellipticals), visible ones are spirals.
    # Ellipticals: a resolved, bright smooth galaxy is unmistakable; a faint blob collects all kinds of votes.
    # Lenticulars: a smooth disk splits the vote, the more so edge-on, where it resembles an edge-on spiral.
    cs = np.select(
        [morph == SPIRAL, morph == ELLIPTICAL],
        [0.2 + 0.78 * _sigmoid((pop["v_sp"] - 0.54) / 0.08), 0.3 * (1.0 - v_el) + 0.015],
        0.15 + 0.3 * edge_on * pop["v_obs"] + 0.1 * (1.0 - v_el),
    ) * (1.0 - mg)
    el = np.clip(1.0 - cs - dk - mg, 0.0, 1.0)
    # Among the spiral votes: edge-on for (nearly) edge-on disks, otherwise clockwise or anticlockwise;
    # the true winding sense wins as the arms become visible. Volunteers favoured anticlockwise a little.
    edge_share = np.where(morph == ELLIPTICAL, np.clip((0.65 - pop["q"]) / 0.35, 0.0, 0.6), edge_on)
    edge_share = 0.05 + 0.9 * edge_share
    sense = 0.5 + 0.47 * np.sqrt(pop["v_arm"])
    cw_share = np.where(pop["chirality"] > 0, sense, 1.0 - sense) * 0.97
    q = np.stack(
        [
            el,
            cs * (1 - edge_share) * cw_share,
            cs * (1 - edge_share) * (1.0 - cw_share),
            cs * edge_share,
            dk,
            mg,
        ],
        axis=1,
    )
    q = np.maximum(q * rng.lognormal(0.0, 0.22, q.shape), 1e-6)
    q /= q.sum(axis=1, keepdims=True)
    # A multinomial draw as a chain of binomials: vectorised over galaxies, unlike Generator.multinomial.
    counts = np.zeros(q.shape, dtype=np.int64)
    left, mass = pop["nvote"].astype(np.int64), np.ones(len(q))
    for k in range(q.shape[1] - 1):
        counts[:, k] = rng.binomial(left, np.clip(q[:, k] / np.maximum(mass, 1e-12), 0.0, 1.0))
        left, mass = left - counts[:, k], mass - q[:, k]
    counts[:, -1] = left
    return counts


def _thousandths(votes: np.ndarray, nvote: np.ndarray) -> np.ndarray:
    """Vote fractions in integer thousandths that sum to exactly 1000 (the largest absorbs the rounding)."""
    t = np.rint(votes * 1000.0 / nvote[:, None]).astype(np.int64)
    t[np.arange(len(t)), np.argmax(t, axis=1)] += 1000 - t.sum(axis=1)
    return t


def sample_population(n_galaxies: int, seed: int) -> pd.DataFrame:
    """The latent truth and the table 2 columns of `n_galaxies` galaxies, sorted by RA like the real table.

    Lower-case columns are the hidden truth the renderer uses (true type, sizes in 424-px pixels, surface
    brightness in units of the sky noise, visibility of the arms ...); upper-case ones are table 2.
    """
    if n_galaxies < 1:
        raise UserError(f"data.synthetic.n_galaxies: expected at least 1, got {n_galaxies}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_CATALOGUE]))
    n = n_galaxies
    # Draws are i.i.d. per galaxy, so sorting the sky positions alone gives the RA order of the real table.
    ra, dec = _sky_positions(rng, n)
    order = np.argsort(ra, kind="stable")
    ra, dec = ra[order], dec[order]
    morph = rng.choice(np.array([SPIRAL, ELLIPTICAL, LENTICULAR]), n, p=_MORPH_SHARES)
    ell, disk = morph == ELLIPTICAL, morph != ELLIPTICAL
    spiral = morph == SPIRAL
    merger = rng.random(n) < _MERGER_SHARE
    # Distance (1 = nearest): far galaxies are smaller, fainter and relatively more blurred.
    dist = 1.0 + 3.5 * rng.beta(1.85, 1.95, n)
    r_e = np.clip(30.0 * rng.lognormal(0.0, 0.25, n) * np.where(ell, 0.9, 1.0) * dist**-0.4, 4.0, 90.0)
    sb = 70.0 * rng.lognormal(0.0, 0.4, n) * np.where(ell, 1.4, 1.0) * dist**-2.0
    psf_fwhm = 3.6 * rng.lognormal(0.0, 0.15, n) * dist**0.9
    psf_wing = rng.uniform(0.05, 0.2, n)  # share of the starlight in the broad wing of the PSF
    sky = rng.lognormal(0.0, 0.12, n)
    pa = rng.uniform(0.0, math.pi, n)
    cos_i = np.where(disk, rng.random(n), 1.0)  # disks are randomly oriented
    q0 = rng.uniform(0.1, 0.2, n)
    q_disk = np.sqrt(cos_i**2 + q0**2 * (1.0 - cos_i**2))
    q_ell = np.clip(1.0 - np.abs(rng.normal(0.0, 0.22, n)), 0.42, 1.0)  # E0 to E6
    q = np.where(ell, q_ell, q_disk)
    sersic_n = np.where(ell, rng.uniform(2.5, 4.5, n), rng.uniform(1.5, 4.0, n))
    bulge_frac = np.select([ell, spiral], [1.0, 0.7 * rng.beta(1.6, 4.0, n)], rng.uniform(0.3, 0.7, n))
    bulge_re = np.where(ell, r_e, r_e * rng.uniform(0.12, 0.3, n))
    n_arms = rng.choice(np.array([2, 3, 4]), n, p=[0.6, 0.25, 0.15])
    pitch = np.radians(rng.uniform(10.0, 32.0, n))
    arm_contrast = np.where(spiral, np.clip(rng.beta(2.4, 1.8, n), 0.05, 1.0), 0.0)
    arm_sharpness = rng.uniform(1.5, 3.0, n)
    chirality = np.where(rng.random(n) < 0.5, 1, -1)
    arm_phase = rng.uniform(0.0, 2 * math.pi, n)
    bar = np.where(disk & (rng.random(n) < 0.3) & (bulge_frac < 0.5), rng.uniform(0.3, 1.0, n), 0.0)
    bar_angle = rng.uniform(0.0, 2 * math.pi, n)
    dust = np.where(spiral, rng.uniform(0.4, 1.5, n), 0.0)
    gr_ell = rng.normal(0.8, 0.04, n)
    gr_disk = np.where(spiral, rng.normal(0.45, 0.08, n), gr_ell - 0.06)
    gr_bulge = rng.normal(0.72, 0.05, n)
    comp_sep = rng.uniform(1.1, 2.6, n)
    comp_angle = rng.uniform(0.0, 2 * math.pi, n)
    comp_flux = rng.uniform(0.3, 1.0, n)
    star_density = rng.lognormal(math.log(3.0), 0.6, n)
    neighbour_density = rng.lognormal(math.log(3.0), 0.5, n)
    nvote = np.clip(np.rint(rng.lognormal(math.log(34.0), 0.4, n)), 10, 250).astype(np.int64)

    # Visibility in [0, 1]: how well a volunteer can judge the morphology. `resolved` compares the galaxy
    # with the seeing, `sn` its surface brightness with the sky noise; arms also need contrast and a
    # face-on view, an edge-on disk needs to be resolved to look like a disk rather than a cigar-shaped blob.
    resolved = r_e / psf_fwhm
    sn = _sigmoid(np.log(sb / _SN_HALF) / 0.4)
    faceon = np.clip((cos_i - 0.12) / 0.28, 0.0, 1.0)
    arm_strength = np.clip(arm_contrast / 0.45, 0.0, 1.0) * (1.0 - 0.4 * bulge_frac)
    v_arm = np.where(spiral, arm_strength * _sigmoid((resolved - _RES_ARMS) / 0.3) * sn * faceon, 0.0)
    edge = np.where(spiral, np.clip((0.42 - cos_i) / 0.22, 0.0, 1.0), 0.0)
    v_edge = edge * _sigmoid((resolved - _RES_EDGE) / 0.3) * sn
    v_sp = np.maximum(v_arm, 0.92 * v_edge)
    v_obs = _sigmoid((resolved - _RES_OBS) / 0.3) * sn
    v_el = _sigmoid((resolved - _RES_SMOOTH) / 0.3) * sn**1.5
    latent = {"morph": morph, "merger": merger, "sn": sn, "v_arm": v_arm, "v_sp": v_sp, "v_el": v_el}
    latent.update(v_obs=v_obs, q=q, cos_i=cos_i, chirality=chirality, nvote=nvote)
    t = _thousandths(_votes(latent, rng), nvote)
    p_el, p_cs = t[:, 0], t[:, 1] + t[:, 2] + t[:, 3]
    # Debiasing (Bamford et al. 2009) removes, per bin of the *observables* (size against seeing,
    # brightness), the excess of elliptical votes that distance causes: population-level, not per galaxy.
    shift = np.minimum(np.rint(350.0 * (1.0 - v_obs)).astype(np.int64), p_el)
    el_deb, cs_deb = p_el - shift, p_cs + shift
    # The published flags come from an earlier estimate of the debiased fractions (a debiasing calibrated
    # differently, plus scatter), so they disagree with the 0.8 rule on the final ones for about an eighth of
    # the galaxies, as in the real table, mostly among the faint ones where the correction is large.
    early_shift = 0.35 * (1.0 - v_obs) * rng.uniform(0.3, 1.7, n) + rng.normal(0.0, _FLAG_NOISE, n)
    early_shift = np.minimum(early_shift, p_el / 1000.0)
    spiral_flag = (p_cs / 1000.0 + early_shift) > FLAG_THRESHOLD
    ell_flag = (p_el / 1000.0 - early_shift) > FLAG_THRESHOLD
    objid = _objids(rng, n, sky_version=1, reruns=(40, 41, 44), runs=(94, 8200))

    table2 = {
        "OBJID": objid,
        "RA": _format_ra(ra),
        "DEC": _format_dec(dec),
        "NVOTE": nvote,
        **{name: t[:, k] / 1000.0 for k, name in enumerate(("P_EL", "P_CW", "P_ACW", "P_EDGE", "P_DK", "P_MG"))},
        "P_CS": p_cs / 1000.0,
        "P_EL_DEBIASED": el_deb / 1000.0,
        "P_CS_DEBIASED": cs_deb / 1000.0,
        "SPIRAL": spiral_flag.astype(np.int64),
        "ELLIPTICAL": ell_flag.astype(np.int64),
        "UNCERTAIN": (~spiral_flag & ~ell_flag).astype(np.int64),
    }
    truth = {
        "true_type": np.where(spiral, "spiral", "elliptical"),
        "morph": morph,
        "merger": merger,
        "ra_deg": ra,
        "dec_deg": dec,
    }
    # Float32 for the hidden parameters: the renderer works in float32 and the full-size table stays small.
    hidden = {
        "dist": dist,
        "r_e": r_e,
        "sb": sb,
        "psf_fwhm": psf_fwhm,
        "psf_wing": psf_wing,
        "sky": sky,
        "pa": pa,
        "cos_i": cos_i,
        "q": q,
        "sersic_n": sersic_n,
        "bulge_frac": bulge_frac,
        "bulge_re": bulge_re,
        "n_arms": n_arms,
        "pitch": pitch,
        "arm_contrast": arm_contrast,
        "arm_sharpness": arm_sharpness,
        "chirality": chirality,
        "arm_phase": arm_phase,
        "bar": bar,
        "bar_angle": bar_angle,
        "dust": dust,
        "gr_disk": gr_disk,
        "gr_bulge": gr_bulge,
        "gr_ell": gr_ell,
        "comp_sep": comp_sep,
        "comp_angle": comp_angle,
        "comp_flux": comp_flux,
        "star_density": star_density,
        "neighbour_density": neighbour_density,
        "sn": sn,
        "v_arm": v_arm,
        "v_edge": v_edge,
        "v_sp": v_sp,
        "v_el": v_el,
        "v_obs": v_obs,
    }
    hidden = {k: np.asarray(v, dtype=np.float32) for k, v in hidden.items()}
    return pd.DataFrame({**table2, **truth, **hidden})


def mapping_rows(pop: pd.DataFrame, mapping_fraction: float, seed: int) -> pd.DataFrame:
    """The GZ2 filename mapping plus, per row, which population row it images (`galaxy_row`) and how deep
    (`depth`: Stripe 82 coadds have half the noise).

    GZ2 took the brighter part of the GZ1 sample, so coverage is weighted towards bright, large galaxies.
    A few objids appear twice, and a few Stripe 82 coadd rows carry objids that table 2 does not have.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_MAPPING]))
    n = len(pop)
    n_rows = int(round(n * mapping_fraction))
    if n_rows < 1:
        raise UserError(f"data.synthetic.mapping_fraction: {mapping_fraction} of {n} galaxies maps no row")
    n_dup = min(int(round(n_rows * _DUPLICATE_SHARE)) or (2 if n_rows >= 10 else 0), n_rows // 4)
    n_coadd = int(round(n_rows * _COADD_SHARE))
    n_unique = min(n_rows - n_dup - n_coadd, n)
    n_dup = n_rows - n_unique - n_coadd
    # Efraimidis-Spirakis weighted sampling without replacement: vectorised, O(n).
    weight = np.sqrt(pop["sb"].to_numpy() * pop["r_e"].to_numpy() ** 2)
    keys = np.log(rng.random(n)) / weight
    chosen = np.sort(np.argpartition(-keys, n_unique - 1)[:n_unique]) if n_unique < n else np.arange(n)
    ra, dec = pop["ra_deg"].to_numpy()[chosen], pop["dec_deg"].to_numpy()[chosen]
    stripe82 = (np.abs(dec) <= 1.26) & ((ra >= 300.0) | (ra <= 60.0))
    faint = weight[chosen] < np.quantile(weight[chosen], 0.12) if n_unique else np.zeros(0, dtype=bool)
    sample = np.where(stripe82, "stripe82", np.where(faint, "extra", "original"))
    dup_rows = rng.choice(chosen, n_dup, replace=False) if n_dup else np.empty(0, dtype=np.int64)
    coadd_rows = rng.choice(chosen, n_coadd, replace=n_coadd > len(chosen)) if n_coadd else np.empty(0, np.int64)
    coadd_ids = _objids(rng, n_coadd, sky_version=15, reruns=(2,), runs=(106, 107)) if n_coadd else []
    objid = pop["OBJID"].to_numpy()
    frame = pd.DataFrame(
        {
            "objid": np.concatenate([objid[chosen], objid[dup_rows], np.asarray(coadd_ids, dtype=np.int64)]),
            "sample": np.concatenate(
                [sample, np.full(n_dup, "extra"), rng.choice(["stripe82_coadd_1", "stripe82_coadd_2"], n_coadd)]
            ),
            "galaxy_row": np.concatenate([chosen, dup_rows, coadd_rows]).astype(np.int64),
            "depth": np.concatenate([np.ones(n_unique + n_dup), np.full(n_coadd, 0.5)]),
        }
    )
    # Asset ids run through the samples in turn, by objid within a sample, as in the real file.
    order = {s: i for i, s in enumerate(SAMPLES)}
    frame["_order"] = frame["sample"].map(order)
    frame = frame.sort_values(["_order", "objid"], kind="stable", ignore_index=True).drop(columns="_order")
    frame.insert(2, "asset_id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def generate_catalogues(n_galaxies: int, mapping_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table 2, mapping) in the official columns, without images; vectorised for the full 667,944 rows."""
    pop = sample_population(n_galaxies, seed)
    mapping = mapping_rows(pop, mapping_fraction, seed)
    return pop.loc[:, list(TABLE2_COLUMNS)].copy(), mapping.loc[:, list(MAPPING_COLUMNS)].copy()
