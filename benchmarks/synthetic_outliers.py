"""Made-up outliers for train.outliers (outlier exposure) from ordinary training galaxies, for surveys with no
labelled mergers: two-galaxy blends (`blend_pair`, the set the README recommends) and lopsided galaxies with a
tail (`disturb`, a measured negative kept for the record; BENCHMARKS.md "Synthetic two-galaxy blends").

`ood_other.py --write-outliers CSV --blends N --disturbed N` is the command line; `write_synthetic` writes one
kind's images and table rows, `preview_synthetic` draws them beside their source galaxies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from galmorph.config import load_params
from galmorph.data.framing import measure
from galmorph.data.image_errors import ImageError
from galmorph.data.images import load_rgb
from galmorph.errors import UserError
from galmorph.evaluation.galleries import display_image, gallery_figure
from galmorph.evaluation.plots import save_figure
from galmorph.paths import repo_root


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
    x = a.astype(np.float64) / 255
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    sky = np.median(border, axis=0)
    source = measure(Image.fromarray(a))
    cx, cy, r = (w / 2, h / 2, 0.08 * w) if source is None else (source.x, source.y, min(source.radius, 0.25 * w))
    r = max(r, 2.0)
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


SYNTHETIC = {
    "blend": ("synthetic blend of two train galaxies", 2),
    "disturbed": ("synthetic disturbed train galaxy", 1),
}
"""Each kind of synthetic outlier: its group name in the train.outliers table, and how many galaxies it is made of."""


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
        made = blend_pair(*galaxies, rng) if kind == "blend" else disturb(*galaxies, rng)
        path = out_dir / f"{kind}_{k:05d}.jpg"
        tmp = path.with_name(path.stem + ".tmp.jpg")
        Image.fromarray(made).save(tmp, quality=95)
        tmp.replace(path)
        rows.append((str(path), group_name, group["image_path"].iloc[picked[0]]))
    return pd.DataFrame(rows, columns=["image_path", "group", "made_from"])


def _read_rgb(path: str) -> np.ndarray:
    """A training image as uint8 RGB through the product's loader, or a one-line error naming the file."""
    try:
        return np.asarray(load_rgb(path))
    except (OSError, ImageError) as err:
        raise UserError(f"{Path(path).name}: not a decodable image ({type(err).__name__})") from None


def preview_synthetic(table: pd.DataFrame, out: Path, per_kind: int = 8) -> int:
    """A PNG of the first `per_kind` synthetic outliers of each group beside the galaxy each was made from, both
    framed as the model sees them (params.yaml's preprocess): look before training on them. Returns the tiles."""
    preprocess = load_params(repo_root() / "params.yaml").preprocess
    images, captions = [], []
    for group, rows in table.groupby("group", sort=False):
        for _, row in rows.head(per_kind).iterrows():
            for path, text in ((row["made_from"], "made from"), (row["image_path"], group.split()[1])):
                images.append(display_image(path, preprocess, size=96))
                captions.append(text if len(text) <= 24 else text[:23] + "…")
    title = f"Synthetic outliers beside the training galaxy each was made from (first {per_kind} of each kind)"
    save_figure(gallery_figure(images, captions, title, ncols=8), out, dpi=50, palette=True)
    return len(images)
