"""The pixels of the synthetic Galaxy Zoo: SDSS-like gri composite cut-outs of population rows (Sérsic
profiles, disks with arms, knots, bars and dust, companions, field galaxies, stars, a double-Gaussian PSF,
sky and photon noise, the asinh stretch).

Each cut-out is rendered from a generator seeded by (master seed, asset_id) only, so the bytes do not depend
on the number of processes or the order they run in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from galmorph.data.sources.synthetic.population import ELLIPTICAL, REFERENCE_SIZE, STREAM_RENDER

# Composite colours (SDSS gri -> RGB), sky noise per band and the asinh stretch (Lupton et al. 2004).
_RGB_SCALE = np.array([1.0, 1.3, 2.0], dtype=np.float32)  # i -> R, r -> G, g -> B
_SKY_SIGMA = np.array([0.5, 0.85, 1.2], dtype=np.float32)  # g, r, i sky noise, in the units of `sb`
_SKY_PEDESTAL = np.array([0.43, 1.06, 1.5], dtype=np.float32)  # residual sky after subtraction (g, r, i)
_STRETCH_ALPHA = 0.0125
_STRETCH_Q = 9.0
_POISSON_GAIN = 0.04  # photon-noise variance per unit flux, relative to the sky variance


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
    if g["morph"] == ELLIPTICAL:
        extent = _extent(g["sb"], r_e, g["sersic_n"])
    else:
        extent = max(_extent(g["sb"], r_e, 1.0), _extent(_bulge_sigma(g, s), g["bulge_re"] * s, g["sersic_n"]))
    st = _stamp(size, c[0], c[1], extent)
    assert st is not None
    sl, dx, dy = st
    u, v = _rotate(dx, dy, g["pa"])
    if g["morph"] == ELLIPTICAL:
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


RENDER_KEYS: frozenset[str] = frozenset(
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
    g = {k: (v if isinstance(v, str) else float(v)) for k, v in galaxy.items() if k in RENDER_KEYS}
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
    return np.random.default_rng(np.random.SeedSequence([seed, STREAM_RENDER, int(asset_id)]))
