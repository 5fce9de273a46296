"""Reading galaxy images the same way everywhere (select, datasets, predict, serve).

Survey cut-outs are 8-bit RGB JPEGs, but people bring RGBA PNGs, greyscale, CMYK and 16-bit images;
every one of them is converted to 8-bit RGB here so the model always sees the same kind of input.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def load_rgb(src: str | os.PathLike | bytes) -> Image.Image:
    """Decode an image (path or bytes) to 8-bit RGB; raises OSError/ValueError for non-images."""
    fh = io.BytesIO(src) if isinstance(src, bytes | bytearray) else Path(src).open("rb")  # noqa: SIM115
    with fh, Image.open(fh) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha composited on black (the sky), 16-bit rescaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im
