"""Adaptive framing: find the central source of an image and the square that frames it.

Survey cut-outs are framed differently (Galaxy Zoo 2's JPEGs scale with each galaxy's Petrosian radius, other
sets use a fixed pixel scale, other telescopes anything), so a fixed centre crop shows the network a galaxy
that fills 20% of one frame and 90% of another. This module measures the central source's extent in the image
itself and returns the crop box of side `frame_scale` x its radius, so every galaxy reaches the network at about
the same apparent size. Pure numpy/scipy on a small grey copy (~1 ms per 424-px image, BENCHMARKS.md).

The measurement, on a grey copy box-reduced to about WORK_SIZE px and smoothed 3x3:
1. background = median of the border, noise = 1.4826 x MAD of the border (robust to a star on the edge);
2. pixels above background + NSIGMA x noise, labelled into 8-connected components (scipy.ndimage.label);
3. the component containing the image centre, else the one nearest to it within MAX_OFFSET of the side, of at
   least MIN_AREA pixels and peaking above PEAK_NSIGMA x noise; none: no central source (the caller falls back
   to the fixed crop). A bright star away from the centre therefore never captures the frame;
4. its centre: a flux-weighted centroid in a small window, iterated from the image centre (cut-outs are centred
   on their target) or from the component's peak, so a brighter neighbour merged into the segment does not pull
   it; and the Petrosian radius about that centre: the radius where the surface brightness of the ring falls
   to PETROSIAN_ETA (0.2, SDSS's value) of the mean surface brightness inside it. Pixels of other components (field stars, neighbours) are left out of the rings, whose means stand in for
   them. The Petrosian radius rather than flux-weighted second moments because it is a ratio of two surface
   brightnesses: it does not depend on the depth of the image, the detection threshold or the galaxy's total
   flux (a deeper survey does not frame wider), and the light of a star merged into the segment shifts it far
   less than it shifts a second moment, which weighs flux by distance squared. When the ratio never falls that
   low (a galaxy larger than the frame) the radius is the frame's, and the box is clamped to the frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_SIZE = 128
"""The measurement's resolution: the short side is box-reduced by an integer factor to about this."""
BORDER = 1 / 16
"""The border band whose pixels estimate the sky (a fraction of each side, at least 2 px)."""
NSIGMA = 3.0
"""Detection threshold of the segmentation, in border noise above the border median (after 3x3 smoothing)."""
PEAK_NSIGMA = 6.0
"""A component must peak at least this far above the background to count as a source (noise never does)."""
MIN_AREA = 6
"""Smallest component, in work pixels, that counts as a source."""
MAX_OFFSET = 0.25
"""A central source not containing the centre must come within this fraction of the short side of it."""
PETROSIAN_ETA = 0.2
WINDOW = 3
"""Half-width in work pixels (~9 px of a 424-px image) of the window that centres on the target's light."""
NOISE_FLOOR = 0.25
"""Grey levels (of 255): the least noise assumed, for clipped JPEG skies whose MAD is zero."""


@dataclasses.dataclass(frozen=True)
class Source:
    """The central source in the source image's pixel coordinates (x right, y down; pixel centres at +0.5)."""

    x: float
    y: float
    radius: float  # Petrosian radius, source pixels
    clamped: bool  # the ratio never fell to PETROSIAN_ETA inside the frame: radius is the frame's


def work_grey(img: Image.Image, work: int = WORK_SIZE) -> tuple[np.ndarray, int]:
    """(grey float32 array box-reduced by an integer factor to a short side of about `work`, the factor)."""
    factor = max(1, round(min(img.size) / work))
    grey = img.convert("F")  # float (ITU-R 601 luma) before reducing: 8-bit means would quantise dark skies' noise
    return np.asarray(grey.reduce(factor) if factor > 1 else grey, dtype=np.float32), factor


def border_stats(grey: np.ndarray) -> tuple[float, float]:
    """(median, robust sigma) of the pixels in the border band."""
    h, w = grey.shape
    b = max(2, round(min(h, w) * BORDER))
    band = np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[b:-b, :b].ravel(), grey[b:-b, -b:].ravel()])
    med = float(np.median(band))
    mad = float(np.median(np.abs(band - med)))
    return med, max(1.4826 * mad, NOISE_FLOOR)


def central_source(grey: np.ndarray) -> tuple[float, float, float, bool] | None:
    """(x, y, Petrosian radius, clamped) of the central source in `grey`'s pixels, or None when there is none."""
    h, w = grey.shape
    if min(h, w) < 8:
        return None
    smooth = ndimage.uniform_filter(grey, 3, mode="nearest")
    bg, noise = border_stats(smooth)
    labels, n = ndimage.label(smooth > bg + NSIGMA * noise, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = np.bincount(labels[smooth >= bg + PEAK_NSIGMA * noise], minlength=n + 1)[1:]
    ok = (area >= MIN_AREA) & (peaks > 0)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    centre = labels[int(round(cy)), int(round(cx))]
    if centre and ok[centre - 1]:
        pick, start = centre, (cy, cx)
    else:
        if not ok.any():
            return None
        # distance from the centre to each candidate's nearest pixel
        ys, xs = np.nonzero(labels)
        lab = labels[ys, xs]
        d2 = (ys - cy) ** 2 + (xs - cx) ** 2
        nearest = np.full(n + 1, np.inf)
        np.minimum.at(nearest, lab, d2)
        nearest[1:][~ok] = np.inf
        pick = int(np.argmin(nearest))
        if nearest[pick] > (MAX_OFFSET * min(h, w)) ** 2:
            return None
        start = ndimage.maximum_position(smooth, labels, pick)
    y0, x0 = windowed_centre(np.clip(smooth - bg, 0, None), *start)
    radius, clamped = petrosian_radius(grey - bg, (labels > 0) & (labels != pick), x0, y0)
    return x0, y0, radius, clamped


def windowed_centre(flux: np.ndarray, y: float, x: float, iterations: int = 5) -> tuple[float, float]:
    """(y, x): the flux-weighted centroid in a (2 WINDOW + 1)-px square, moved to it and recomputed until it
    settles. It climbs to the target's own light; a whole segment's centroid is pulled towards a brighter
    neighbour merged into it, and the crop would centre between the two."""
    h, w = flux.shape
    for _ in range(iterations):
        iy, ix = min(max(round(y), 0), h - 1), min(max(round(x), 0), w - 1)
        top, left = max(iy - WINDOW, 0), max(ix - WINDOW, 0)
        patch = flux[top : iy + WINDOW + 1, left : ix + WINDOW + 1]
        total = float(patch.sum())
        if total <= 0:
            break
        py, px = np.ogrid[: patch.shape[0], : patch.shape[1]]
        ny, nx = top + float((patch * py).sum()) / total, left + float((patch * px).sum()) / total
        moved = abs(ny - y) + abs(nx - x)
        y, x = ny, nx
        if moved < 0.05:
            break
    return float(y), float(x)


def petrosian_radius(flux: np.ndarray, masked: np.ndarray, x0: float, y0: float) -> tuple[float, bool]:
    """The radius about (x0, y0) where the ring's mean surface brightness falls to PETROSIAN_ETA of the mean
    inside it, in pixels, interpolated between rings 1 px wide; masked pixels are left out of the rings. When it
    never falls that far, the distance to the farthest edge and True (clamped)."""
    yy, xx = np.ogrid[: flux.shape[0], : flux.shape[1]]
    ring = np.sqrt((xx - x0) ** 2 + (yy - y0) ** 2).astype(np.intp).ravel()
    nring = int(ring.max()) + 1
    area = np.bincount(ring, minlength=nring).astype(np.float64)
    keep = ~masked.ravel()
    counted = np.bincount(ring, weights=keep, minlength=nring)
    summed = np.bincount(ring, weights=np.where(keep, flux.ravel(), 0.0), minlength=nring)
    sb = np.divide(summed, counted, out=np.zeros(nring), where=counted > 0)  # mean surface brightness of each ring
    inner_flux = np.cumsum(sb * area) - 0.5 * sb * area  # flux inside each ring's middle radius (k + 0.5)
    inner_area = np.cumsum(area) - 0.5 * area
    mean_inside = inner_flux / inner_area
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(mean_inside > 0, sb / mean_inside, 0.0)
    below = np.nonzero(eta[1:] < PETROSIAN_ETA)[0]
    if below.size == 0:
        return float(nring), True
    k = int(below[0]) + 1
    # linear interpolation of eta between ring middles k - 0.5 and k + 0.5
    e0, e1 = eta[k - 1], eta[k]
    t = (e0 - PETROSIAN_ETA) / (e0 - e1) if e0 != e1 else 0.0
    return float(k - 0.5 + t), False


def measure(img: Image.Image, work: int = WORK_SIZE) -> Source | None:
    """The central source of a PIL image in its own pixel coordinates, or None when none is found."""
    grey, factor = work_grey(img, work)
    found = central_source(grey)
    if found is None:
        return None
    x, y, r, clamped = found
    return Source(x=(x + 0.5) * factor, y=(y + 0.5) * factor, radius=r * factor, clamped=clamped)


def frame_box(
    img: Image.Image, *, unit: int, fallback: int, scale: float, min_side: int
) -> tuple[float, float, float, float]:
    """The square (left, top, right, bottom) in the image's pixels that frames its central source.

    Sides are in pixels of the image resized so its short side is `unit` (preprocess.resize, so they mean the
    same whatever the file's size): `scale` x the Petrosian radius, at least `min_side`, at most the frame;
    centred on the source and shifted to stay inside the image. No central source: the centred `fallback`
    square, the fixed crop."""
    width, height = img.size
    short = min(width, height)
    px = short / unit  # image pixels per unit pixel
    src = measure(img)
    if src is None:
        side, x, y = min(fallback * px, short), width / 2, height / 2
    else:
        side = min(max(scale * src.radius, min_side * px), short)
        x, y = src.x, src.y
    left = min(max(x - side / 2, 0.0), width - side)
    top = min(max(y - side / 2, 0.0), height - side)
    return left, top, left + side, top + side
