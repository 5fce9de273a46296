"""Sky-background normalisation: every image reaches the network with a black sky and the same stretch.

SDSS cut-outs have a dark neutral sky and a fixed asinh stretch; DECaLS cut-outs and camera photographs have
bluish or grey skies, other colour balances and stretches, and a model trained on SDSS alone reads those as
morphology (issue 9: every bright elliptical of the independent photographs was called spiral). With
preprocess.sky: border, each channel separately has its sky subtracted (the median of a border ring, outer
`sky_border` of each side, where the target galaxy is not) and is then scaled so its `sky_percentile`-th
percentile lands at `sky_level` x 255, clipped to 0..255. It is part of the preprocess stored in the model
file, so training and every serving path normalise alike.

Fast because the data are 8-bit: both statistics come from 256-bin histograms (Pillow's C `histogram`, the
ring as a mask; of a pixel subsample in large images) and the mapping is a 3 x 256 lookup table applied by
`Image.point`; no float image is ever made (BENCHMARKS.md gives the time per 424-px image).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from galmorph.config import PreprocessConfig

MIN_RANGE = 1.0
"""Grey levels: the least (percentile - sky) a channel is divided by, so a constant image maps to black,
never to a division by zero."""
SAMPLE_SIDE = 200
"""Both statistics are measured on every k-th pixel of each row and column, k = the short side / this rounded
(424-px SDSS: every 2nd, 45,000 pixels; a 128-px image: all), which halves the cost and leaves the 99.5th
percentile hundreds of pixels to stand on."""


def _ring_mask(size: tuple[int, int], border: float) -> Image.Image:
    """Mode-L mask of the outer `border` fraction of each side (at least one pixel; the whole image when tiny)."""
    w, h = size
    bx, by = max(1, round(border * w)), max(1, round(border * h))
    mask = Image.new("L", size, 255)
    if w > 2 * bx and h > 2 * by:
        mask.paste(0, (bx, by, w - bx, h - by))
    return mask


def _quantiles(hist: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per channel (rows of a 3 x 256 histogram), the grey level of quantile q[c] in [0, 1] (the lower value,
    numpy's 'inverted_cdf')."""
    cdf = np.cumsum(hist, axis=1)
    target = q * cdf[:, -1]
    return np.array([np.searchsorted(cdf[c], target[c], side="left") for c in range(3)], dtype=np.float64)


def sky_lut(img: Image.Image, border: float, percentile: float, level: float) -> list[int]:
    """The 768-entry lookup table (R, G, B) of `img`'s normalisation: (v - sky) * gain, clipped to 0..255."""
    step = max(1, round(min(img.size) / SAMPLE_SIDE))
    if step > 1:  # every step-th pixel of each row and column (nearest neighbour: no pixel values made up)
        img = img.resize((img.width // step, img.height // step), Image.NEAREST)
    ring = np.asarray(img.histogram(_ring_mask(img.size, border)), dtype=np.int64).reshape(3, 256)
    whole = np.asarray(img.histogram(), dtype=np.int64).reshape(3, 256)
    sky = _quantiles(ring, np.full(3, 0.5))
    top = _quantiles(whole, np.full(3, percentile / 100.0))
    gain = level * 255.0 / np.maximum(top - sky, MIN_RANGE)
    v = np.arange(256, dtype=np.float64)
    lut = np.clip(np.rint((v[None, :] - sky[:, None]) * gain[:, None]), 0, 255)
    return lut.astype(np.int64).ravel().tolist()


def normalise_sky(
    img: Image.Image | np.ndarray, border: float = 0.1, percentile: float = 99.5, level: float = 0.9
) -> Image.Image | np.ndarray:
    """Sky-subtracted, percentile-stretched copy of an 8-bit RGB image: PIL RGB in, PIL RGB out; uint8 HxWx3
    in, uint8 HxWx3 out."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 array of shape (H, W, 3), got {img.dtype} {img.shape}")
        return np.array(normalise_sky(Image.fromarray(img, "RGB"), border, percentile, level))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img.point(sky_lut(img, border, percentile, level))


class SkyNormalise:
    """The preprocess's sky step as a transform (PIL RGB -> PIL RGB), for the presets of data/transforms.py."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.border, self.percentile, self.level = cfg.sky_border, cfg.sky_percentile, cfg.sky_level

    def __call__(self, img: Image.Image) -> Image.Image:
        return normalise_sky(img, self.border, self.percentile, self.level)

    def __repr__(self) -> str:
        return f"SkyNormalise(border={self.border}, percentile={self.percentile}, level={self.level})"


def sky_steps(cfg: PreprocessConfig) -> list:
    """The transforms that go first in every preset: [SkyNormalise] with preprocess.sky: border, else none."""
    return [SkyNormalise(cfg)] if cfg.sky == "border" else []
