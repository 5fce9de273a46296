"""Made-up outliers for train.outliers (outlier exposure), made of ordinary training galaxies, for surveys with no
labelled mergers: two-galaxy blends (`blend_pair`, the kind the README recommends), faint coreless clumpy
irregulars (`irregular`) and lopsided galaxies with a tail (`disturb`, a measured negative kept for the record;
BENCHMARKS.md "Synthetic two-galaxy blends").

`galmorph outliers` is the command line (and `benchmarks/ood_other.py --write-outliers` beside Galaxy Zoo's own
unusual rows); `write_kinds` writes every kind asked for, refusing before any image is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from galmorph.data.framing import measure
from galmorph.data.image_errors import ImageError
from galmorph.data.images import load_rgb
from galmorph.errors import UserError


def blend_pair(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two galaxies in one frame, a synthetic stand-in for a close pair or merger that any source can provide.

    `b` (uint8 RGB) is resized to 0.5-1.0 of `a`'s frame, its sky (border median) subtracted, tapered to zero at
    its edge, and centred 8-18% of the frame from `a`'s centre in a random direction, inside the fixed 192/424
    crop; the two are screen-blended, 1 - (1 - a)(1 - b), which adds light as a second source on the sky would
    without clipping to white."""
    h, w = a.shape[:2]
    s = rng.uniform(0.5, 1.0)
    small = np.asarray(Image.fromarray(b).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
    small = small.astype(np.float64) / 255
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    small = np.clip(small - np.median(border, axis=0), 0, 1)
    # a taper to zero at the frame's edge: a galaxy that fills its cut-out would otherwise leave a straight-edged
    # rectangle, a mark of the blending itself that a model could learn instead of "two galaxies"
    yy, xx = np.mgrid[: small.shape[0], : small.shape[1]]
    r = np.hypot((yy + 0.5) / small.shape[0] - 0.5, (xx + 0.5) / small.shape[1] - 0.5)
    small = small * (0.5 + 0.5 * np.cos(np.pi * np.clip((r - 0.3) / 0.2, 0, 1)))[..., None]
    angle, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.18) * w
    top = round(h / 2 + d * np.sin(angle) - small.shape[0] / 2)
    left = round(w / 2 + d * np.cos(angle) - small.shape[1] / 2)
    canvas = np.zeros((h, w, 3))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + small.shape[0], h), min(left + small.shape[1], w)
    canvas[y0:y1, x0:x1] = small[y0 - top : y1 - top, x0 - left : x1 - left]
    out = 1 - (1 - a.astype(np.float64) / 255) * (1 - canvas)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def disturb(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One galaxy made lopsided and given a tidal tail, a synthetic stand-in for a disturbed galaxy or a merger
    remnant that any source can provide.

    What sets disturbed galaxies apart from both classes is asymmetry (the A of the CAS system), which a blend of
    two symmetric galaxies shows only as a second nucleus. The galaxy's light above the sky (border median),
    smoothed by 1.5 px, is (1) made lopsided: its outer isophotes slide 0.4-0.8 of its Petrosian radius
    (`framing.measure`; 0.08 of the frame when no central source is found) off the core, which stays, with a
    small two-fold wobble, back to nothing by four radii. The residual (the sky's noise) is added back unmoved,
    so no smeared noise marks the image as made. (2) It gets a one-sided tail: a copy stretched 2.5-5 times along
    a random direction, squeezed to 0.3-0.6 across it, bent, at 30-60% of its brightness, rising from 0.8 to 1.8
    radii out (radii of at most 0.12 of the frame), screen-blended. Measured as a worse outlier set than blends
    (BENCHMARKS.md "A second kind: disturbed galaxies")."""
    h, w = a.shape[:2]
    x, border, sky, (cx, cy, r) = _sky_and_source(a)
    yy, xx = np.mgrid[:h, :w] + 0.5
    # (1) lopsided: the light at radius rho moves by D (1 - exp(-(rho / r)^2)), so the core stays and the outer
    # isophotes slide off it, plus a little m = 2 wobble of the same kind along another direction
    rho2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
    angle, size = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.8) * r
    outer = (1 - np.exp(-rho2)) * np.exp(-rho2 / 16)  # back to nothing by about four radii: the sky stays put
    wobble = rng.uniform(0, 2 * np.pi)
    twist = rng.uniform(0.05, 0.15) * r * np.sin(2 * np.arctan2(yy - cy, xx - cx) + wobble)
    shift = [
        outer * (size * np.sin(angle) + twist * np.cos(wobble)),
        outer * (size * np.cos(angle) + twist * np.sin(wobble)),
    ]
    light = x - sky
    smooth = ndimage.gaussian_filter(light, (1.5, 1.5, 0))
    moved = [yy - 0.5 + shift[0], xx - 0.5 + shift[1]]
    warped = (
        light
        - smooth
        + np.stack([ndimage.map_coordinates(smooth[..., c], moved, order=1, mode="nearest") for c in range(3)], axis=-1)
    )
    # (2) the tail: where (u, v) is along and across a random direction, it shows the galaxy at (u / L, v' / q);
    # its radius is at most 0.12 of the frame, so a galaxy that fills a GZ2 cut-out keeps its tail in the crop
    rt = min(r, 0.12 * w)
    theta = rng.uniform(0, 2 * np.pi)
    stretch, squeeze, bend = rng.uniform(2.5, 5), rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.3) * rng.choice([-1, 1])
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta) - bend * u**2 / rt
    us, vs = u / stretch, v / squeeze
    ys, xs = cy + us * np.sin(theta) + vs * np.cos(theta) - 0.5, cx + us * np.cos(theta) - vs * np.sin(theta) - 0.5
    one_side = np.clip((u - 0.8 * rt) / rt, 0, 1) * rng.uniform(0.3, 0.6)
    glow = np.clip(smooth, 0, None)  # the tail carries light, not noise
    tail = np.stack([ndimage.map_coordinates(glow[..., c], [ys, xs], order=1, mode="constant") for c in range(3)], -1)
    tail = tail * one_side[..., None]
    out = 1 - (1 - np.clip(warped + sky, 0, 1)) * (1 - np.clip(tail, 0, 1))
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def irregular(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One galaxy turned into a faint, coreless, clumpy irregular, a synthetic stand-in for the dwarf and
    Magellanic irregulars that neither class describes and that any source can provide.

    Where `disturb` keeps the core and moves the outskirts, an irregular has no core to keep: its light is a
    low, lumpy plateau with star-forming knots and no symmetry. The galaxy's light above the sky (border median),
    smoothed by 1.5 px, is (1) flattened: saturated softly at 20-40% of its peak, cap (1 - exp(-I / cap)),
    colour kept, so a bulge or an elliptical's cusp becomes a plateau; (2) made patchy: multiplied by a
    log-normal random field of correlation length a quarter of the Petrosian radius (`framing.measure`; 0.08
    of the frame when no central source is found); (3) made shapeless: moved along a smooth random displacement
    field (correlation length one radius, 0.25-0.5 radii rms, fading out by four radii), gentle enough not to
    fold the light into filaments; (4) faded to 60-100%; (5) given 3-10 knots (Gaussians of 6-15% of the
    radius, at least 2.5 px) at places drawn from that light, each 0.5-1.5 times the plateau's peak and bluer
    than it (young stars). Under it lies the sky's noise: the smoothing's residual, taken from the frame's other
    half where the galaxy was and clipped to 3 sigma, so the galaxy's own fine structure leaves no ghost."""
    h, w = a.shape[:2]
    x, border, sky, (cx, cy, r) = _sky_and_source(a)
    light = x - sky
    smooth = np.clip(ndimage.gaussian_filter(light, (1.5, 1.5, 0)), 0, None)
    # (1) coreless: the light saturates softly at the cap, cap (1 - exp(-I / cap)), keeping its colour, and (2)
    # patchy: a log-normal random field (correlation length ~ r / 4) breaks the plateau into lumps
    yy, xx = np.mgrid[:h, :w] + 0.5
    grey = smooth.mean(axis=-1)
    cap = rng.uniform(0.2, 0.4) * max(float(grey.max()), 1e-6)
    flat = smooth * (cap * -np.expm1(-grey / cap) / np.maximum(grey, 1e-9))[..., None]
    lumps = _unit_field(rng, (h, w), r / 4)
    flat = flat * np.exp(rng.uniform(0.5, 0.9) * lumps - 0.5)[..., None]
    # (3) shapeless: a smooth random field (correlation length ~ r) moves the light, fading out by 4 radii; gentle
    # enough (rms 0.25-0.5 r) that the map does not fold the light into thin filaments
    rho2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
    amp = rng.uniform(0.25, 0.5) * r
    shift = [_unit_field(rng, (h, w), r) * amp * np.exp(-rho2 / 16) for _ in range(2)]
    moved = [yy - 0.5 + shift[0], xx - 0.5 + shift[1]]
    body = np.stack([ndimage.map_coordinates(flat[..., c], moved, order=1, mode="nearest") for c in range(3)], -1)
    body = body * rng.uniform(0.6, 1.0)  # (4)
    # (5) knots where the body has light, bluer than it
    weight = body.mean(axis=-1).ravel()
    knots = np.zeros_like(body)
    if weight.sum() > 0:
        n = int(rng.integers(3, 11))
        at = rng.choice(weight.size, size=n, p=weight / weight.sum())
        level = float(body.mean(axis=-1).max())
        colour = body.reshape(-1, 3).sum(axis=0)
        colour = colour / max(float(colour.mean()), 1e-9) * np.array([0.8, 0.95, 1.25])
        for i in at:
            ky, kx = divmod(int(i), w)
            sigma = max(2.5, rng.uniform(0.06, 0.15) * r)
            blob = np.exp(-((yy - 0.5 - ky) ** 2 + (xx - 0.5 - kx) ** 2) / (2 * sigma**2))
            knots += blob[..., None] * (rng.uniform(0.5, 1.5) * level) * colour
    # the sky's noise: the residual of the smoothing, where the galaxy was taken from the frame's other half (the
    # residual rolled by half a side, sky in a centred cut-out), and clipped to 3 sigma, so that the galaxy's own
    # fine structure leaves no ghost of it
    noise = 1.4826 * np.median(np.abs(border - sky), axis=0) + 1 / 255
    residual = light - ndimage.gaussian_filter(light, (1.5, 1.5, 0))
    on_galaxy = (smooth > 2 * noise).any(axis=-1, keepdims=True)
    residual = np.where(on_galaxy, np.roll(residual, (h // 2, w // 2), axis=(0, 1)), residual)
    out = np.clip(residual, -3 * noise, 3 * noise) + sky
    out = 1 - (1 - np.clip(out, 0, 1)) * (1 - np.clip(body + knots, 0, 1))
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _sky_and_source(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """`a` as floats in [0, 1], its border pixels, the sky (their median per channel) and the central source's
    centre and Petrosian radius (`framing.measure`; at most a quarter of the frame, at least 2 px), or the frame's
    centre and 0.08 of its width when no central source is found."""
    h, w = a.shape[:2]
    x = a.astype(np.float64) / 255
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    source = measure(Image.fromarray(a))
    cx, cy, r = (w / 2, h / 2, 0.08 * w) if source is None else (source.x, source.y, min(source.radius, 0.25 * w))
    return x, border, np.median(border, axis=0), (cx, cy, max(r, 2.0))


def _unit_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian white noise smoothed at `scale` px and rescaled to unit variance: a smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), scale)
    return field / max(float(field.std()), 1e-12)


SYNTHETIC = {
    "blend": ("synthetic blend of two train galaxies", 2),
    "disturbed": ("synthetic disturbed train galaxy", 1),
    "irregular": ("synthetic irregular train galaxy", 1),
}
"""Each kind of synthetic outlier: its group name in the train.outliers table, and how many galaxies it is made of."""
MAKERS = {"blend": blend_pair, "disturbed": disturb, "irregular": irregular}
"""Each kind's maker: its galaxies (uint8 RGB) and the generator in, the outlier out."""


def refuse_existing(out_dir: Path, kinds: list[str]) -> None:
    """A one-line error if `out_dir` already holds images of any of `kinds`: checked for every kind before any is
    written, so a folder never ends up with one kind replaced and the other refused."""
    for kind in kinds:
        if out_dir.is_dir() and any(out_dir.glob(f"{kind}_*.jpg")):
            raise UserError(f"{out_dir.name}: already holds {kind}_*.jpg files (pass --force to replace them)")


def write_synthetic(
    out_dir: Path, images: pd.DataFrame, n: int, seed: int, *, kind: str = "blend", force: bool = False
) -> pd.DataFrame:
    """`n` synthetic outliers of `kind` (SYNTHETIC) made of galaxies of one `dataset` of `images` (image_path,
    dataset), written as `{kind}_NNNNN.jpg` (each through a temporary name) into `out_dir`; the (image_path,
    group, made_from) rows for train.outliers (made_from: the first galaxy's path). Pass only training-split
    galaxies: a test galaxy shown as an outlier would be trained toward "unsure". Blends draw from `seed` alone,
    so a seed gives the blends it gave before other kinds existed; every other kind from (seed, its index in
    SYNTHETIC)."""
    group_name, k_images = SYNTHETIC[kind]
    if not force:
        refuse_existing(out_dir, [kind])
    groups = [g for _, g in images.groupby("dataset") if len(g) >= k_images]
    if not groups:
        raise UserError(f"no dataset has {k_images} galaxies to make a {kind} of")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed if kind == "blend" else (seed, list(SYNTHETIC).index(kind)))
    weights = np.array([len(g) for g in groups], dtype=np.float64)
    rows = []
    for k in tqdm(range(n), desc=kind, unit="img"):
        group = groups[rng.choice(len(groups), p=weights / weights.sum())]
        picked = rng.choice(len(group), size=k_images, replace=False)
        galaxies = [_read_rgb(group["image_path"].iloc[i]) for i in picked]
        made = MAKERS[kind](*galaxies, rng)
        path = out_dir / f"{kind}_{k:05d}.jpg"
        tmp = path.with_name(path.stem + ".tmp.jpg")
        Image.fromarray(made).save(tmp, quality=95)
        tmp.replace(path)
        rows.append((str(path), group_name, group["image_path"].iloc[picked[0]]))
    return pd.DataFrame(rows, columns=["image_path", "group", "made_from"])


def write_kinds(
    out_dir: Path, images: pd.DataFrame, counts: dict[str, int], seed: int, *, force: bool = False
) -> pd.DataFrame:
    """Every kind of `counts` (kind -> n, SYNTHETIC's order; 0 = none) written into `out_dir` by
    `write_synthetic`, their rows in one table. Without `force`, a folder that already holds any kind asked for is
    refused before any image is written, so it never ends up with one kind replaced and another refused."""
    unknown = sorted(set(counts) - set(SYNTHETIC))
    if unknown:
        raise UserError(f"unknown synthetic outlier kind {unknown[0]!r}; expected one of {', '.join(SYNTHETIC)}")
    wanted = {kind: n for kind, n in counts.items() if n}
    if not wanted or min(wanted.values()) < 0:
        raise UserError("synthetic outliers: expected a count > 0 of at least one kind")
    if not force:
        refuse_existing(out_dir, list(wanted))
    tables = [write_synthetic(out_dir, images, n, seed, kind=kind, force=force) for kind, n in wanted.items()]
    return pd.concat(tables, ignore_index=True)


def _read_rgb(path: str) -> np.ndarray:
    """A training image as uint8 RGB through the product's loader, or a one-line error naming the file."""
    try:
        return np.asarray(load_rgb(path))
    except (OSError, ImageError) as err:
        raise UserError(f"{Path(path).name}: not a decodable image ({type(err).__name__})") from None
