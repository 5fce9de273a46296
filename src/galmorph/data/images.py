"""Reading galaxy images the same way everywhere (select, datasets, predict, serve).

Survey cut-outs are 8-bit RGB JPEGs, but people bring RGBA PNGs, greyscale, CMYK and 16-bit images;
every one of them is converted to 8-bit RGB here so the model always sees the same kind of input.
Served models also get images as bytes or base64 text; decode_image turns each of those into the same RGB.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError


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


_DATA_URL = "base64,"


def decode_image(item: Any) -> Image.Image:
    """Path, bytes or base64 (optionally a data: URL) -> PIL RGB; ValueError/OSError say what was wrong."""
    if isinstance(item, bytes | bytearray | memoryview):
        return _load_bytes(bytes(item))
    if isinstance(item, os.PathLike):
        return load_rgb(item)
    if not isinstance(item, str):
        if item is None or (isinstance(item, float) and math.isnan(item)):
            raise ValueError("no image (empty value)")
        if isinstance(item, list | tuple | np.ndarray):
            raise ValueError("got a list in one row: pass one image per row")
        raise ValueError(f"expected a path, bytes or base64 text, got {type(item).__name__}")
    text = item.strip()
    if not text:
        raise ValueError("no image (empty string)")
    if os.path.isfile(text):  # before base64: a JPEG's base64 starts with "/9j/", which looks like a path
        return load_rgb(text)
    if text.startswith("data:") and _DATA_URL in text:
        text = text.split(_DATA_URL, 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{shown}: no such file, and not base64 image data") from None
    return _load_bytes(data)


def _load_bytes(data: bytes) -> Image.Image:
    try:
        return load_rgb(data)
    except UnidentifiedImageError:  # its message is a useless "<_io.BytesIO object at 0x...>"
        raise ValueError(f"{len(data)} bytes that are not an image PIL can read") from None


def image_items(model_input: Any) -> list[Any]:
    """The images of a pyfunc input: a DataFrame (column `image`, or its only column), a Series, a
    dict {"image": [...]}, a list/array of items, or one item."""
    if isinstance(model_input, pd.DataFrame):
        if "image" in model_input.columns:
            return model_input["image"].tolist()
        if len(model_input.columns) == 1:
            return model_input.iloc[:, 0].tolist()
        raise ValueError(f"expected a column 'image', got columns {list(model_input.columns)}")
    if isinstance(model_input, dict):
        if "image" not in model_input:
            raise ValueError(f"expected a key 'image', got keys {list(model_input)}")
        value = model_input["image"]
        return list(value) if isinstance(value, list | tuple | np.ndarray | pd.Series) else [value]
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return list(model_input)
    return [model_input]
