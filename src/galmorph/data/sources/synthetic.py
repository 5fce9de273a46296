"""Synthetic Galaxy Zoo: GZ1 table 2, the GZ2 filename mapping and SDSS-like JPEG cut-outs, written in the
official file formats so every later stage runs (and is tested) exactly as on the real 3 GB download.

Why it is built this way:
- One latent population (true type, distance, size, surface brightness, inclination, arms, seeing ...) drives
  both the votes and the pixels. Votes derive from the truth *through visibility*: a distant, small, faint or
  edge-on spiral looks smooth to volunteers (the real GZ1 bias), so UNCERTAIN galaxies look genuinely
  ambiguous and a confident spiral shows its arms. Classification is a real task, not a lookup.
- The catalogue is vectorised over all rows (the join benchmark uses the full 667,944-row size); images are
  rendered one per mapping row from a seed derived from (master seed, asset_id), so the bytes do not depend
  on the number of processes or the order they run in.
- Images are written before the CSVs, each through a temporary file and a rename: a killed run leaves no
  half-written file, and a folder that has the CSVs has all their images.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft
import scipy.ndimage
from PIL import Image
from tqdm import tqdm

from galmorph.config import Params, SyntheticConfig, replace
from galmorph.data.catalog import MAPPING_NAME, TABLE2_NAME
from galmorph.errors import UserError
from galmorph.io import atomic_path, write_csv

TABLE2_COLUMNS: tuple[str, ...] = (
    "OBJID",
    "RA",
    "DEC",
    "NVOTE",
    "P_EL",
    "P_CW",
    "P_ACW",
    "P_EDGE",
    "P_DK",
    "P_MG",
    "P_CS",
    "P_EL_DEBIASED",
    "P_CS_DEBIASED",
    "SPIRAL",
    "ELLIPTICAL",
    "UNCERTAIN",
)
MAPPING_COLUMNS: tuple[str, ...] = ("objid", "sample", "asset_id")
IMAGES_SUBDIR = Path("images_gz2") / "images"
SAMPLES: tuple[str, ...] = ("original", "extra", "stripe82", "stripe82_coadd_1", "stripe82_coadd_2")

REFERENCE_SIZE = 424
"""Every length in the population is in pixels of a 424x424 cut-out; other image sizes scale them."""

# Independent random streams, so e.g. changing mapping_fraction does not change the votes.
_STREAM_CATALOGUE, _STREAM_MAPPING, _STREAM_MISSING, _STREAM_RENDER = 11, 12, 13, 14

_SPIRAL, _ELLIPTICAL, _LENTICULAR = "spiral", "elliptical", "lenticular"
_MORPH_SHARES = (0.65, 0.19, 0.16)  # lenticulars: smooth disks, early type but a split vote
_MERGER_SHARE = 0.03  # galaxies with an interacting companion (P_MG votes)
_DUPLICATE_SHARE = 0.004  # mapping rows repeating an objid (the real mapping has some)
_COADD_SHARE = 0.003  # mapping rows of Stripe 82 coadds: objids that are not in table 2
_FLAG_NOISE = 0.135  # scatter of the earlier estimate the flags come from
_THRESHOLD = 0.8  # the GZ1 flag threshold on the debiased fractions
# Where morphology becomes half visible: r_e in PSF FWHMs for arms, an edge-on disk, the debiasing's
# observables and a confidently smooth profile; and the surface brightness at r_e in sky-noise units.
_RES_ARMS, _RES_EDGE, _RES_OBS, _RES_SMOOTH, _SN_HALF = 1.6, 1.4, 1.5, 2.35, 5.0

# Composite colours (SDSS gri -> RGB), sky noise per band and the asinh stretch (Lupton et al. 2004).
_RGB_SCALE = np.array([1.0, 1.3, 2.0], dtype=np.float32)  # i -> R, r -> G, g -> B
_SKY_SIGMA = np.array([0.5, 0.85, 1.2], dtype=np.float32)  # g, r, i sky noise, in the units of `sb`
_SKY_PEDESTAL = np.array([0.43, 1.06, 1.5], dtype=np.float32)  # residual sky after subtraction (g, r, i)
_STRETCH_ALPHA = 0.0125
_STRETCH_Q = 9.0
_POISSON_GAIN = 0.04  # photon-noise variance per unit flux, relative to the sky variance
_JPEG_QUALITY = 88


# ------------------------------------------------------------------------------------------- latent population


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
    early = morph != _SPIRAL
    dk = 0.01 + 0.07 * (1.0 - pop["sn"]) + np.where(early, 0.1 * (1.0 - v_el), 0.0)
    mg = np.where(pop["merger"], 0.25 + 0.5 * pop["v_obs"], 0.006)
    edge_on = np.clip((0.45 - pop["cos_i"]) / 0.3, 0.0, 1.0)
    # Spirals: invisible arms look smooth (the GZ1 bias towards ellipticals), visible ones are spirals.
    # Ellipticals: a resolved, bright smooth galaxy is unmistakable; a faint blob collects all kinds of votes.
    # Lenticulars: a smooth disk splits the vote, the more so edge-on, where it resembles an edge-on spiral.
    cs = np.select(
        [morph == _SPIRAL, morph == _ELLIPTICAL],
        [0.2 + 0.78 * _sigmoid((pop["v_sp"] - 0.54) / 0.08), 0.3 * (1.0 - v_el) + 0.015],
        0.15 + 0.3 * edge_on * pop["v_obs"] + 0.1 * (1.0 - v_el),
    ) * (1.0 - mg)
    el = np.clip(1.0 - cs - dk - mg, 0.0, 1.0)
    # Among the spiral votes: edge-on for (nearly) edge-on disks, otherwise clockwise or anticlockwise;
    # the true winding sense wins as the arms become visible. Volunteers favoured anticlockwise a little.
    edge_share = np.where(morph == _ELLIPTICAL, np.clip((0.65 - pop["q"]) / 0.35, 0.0, 0.6), edge_on)
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
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_CATALOGUE]))
    n = n_galaxies
    # Draws are i.i.d. per galaxy, so sorting the sky positions alone gives the RA order of the real table.
    ra, dec = _sky_positions(rng, n)
    order = np.argsort(ra, kind="stable")
    ra, dec = ra[order], dec[order]
    morph = rng.choice(np.array([_SPIRAL, _ELLIPTICAL, _LENTICULAR]), n, p=_MORPH_SHARES)
    ell, disk = morph == _ELLIPTICAL, morph != _ELLIPTICAL
    spiral = morph == _SPIRAL
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
    spiral_flag = (p_cs / 1000.0 + early_shift) > _THRESHOLD
    ell_flag = (p_el / 1000.0 - early_shift) > _THRESHOLD
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


def _mapping_rows(pop: pd.DataFrame, mapping_fraction: float, seed: int) -> pd.DataFrame:
    """The GZ2 filename mapping plus, per row, which population row it images (`galaxy_row`) and how deep
    (`depth`: Stripe 82 coadds have half the noise).

    GZ2 took the brighter part of the GZ1 sample, so coverage is weighted towards bright, large galaxies.
    A few objids appear twice, and a few Stripe 82 coadd rows carry objids that table 2 does not have.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_MAPPING]))
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
    mapping = _mapping_rows(pop, mapping_fraction, seed)
    return pop.loc[:, list(TABLE2_COLUMNS)].copy(), mapping.loc[:, list(MAPPING_COLUMNS)].copy()


# ------------------------------------------------------------------------------------------------- rendering


def _sersic_b(n: float) -> float:
    """b_n such that r_e encloses half the light (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _sersic_flux(n: float, r_e: float, q: float) -> float:
    """Total flux of a Sérsic profile with unit surface brightness at r_e."""
    b = _sersic_b(n)
    return 2.0 * math.pi * n * math.exp(b + math.lgamma(2.0 * n) - 2.0 * n * math.log(b)) * r_e * r_e * q


def _stamp(size: int, cx: float, cy: float, half: float):
    """Slices of the square around (cx, cy) inside the image, and pixel-centre offsets (x right, y up)."""
    x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 2)
    y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - np.float32(cx))[None, :]
    dy = (np.float32(cy) - (np.arange(y0, y1, dtype=np.float32) + 0.5))[:, None]
    return (slice(y0, y1), slice(x0, x1)), dx, dy


def _rotate(dx: np.ndarray, dy: np.ndarray, pa: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(pa), math.sin(pa)
    return dx * c + dy * s, dy * c - dx * s


def _sersic(u: np.ndarray, v: np.ndarray, q: float, r_e: float, n: float, soft: float) -> np.ndarray:
    """Sérsic surface brightness, 1 at r_e; `soft` (pixels) tames the cusp a pixel grid cannot sample."""
    r2 = u * u + (v / q) ** 2 + soft * soft
    return np.exp(-_sersic_b(n) * ((r2 / (r_e * r_e)) ** (0.5 / n) - 1.0))


def _splat(plane: np.ndarray, cols: np.ndarray, rows: np.ndarray, flux: np.ndarray) -> None:
    """Add point fluxes at sub-pixel positions with bilinear weights (the PSF blurs them afterwards)."""
    h, w = plane.shape
    x, y = cols - 0.5, rows - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    for ox, oy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        plane += (
            np.bincount(yi[ok] * w + xi[ok], weights=(flux * wgt)[ok], minlength=h * w).reshape(h, w).astype(np.float32)
        )


def _sed(g_r: float, r_i: float) -> np.ndarray:
    """Flux in (g, r, i) relative to r, from the g-r and r-i colours in magnitudes."""
    return np.array([10 ** (-0.4 * g_r), 1.0, 10 ** (0.4 * r_i)], dtype=np.float32)


_WING_WIDTH = 2.5  # sigma of the PSF's wing over that of its core (a double Gaussian, as SDSS photo fits)


def _gaussian_otf(freq_y: np.ndarray, freq_x: np.ndarray, sigma: float) -> np.ndarray:
    """Fourier transform of a unit 2-D Gaussian: separable, so two 1-D exponentials and an outer product."""
    a = np.float32(-2.0 * math.pi**2 * sigma * sigma)
    return np.exp(a * freq_y * freq_y)[:, None] * np.exp(a * freq_x * freq_x)[None, :]


def _psf_convolve(bands: np.ndarray, fwhm: float, wing: float) -> np.ndarray:
    """Convolve (3, H, W) with a double-Gaussian PSF through a zero-padded FFT (no wrap-around); the PSF's
    transform is analytic, so only the image is transformed."""
    size = bands.shape[-1]
    sigma = fwhm / 2.3548
    pad = scipy.fft.next_fast_len(size + int(math.ceil(3.0 * _WING_WIDTH * sigma)) + 1, real=True)
    fy = scipy.fft.fftfreq(pad).astype(np.float32)
    fx = scipy.fft.rfftfreq(pad).astype(np.float32)
    otf = np.float32(1.0 - wing) * _gaussian_otf(fy, fx, sigma) + np.float32(wing) * _gaussian_otf(
        fy, fx, _WING_WIDTH * sigma
    )
    out = scipy.fft.irfft2(scipy.fft.rfft2(bands, s=(pad, pad)) * otf, s=(pad, pad))
    return out[:, :size, :size].astype(np.float32)


def _extent(sigma_e: float, r_e: float, n: float, floor: float = 0.02) -> float:
    """Radius where a Sérsic profile fades below `floor` (in sky-noise units): the stamp to draw it on."""
    if sigma_e <= floor:
        return 2.0 * r_e + 2.0
    return r_e * (1.0 + math.log(sigma_e / floor) / _sersic_b(n)) ** n + 2.0


def _bulge_q(q_disk: float) -> float:
    """Bulges are rounder than their disks: intrinsic axis ratio 0.65 seen at the disk's inclination."""
    return math.sqrt(q_disk * q_disk + 0.65**2 * (1.0 - q_disk * q_disk))


def _bulge_sigma(g: Mapping[str, Any], s: float) -> float:
    """Surface brightness at the bulge's r_e that gives it the flux its bulge-to-total ratio asks for."""
    r_e = g["r_e"] * s
    h = r_e / 1.678
    sigma0 = g["sb"] * math.exp(1.678) * (1.0 - g["bulge_frac"])
    disk_flux = 2.0 * math.pi * sigma0 * h * h * g["q"]
    bf = g["bulge_frac"]
    re_b = max(g["bulge_re"] * s, 0.5)
    return disk_flux * bf / max(1.0 - bf, 1e-3) / _sersic_flux(g["sersic_n"], re_b, _bulge_q(g["q"]))


def _main_galaxy(g: Mapping[str, float], size: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """The central galaxy in (g, r, i) surface brightness, before the PSF."""
    bands = np.zeros((3, size, size), dtype=np.float32)
    c = size / 2.0 + rng.uniform(-0.6, 0.6, 2) * max(s, 0.2)
    r_e, soft = g["r_e"] * s, max(0.35 * s, 0.3)
    if g["morph"] == _ELLIPTICAL:
        extent = _extent(g["sb"], r_e, g["sersic_n"])
    else:
        extent = max(_extent(g["sb"], r_e, 1.0), _extent(_bulge_sigma(g, s), g["bulge_re"] * s, g["sersic_n"]))
    st = _stamp(size, c[0], c[1], extent)
    assert st is not None
    sl, dx, dy = st
    u, v = _rotate(dx, dy, g["pa"])
    if g["morph"] == _ELLIPTICAL:
        light = np.float32(g["sb"]) * _sersic(u, v, g["q"], r_e, g["sersic_n"], soft)
        bands[(slice(None), *sl)] += light[None] * _sed(g["gr_ell"], 0.42)[:, None, None]
    else:
        bands[(slice(None), *sl)] += _disk_galaxy(g, dx, dy, r_e, soft, s, rng)
    if g["merger"]:
        _add_companion(bands, g, c, r_e, s, rng)
    return bands


def _disk_galaxy(g: Mapping[str, Any], dx, dy, r_e: float, soft: float, s: float, rng: np.random.Generator):
    """Exponential disk with logarithmic arms, star-forming knots, optional bar, a Sérsic bulge and, seen
    edge-on, a reddening dust lane. Returns (3, h, w) for the stamp of pixel offsets dx, dy."""
    u, v = _rotate(dx, dy, g["pa"])
    h = r_e / 1.678
    q = g["q"]
    ud, vd = u, v / q  # coordinates in the plane of the disk
    r = np.sqrt(ud * ud + vd * vd + soft * soft)
    sigma0 = g["sb"] * math.exp(1.678) * (1.0 - g["bulge_frac"])
    disk = np.float32(sigma0) * np.exp(-r / np.float32(h))
    n_arms, chir, tan_p = int(g["n_arms"]), g["chirality"], math.tan(g["pitch"])
    phase = g["arm_phase"]
    bar_len = 1.2 * h
    if g["bar"] > 0 and n_arms == 2:  # arms start at the ends of the bar
        phase = n_arms * (g["bar_angle"] - chir * math.log(bar_len / h) / tan_p)
    # Real arms are neither identical nor perfectly logarithmic: a wobble in the winding and a brightness
    # that waxes and wanes along each arm.
    wobble, ph = rng.uniform(0.0, 0.6, 2), rng.uniform(0.0, 2 * math.pi, 3)

    def bend(th, lr):
        return wobble[0] * np.sin(th + ph[0]) + wobble[1] * np.sin(2.5 * lr + ph[1])

    r_in = max(2.0 * g["bulge_re"] * s, 0.6 * h, bar_len if g["bar"] > 0 else 0.0)
    if g["arm_contrast"] > 0:
        theta = np.arctan2(vd, ud)
        log_r = np.log(r / np.float32(h))
        psi = n_arms * (theta - np.float32(chir / tan_p) * log_r) - np.float32(phase) + bend(theta, log_r)
        k = g["arm_sharpness"]
        wave = ((1.0 + np.cos(psi)) * 0.5) ** np.float32(k) * (1.0 + 0.4 * np.sin(theta + 1.7 * log_r + ph[2]))
        wave_mean = math.gamma(k + 0.5) / (math.sqrt(math.pi) * math.gamma(k + 1.0))
        arm_amp = np.float32(g["arm_contrast"]) * (1.0 - np.exp(-((r / np.float32(r_in)) ** 2)))
        # Star formation is clumpy: a smooth random texture breaks the arms (and, less, the disk) into
        # patches, as strongly as the arms stand out.
        texture = _smooth_noise(rng, r.shape, max(0.2 * h, 1.0)) * np.float32(g["arm_contrast"])
        arms = disk * arm_amp * (wave / np.float32(wave_mean)) * np.clip(1.0 + 0.5 * texture, 0.1, None)
        base = disk * (1.0 - arm_amp) * np.clip(1.0 + 0.2 * texture, 0.5, None)
    else:  # a lenticular: a smooth disk
        arms, base = np.zeros_like(disk), disk
    q_b = _bulge_q(q)
    bulge = np.float32(_bulge_sigma(g, s)) * _sersic(u, v, q_b, max(g["bulge_re"] * s, 0.5), g["sersic_n"], soft)
    if g["bar"] > 0:
        ca, sa = math.cos(g["bar_angle"]), math.sin(g["bar_angle"])
        ub, vb = ud * ca + vd * sa, vd * ca - ud * sa
        bar = np.exp(-((ub / np.float32(bar_len)) ** 4) - (vb / np.float32(0.28 * bar_len)) ** 2)
        bulge = bulge + np.float32(0.5 * g["bar"] * sigma0) * bar
    # Star-forming knots along the arm crests: unresolved HII regions, blue.
    knots = np.zeros_like(disk)
    n_knots = int(rng.poisson(8 + 45 * g["arm_contrast"])) if g["arm_contrast"] > 0 else 0
    if n_knots:
        rk = h * rng.gamma(2.0, 1.0, n_knots) + r_in * 0.5
        arm = rng.integers(0, n_arms, n_knots)
        lk = np.log(rk / h)
        tk = chir * lk / tan_p + (phase + 2 * math.pi * arm) / n_arms
        for _ in range(3):  # follow the bent crest: solve psi(theta) = 2 pi j by fixed-point iteration
            tk = chir * lk / tan_p + (phase + 2 * math.pi * arm - bend(tk, lk)) / n_arms
        tk = tk + rng.normal(0, 0.06, n_knots)
        xd, yd = rk * np.cos(tk), rk * np.sin(tk) * q
        cpa, spa = math.cos(g["pa"]), math.sin(g["pa"])
        kx, ky = xd * cpa - yd * spa, xd * spa + yd * cpa
        # each knot: the local disk light over ~12 px^2 of a 424-px cut-out (flux scales with the pixel area)
        flux = sigma0 * np.exp(-rk / h) * g["arm_contrast"] * rng.lognormal(0.0, 0.6, n_knots) * 12.0 * s * s
        x0, y0 = float(-dx[0, 0]), float(dy[0, 0])  # stamp origin relative to the centre
        _splat(knots, x0 + kx + 0.5, y0 - ky + 0.5, flux)
    sed_disk = _sed(g["gr_disk"], 0.25)
    sed_arms = _sed(g["gr_disk"] - 0.3, 0.1)
    sed_bulge = _sed(g["gr_bulge"], 0.4)
    out = (
        base[None] * sed_disk[:, None, None]
        + (arms + knots)[None] * sed_arms[:, None, None]
        + bulge[None] * sed_bulge[:, None, None]
    )
    if g["cos_i"] < 0.35 and g["dust"] > 0:
        # dust lane in the mid-plane, offset towards the near side: the light through it is dimmer and redder
        width = max(0.35 * q * h, 0.6 * s)
        lane = np.exp(-0.5 * ((v - np.float32(0.4 * width)) / np.float32(width)) ** 2 - np.abs(u) / np.float32(2.5 * h))
        tau = np.float32(g["dust"] * (0.35 - g["cos_i"]) / 0.35 * 2.0) * lane
        out *= np.exp(-tau[None] * np.array([1.35, 1.0, 0.75], dtype=np.float32)[:, None, None])
    return out


def _add_companion(bands: np.ndarray, g: Mapping[str, float], c: np.ndarray, r_e: float, s: float, rng) -> None:
    """An interacting neighbour with tidal tails (the GZ1 'merger' vote)."""
    size = bands.shape[-1]
    sep = g["comp_sep"] * r_e
    cx, cy = c[0] + sep * math.cos(g["comp_angle"]), c[1] - sep * math.sin(g["comp_angle"])
    re_c = r_e * 0.6 * math.sqrt(g["comp_flux"])
    st = _stamp(size, cx, cy, 8 * re_c)
    if st is not None:
        sl, dx, dy = st
        u, v = _rotate(dx, dy, rng.uniform(0, math.pi))
        light = np.float32(g["sb"] * 1.2) * _sersic(u, v, rng.uniform(0.5, 1.0), re_c, 2.0, max(0.35 * s, 0.3))
        bands[(slice(None), *sl)] += light[None] * _sed(0.65, 0.35)[:, None, None]
    # Tails: diffuse streams of light curling away from both galaxies.
    tail = np.zeros((size, size), dtype=np.float32)
    for ox, oy, sign in ((c[0], c[1], 1.0), (cx, cy, -1.0)):
        t = rng.random(400)
        ang = g["comp_angle"] + math.pi * (sign < 0) + sign * (0.6 + 1.8 * t) * g["chirality"] + math.pi * 0.5
        rad = r_e * (1.0 + 3.0 * t)
        scatter = rng.normal(0.0, 0.25 * r_e, (2, 400)) * (0.3 + t)
        cols = ox + rad * np.cos(ang) + scatter[0]
        rows = oy - rad * np.sin(ang) + scatter[1]
        _splat(tail, cols, rows, g["sb"] * 0.8 * (1.0 - 0.7 * t) * s * s)  # flux scales with pixel area
    bands += tail[None] * _sed(0.5, 0.25)[:, None, None]


def _add_neighbours(bands: np.ndarray, g: Mapping[str, float], s: float, rng: np.random.Generator) -> None:
    """Faint background and neighbour galaxies scattered over the field."""
    size = bands.shape[-1]
    for _ in range(int(rng.poisson(g["neighbour_density"]))):
        cx, cy = rng.uniform(0.03, 0.97, 2) * size
        if math.hypot(cx - size / 2, cy - size / 2) < 0.12 * size:
            cx = (cx + size / 2) % size
        r_e = float(np.clip(rng.lognormal(math.log(3.0), 0.5), 0.8, 15.0)) * s
        n = 4.0 if rng.random() < 0.4 else 1.0
        st = _stamp(size, cx, cy, r_e * (8.0 if n > 2 else 6.0) + 1.0)
        if st is None:
            continue
        sl, dx, dy = st
        u, v = _rotate(dx, dy, rng.uniform(0.0, math.pi))
        light = np.float32(rng.lognormal(math.log(0.8), 0.8)) * _sersic(
            u, v, rng.uniform(0.3, 1.0), max(r_e, 0.4), n, max(0.35 * s, 0.3)
        )
        sed = _sed(rng.uniform(0.4, 0.9) if n > 2 else rng.uniform(0.3, 0.6), 0.3)
        bands[(slice(None), *sl)] += light[None] * sed[:, None, None]


def _add_stars(bands: np.ndarray, g: Mapping[str, float], fwhm: float, s: float, rng: np.random.Generator) -> None:
    """Foreground stars: the PSF itself, with diffraction spikes on the bright ones."""
    size = bands.shape[-1]
    sigma, wing = fwhm / 2.3548, g["psf_wing"]
    wide = _WING_WIDTH * sigma
    for _ in range(int(rng.poisson(g["star_density"]))):
        cx, cy = rng.uniform(0.0, 1.0, 2) * size
        flux = 10 ** rng.uniform(1.3, 4.6) * s * s
        g_r = rng.uniform(0.1, 1.5)
        wing_peak = flux * wing / (2 * math.pi * wide * wide)
        spike_amp = flux * 0.004 / fwhm if flux / (s * s) > 8000 else 0.0
        # draw out to where the wing and the spikes fade under ~1/50 of the sky noise: no visible stamp edge
        half = wide * math.sqrt(2.0 * math.log(max(wing_peak / 0.02, 1.0))) + 2.0
        if spike_amp:
            half = max(half, fwhm * ((spike_amp / 0.02) ** (1 / 1.5) - 1.0))
        st = _stamp(size, cx, cy, min(half, 1.5 * size))
        if st is None:
            continue
        sl, dx, dy = st
        r2 = dx * dx + dy * dy
        core = np.float32(flux * (1.0 - wing) / (2 * math.pi * sigma * sigma)) * np.exp(r2 / np.float32(-2 * sigma**2))
        prof = core + np.float32(wing_peak) * np.exp(r2 / np.float32(-2 * wide**2))
        if spike_amp:
            width = max(0.5 * sigma, 0.35)
            spikes = (
                np.exp(-0.5 * (dx / width) ** 2) * (1 + np.abs(dy) / fwhm) ** -1.5
                + np.exp(-0.5 * (dy / width) ** 2) * (1 + np.abs(dx) / fwhm) ** -1.5
            )
            prof = prof + np.float32(spike_amp) * spikes
        bands[(slice(None), *sl)] += prof[None] * _sed(g_r, 0.4 * g_r)[:, None, None]


def _stretch(bands: np.ndarray) -> np.ndarray:
    """SDSS-style asinh colour composite (Lupton et al. 2004): colours are kept in the saturated cores."""
    rgb = bands[::-1] * _RGB_SCALE[:, None, None]  # (g, r, i) -> (i, r, g) = (R, G, B)
    # asinh(Q a I) / (Q I) is even in I and tends to `a` at 0: |I| plus a hair avoids dividing by zero
    level = np.abs(rgb[0] + rgb[1] + rgb[2]) * np.float32(1.0 / 3.0) + np.float32(1e-6)
    rgb *= (np.arcsinh(level * np.float32(_STRETCH_Q * _STRETCH_ALPHA)) / (level * np.float32(_STRETCH_Q)))[None]
    np.clip(rgb, 0.0, None, out=rgb)
    rgb /= np.maximum(rgb.max(axis=0), 1.0)[None]
    rgb *= 255.0
    rgb += 0.5  # rounding, as the values are non-negative
    return np.moveaxis(rgb, 0, -1).astype(np.uint8)


_RENDER_KEYS: frozenset[str] = frozenset(
    {
        "morph",
        "merger",
        "r_e",
        "sb",
        "psf_fwhm",
        "psf_wing",
        "sky",
        "pa",
        "cos_i",
        "q",
        "sersic_n",
        "bulge_frac",
        "bulge_re",
        "n_arms",
        "pitch",
        "arm_contrast",
        "arm_sharpness",
        "chirality",
        "arm_phase",
        "bar",
        "bar_angle",
        "dust",
        "gr_disk",
        "gr_bulge",
        "gr_ell",
        "comp_sep",
        "comp_angle",
        "comp_flux",
        "star_density",
        "neighbour_density",
    }
)
"""The population columns the renderer reads (the rest is catalogue and diagnostics)."""


def _gaussian_power(sigma: float) -> float:
    """Sum of squared weights of scipy's 2-D Gaussian filter: the variance it leaves in unit white noise."""
    radius = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    return float((k**2).sum() ** 2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length `sigma` pixels (over the last two axes)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = scipy.ndimage.gaussian_filter(white, (0,) * (len(shape) - 2) + (sigma, sigma), mode="wrap")
    return field * np.float32(1.0 / math.sqrt(_gaussian_power(sigma)))


def _sky_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance noise per band with the blotchy grain of resampled survey cut-outs (correlated over about
    a pixel); plain white noise once the cut-out is too small to show the grain."""
    if sigma < 0.5:
        return rng.standard_normal(shape, dtype=np.float32)
    return _smooth_noise(rng, shape, sigma)


def render_galaxy(galaxy: Mapping[str, Any], size: int, rng: np.random.Generator, *, depth: float = 1.0) -> np.ndarray:
    """One SDSS-like gri composite cut-out (size x size x 3, uint8) of a population row.

    The central galaxy (with its companion when merging) and field galaxies are blurred by the PSF (a double
    Gaussian), stars are added as the PSF itself, then sky and photon noise (`depth` < 1 for deeper imaging)
    and the asinh stretch. Lengths scale with size / 424, so a 64-px cut-out is the 424-px one seen smaller
    (with the lower per-pixel noise of a downsampled image).
    """
    g = {k: (v if isinstance(v, str) else float(v)) for k, v in galaxy.items() if k in _RENDER_KEYS}
    s = size / REFERENCE_SIZE
    fwhm = max(g["psf_fwhm"] * s, 1.0)
    bands = _main_galaxy(g, size, s, rng)
    _add_neighbours(bands, g, s, rng)
    bands = _psf_convolve(bands, fwhm, g["psf_wing"])
    _add_stars(bands, g, fwhm, s, rng)
    bands += _SKY_PEDESTAL[:, None, None]
    noise_scale = np.float32(min(s, 1.0) * depth * g["sky"])
    variance = _SKY_SIGMA[:, None, None] ** 2 + np.float32(_POISSON_GAIN) * np.maximum(bands, 0.0)
    bands += noise_scale * np.sqrt(variance) * _sky_noise(rng, bands.shape, 0.6 * s)
    return _stretch(bands)


def render_seed(seed: int, asset_id: int) -> np.random.Generator:
    """The generator of one cut-out: a function of the master seed and the asset id only."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_RENDER, int(asset_id)]))


def _render_task(task: tuple[dict[str, Any], int, float, int, int, str]) -> int:
    galaxy, asset_id, depth, size, seed, path = task
    pixels = render_galaxy(galaxy, size, render_seed(seed, asset_id), depth=depth)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="RGB").save(tmp, format="JPEG", quality=_JPEG_QUALITY)
    return asset_id


def image_tasks(
    pop: pd.DataFrame, mapping: pd.DataFrame, image_dir: str | os.PathLike, *, size: int, seed: int
) -> list[tuple]:
    """One picklable render task per mapping row (`galaxy_row`, `asset_id`, `depth` columns) for render_many."""
    records = pop[[k for k in pop.columns if k in _RENDER_KEYS]].to_dict("records")
    return [
        (records[row], int(asset), float(depth), size, seed, str(Path(image_dir) / f"{asset}.jpg"))
        for row, asset, depth in zip(mapping["galaxy_row"], mapping["asset_id"], mapping["depth"], strict=True)
    ]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def render_many(tasks: list[tuple], workers: int | None = None, *, progress: bool = True) -> int:
    """Render and write the tasks' JPEGs in a pool of `workers` processes; returns how many were written.

    workers=None: every CPU this process may use, unless the job is so small (under ~16 full-size
    cut-outs' work) that starting the processes would cost more than it saves.
    """
    if workers is None:
        work = sum((task[3] / REFERENCE_SIZE) ** 2 for task in tasks)
        workers = default_workers() if work >= 16 else 1
    workers = max(1, workers)
    bar = tqdm(total=len(tasks), desc="synthetic images", unit="img", disable=not progress, leave=False)
    done = 0
    with bar:
        if workers == 1 or len(tasks) < 2:
            for task in tasks:
                _render_task(task)
                done += 1
                bar.update()
        else:
            # spawn, not fork: the caller may hold threads (torch, pyarrow) that fork would copy half-locked.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                chunk = max(1, min(16, len(tasks) // (workers * 8)))
                for _ in pool.imap_unordered(_render_task, tasks, chunksize=chunk):
                    done += 1
                    bar.update()
    return done


# ---------------------------------------------------------------------------------------------- the data set


def _check_config(cfg: SyntheticConfig) -> None:
    where = "data.synthetic"
    if cfg.n_galaxies < 1:
        raise UserError(f"{where}.n_galaxies: expected at least 1, got {cfg.n_galaxies}")
    if not 0.0 < cfg.mapping_fraction <= 1.0:
        raise UserError(f"{where}.mapping_fraction: expected a share in (0, 1], got {cfg.mapping_fraction}")
    if not 0.0 <= cfg.missing_image_fraction < 1.0:
        raise UserError(f"{where}.missing_image_fraction: expected a share in [0, 1), got {cfg.missing_image_fraction}")
    if not 16 <= cfg.image_size <= 4096:
        raise UserError(f"{where}.image_size: expected 16 to 4096 pixels, got {cfg.image_size}")


def generate(
    cfg: SyntheticConfig,
    out_dir: str | os.PathLike,
    *,
    images: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write GalaxyZoo1_DR_table2.csv, gz2_filename_mapping.csv and images_gz2/images/<asset_id>.jpg.

    A share `missing_image_fraction` of the mapping rows gets no JPEG (as on the real Zenodo record, where a
    few hundred are absent), and JPEGs left in the folder by an earlier run that this one did not write are
    removed, so the folder always matches the mapping. Returns the counts.
    """
    _check_config(cfg)
    out = Path(out_dir)
    pop = sample_population(cfg.n_galaxies, cfg.seed)
    mapping = _mapping_rows(pop, cfg.mapping_fraction, cfg.seed)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_MISSING]))
    n_missing = int(round(len(mapping) * cfg.missing_image_fraction))
    missing = np.zeros(len(mapping), dtype=bool)
    missing[rng.choice(len(mapping), n_missing, replace=False)] = True

    written = removed = 0
    if images:
        # The CSVs go last; drop old ones first so an interrupted run never pairs them with new images.
        for name in (TABLE2_NAME, MAPPING_NAME):
            (out / name).unlink(missing_ok=True)
        image_dir = out / IMAGES_SUBDIR
        image_dir.mkdir(parents=True, exist_ok=True)
        rendered = mapping.loc[~missing]
        tasks = image_tasks(pop, rendered, image_dir, size=cfg.image_size, seed=cfg.seed)
        wanted = {f"{asset}.jpg" for asset in rendered["asset_id"]}
        for old in image_dir.iterdir():
            # JPEGs of an earlier run with other settings, and temporary files of a killed one
            if old.is_file() and (old.suffix == ".tmp" or (old.suffix == ".jpg" and old.name not in wanted)):
                old.unlink()
                removed += 1
        written = render_many(tasks, workers, progress=progress)
    write_csv(out / MAPPING_NAME, mapping.loc[:, list(MAPPING_COLUMNS)])
    write_csv(out / TABLE2_NAME, pop.loc[:, list(TABLE2_COLUMNS)])

    flags = ("SPIRAL", "ELLIPTICAL", "UNCERTAIN")
    imaged = pop.iloc[mapping.loc[~missing, "galaxy_row"].to_numpy()] if images else pop.iloc[:0]
    return {
        "rows": len(pop),
        "mapping_rows": len(mapping),
        "mapping_duplicate_rows": int(mapping["objid"].duplicated().sum()),
        "mapping_rows_not_in_table2": int((~mapping["objid"].isin(pop["OBJID"])).sum()),
        "images_written": written,
        "images_missing": n_missing if images else 0,
        "stale_files_removed": removed,
        "classes": {f.lower(): int(pop[f].sum()) for f in flags},
        "images_by_class": {f.lower(): int(imaged[f].sum()) for f in flags},
    }


# --------------------------------------------------------------------------------------------- example grid


def example_grid(cfg: SyntheticConfig, path: str | os.PathLike, *, rows: int = 4, cols: int = 4) -> Path:
    """Save a captioned grid of the data set's own cut-outs (spirals, ellipticals, uncertain) as a PNG.

    The tiles are rendered exactly as `generate` writes them (same asset ids and seeds), captioned with the
    flag, the debiased vote fractions and the hidden truth, so people can see what the votes meant.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_config(cfg)
    pop = sample_population(cfg.n_galaxies, cfg.seed)
    mapping = _mapping_rows(pop, cfg.mapping_fraction, cfg.seed)
    mapping = mapping[mapping["depth"] == 1.0].drop_duplicates("objid")
    shown = pop.iloc[mapping["galaxy_row"].to_numpy()]
    flags = shown[["SPIRAL", "ELLIPTICAL", "UNCERTAIN"]].to_numpy()
    # typical examples: leave out the rows whose flag disagrees with the 0.8 rule on the final fractions
    rule = np.select([shown["P_CS_DEBIASED"] > _THRESHOLD, shown["P_EL_DEBIASED"] > _THRESHOLD], [0, 1], 2)
    flags = flags * (np.argmax(flags, axis=1) == rule)[:, None]
    n_tiles = rows * cols
    quota = {0: (n_tiles * 3 + 7) // 8, 1: (n_tiles * 5 + 15) // 16}  # spiral, elliptical; the rest uncertain
    quota[2] = n_tiles - quota[0] - quota[1]
    picks: list[int] = []
    for k, want in quota.items():
        picks.extend(np.flatnonzero(flags[:, k] == 1)[:want].tolist())
    tile_px, dpi = 168, 80  # tiles shown at about their pixel size: sharp, and a PNG small enough for a README
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.3, rows * 2.6), dpi=dpi)
    for ax, pick in zip(axes.ravel(), picks, strict=False):
        row, asset = int(mapping["galaxy_row"].iloc[pick]), int(mapping["asset_id"].iloc[pick])
        galaxy = pop.iloc[row]
        tile = Image.fromarray(render_galaxy(galaxy.to_dict(), cfg.image_size, render_seed(cfg.seed, asset)))
        ax.imshow(tile.resize((tile_px, tile_px), Image.Resampling.LANCZOS) if cfg.image_size > tile_px else tile)
        flag = ("spiral", "elliptical", "uncertain")[int(np.argmax(flags[pick]))]
        truth = galaxy["morph"] + (" + merger" if galaxy["merger"] else "")
        ax.set_title(
            f"{flag}: P_CS {galaxy['P_CS_DEBIASED']:.2f} P_EL {galaxy['P_EL_DEBIASED']:.2f}\ntruth: {truth}",
            fontsize=7,
            pad=2,
        )
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("Synthetic Galaxy Zoo cut-outs: GZ1 flag, debiased vote fractions, hidden truth", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    # A 256-colour palette (max-coverage keeps the faint blue and yellow tints) makes it small for a README.
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    target = Path(path)
    with atomic_path(target) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    return target


# ---------------------------------------------------------------------------------------------------- the CLI


def main(params: Params, args: argparse.Namespace) -> None:
    """`galmorph synth OUT [--n-galaxies N] [--no-images] [--examples PNG]`: a synthetic data set anywhere."""
    cfg = params.data.synthetic
    if getattr(args, "n_galaxies", None) is not None:
        cfg = replace(cfg, n_galaxies=args.n_galaxies)
    counts = generate(cfg, args.out, images=not getattr(args, "no_images", False))
    classes = ", ".join(f"{k} {v}" for k, v in counts["classes"].items())
    print(
        f"{args.out}: table 2 {counts['rows']} rows ({classes}); mapping {counts['mapping_rows']} rows "
        f"({counts['mapping_duplicate_rows']} repeated objids, {counts['mapping_rows_not_in_table2']} not in "
        f"table 2); images {counts['images_written']} written, {counts['images_missing']} deliberately missing"
    )
    if getattr(args, "examples", None):
        print(f"examples: {example_grid(cfg, args.examples)}")
