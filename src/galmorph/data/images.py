"""Reading galaxy images the same way everywhere: select, training, evaluate, predict, REST and the web page.

This is the one loader. Every image goes through `read_image`, which
- opens only the accepted formats (ACCEPTED_FORMATS: JPEG, PNG, TIFF, WEBP, BMP, GIF) — PIL's other
  plugins never see the bytes, so an EPS upload cannot make PIL start Ghostscript — and FITS, which goes to
  data.fits (astropy) instead: one band as grey, a 3-plane cube or three files (BandFiles) in colour, under
  the same pixel limit, with a FitsConfig saying which HDU and which stretch;
- refuses an image whose header declares more than `max_pixels` before any pixel is decoded (a 157 KB
  PNG can declare 9000x9000 16-bit pixels, ~2 GB once decoded), and never more than PIL's own
  decompression-bomb limit, so what PIL would only warn about is an error here;
- decodes completely: a truncated file, or a JPEG whose scan runs into a zero-filled tail (which libjpeg
  only warns about), is an error, never a grey-padded image;
- refuses a float image (TIFF) with NaN or infinite pixels instead of turning it black;
- converts whatever mode it finds (RGBA, greyscale, CMYK, 16-bit, float) to 8-bit RGB, in float32.
Each refusal is an ImageError whose `reason` is the one `select` reports for that file and whose message
says what the file is and what is accepted, without a path or an OS error in it.

Served models get images as bytes or base64 text; `decode_image` turns each into the same RGB under
`InputLimits`. A server path is read only when written `file:<path>` and the server has an image root.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
import stat
import string
import warnings
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from galmorph.config import FitsConfig
from galmorph.data.fits import MAGIC as FITS_MAGIC
from galmorph.data.fits import BandFiles, bands_rgb, read_band, read_fits
from galmorph.data.image_errors import REASONS, ImageError, check_dimensions  # noqa: F401  (REASONS: the loader's public names)

# PIL only warns about an image between MAX_IMAGE_PIXELS and twice that: an error here, raised while the file
# is opened (pixel_limit caps every limit at MAX_IMAGE_PIXELS too, so such an image is refused either way).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF")
"""The formats the loader opens (PIL format names); everything else is refused before PIL parses it."""
ACCEPTED = "accepted: JPEG, PNG, TIFF, WEBP, BMP, GIF or FITS"
DEFAULT_MAX_PIXELS = 25_000_000
"""25 Mpx: a 5000x5000 mosaic; SDSS cut-outs are 424x424. Decoded, about 75 MB of RGB."""
MAX_ASPECT = 16
"""Longest side over shortest at most: the eval framing scales the short side up to preprocess.resize, so a
1x100000 strip (a 200-byte PNG) would become a 424x42,400,000 image, 50 GB."""
FILE_PREFIX = "file:"


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A decoded image as 8-bit RGB, with the size, mode and format the file had."""

    image: Image.Image
    width: int
    height: int
    mode: str
    format: str


#: Leading bytes of the accepted formats: a file that starts like one but does not open is corrupt.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"RIFF", "WEBP"),
)

#: What other files people send start with: (magic, what it is, reason).
_FOREIGN: tuple[tuple[bytes, str, str], ...] = (
    (b"%PDF", "a PDF document, not an image", "not_an_image"),
    (b"%!PS", "a PostScript/EPS file, not an accepted image format", "unsupported_format"),
    (b"\xc5\xd0\xd3\xc6", "an EPS file, not an accepted image format", "unsupported_format"),
    (b"8BPS", "a Photoshop (PSD) file, not an accepted image format", "unsupported_format"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file, not an accepted image format", "unsupported_format"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream, not an accepted image format", "unsupported_format"),
    (b"\x00\x00\x01\x00", "an ICO icon, not an accepted image format", "unsupported_format"),
    (b"icns", "an ICNS icon, not an accepted image format", "unsupported_format"),
    (b"DDS ", "a DDS texture, not an accepted image format", "unsupported_format"),
    (b"\x76\x2f\x31\x01", "an OpenEXR file, not an accepted image format", "unsupported_format"),
    (b"PK\x03\x04", "a ZIP archive (or a document inside one), not an image", "not_an_image"),
    (b"\x1f\x8b", "a gzip file, not an image", "not_an_image"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive, not an image", "not_an_image"),
    (b"\x7fELF", "a program, not an image", "not_an_image"),
)
_TEXT = frozenset(string.printable.encode())


def _signature(head: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if head.startswith(magic) and (name != "WEBP" or head[8:12] == b"WEBP"):
            return name
    return None


def _unidentified(head: bytes) -> ImageError:
    """Say what a file that no accepted format opens is, from its first bytes alone."""
    for magic, what, reason in _FOREIGN:
        if head.startswith(magic):
            return ImageError(reason, f"{what}; {ACCEPTED}")
    fmt = _signature(head)
    if fmt is not None:
        return ImageError("corrupt", f"starts like a {fmt} but its header cannot be read")
    if head[4:8] == b"ftyp":
        return ImageError("unsupported_format", f"an HEIF/AVIF image or a video, not an accepted format; {ACCEPTED}")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return ImageError("not_an_image", f"an HTML page (a saved error page?), not an image; {ACCEPTED}")
    if text.startswith((b"<?xml", b"<svg")):
        return ImageError("not_an_image", f"an XML/SVG document, not an image; {ACCEPTED}")
    if head and all(b in _TEXT for b in head):
        return ImageError("not_an_image", f"plain text, not an image; {ACCEPTED}")
    return ImageError("not_an_image", f"not an image in an accepted format (starts with {head[:8]!r}); {ACCEPTED}")


def pixel_limit(max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """`max_pixels`, never above PIL's decompression-bomb limit (so its warning cannot be reached)."""
    pil = Image.MAX_IMAGE_PIXELS
    limits = [n for n in (max_pixels, pil) if n]
    return int(min(limits)) if limits else DEFAULT_MAX_PIXELS


def _jpeg_cut_short(fh: BinaryIO, size: int, tail_bytes: int = 1 << 16) -> bool:
    """True when an end-of-image marker does not follow the last start-of-scan marker. libjpeg only warns
    when the scan runs into zeros instead (a file pre-allocated and never completely written), and PIL then
    returns a half-grey image without an error. Reads the file's tail only, unless the marker is not there."""
    fh.seek(max(0, size - tail_bytes))
    data = fh.read()
    eoi = data.rfind(b"\xff\xd9")
    if eoi < 0 and size > tail_bytes:  # a long trailer after the image: look at all of it
        fh.seek(0)
        data = fh.read()
        eoi = data.rfind(b"\xff\xd9")
    return eoi < 0 or data.find(b"\xff\xda", eoi) >= 0


def _decode_error(exc: BaseException) -> ImageError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError("too_large", f"too many pixels to decode safely ({text[:160]})")
    if "truncated" in text:
        return ImageError("truncated", f"the image data stops early ({text})")
    return ImageError("corrupt", f"the image data is corrupt ({text[:160]})")


def read_image(
    fh: BinaryIO,
    size: int,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fits: FitsConfig | None = None,
    draft: int | None = None,
) -> Loaded:
    """Decode an open, seekable binary file of `size` bytes completely to 8-bit RGB, or raise ImageError.
    A FITS file is read by data.fits with `fits` (default: FitsConfig(), params.yaml's defaults).
    `draft`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its short side keeps at least this many
    pixels (libjpeg scales in the DCT domain: most of the decoding cost is never paid); width and height stay
    the file's own. Every other format is decoded in full.

    OSErrors of the file itself (errno set: EIO, EISDIR...) propagate; PIL's ImageFile.LOAD_TRUNCATED_IMAGES
    must stay False for truncation to be caught.
    """
    if size == 0:
        raise ImageError("zero_bytes", "an empty file")
    head = fh.read(16)
    fh.seek(0)
    if head.startswith(FITS_MAGIC):
        return _read_fits(fh, size, pixel_limit(max_pixels), fits or FitsConfig())
    try:
        im = Image.open(fh, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(head) from None
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise _decode_error(exc) from None
    except Exception as exc:  # PIL's plugins also raise SyntaxError, ValueError, struct.error, EOFError...
        raise _decode_error(exc) from None
    with im:
        width, height = im.size
        mode, fmt = im.mode, im.format or "?"
        limit = pixel_limit(max_pixels)
        if width < 1 or height < 1:
            raise ImageError("corrupt", f"declares {width}x{height} pixels: no image in it")
        check_dimensions(width, height, limit, MAX_ASPECT)
        if draft and fmt == "JPEG":
            short = min(width, height)
            im.draft(None, (-(-draft * width // short), -(-draft * height // short)))
        try:
            im.load()
            if fmt == "JPEG" and _jpeg_cut_short(fh, size):
                raise ImageError("truncated", "the image data stops early (no JPEG end-of-image marker after the scan)")
            ImageOps.exif_transpose(im, in_place=True)  # no copy when upright; a broken EXIF block is corrupt
        except ImageError:
            raise
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise _decode_error(exc) from None
        except MemoryError:
            raise ImageError("too_large", "not enough memory to decode this image") from None
        except Exception as exc:
            raise _decode_error(exc) from None
        rgb = to_rgb(im)
    return Loaded(rgb, width, height, mode, fmt)


def _read_fits(fh: BinaryIO, size: int, limit: int, cfg: FitsConfig) -> Loaded:
    rgb, hdu = read_fits(fh, size, cfg, max_pixels=limit, max_aspect=MAX_ASPECT)
    bands = "1 band" if hdu.planes == 1 else f"{hdu.planes} bands"
    return Loaded(Image.fromarray(rgb, "RGB"), rgb.shape[1], rgb.shape[0], f"{bands}, BITPIX {hdu.bitpix}", "FITS")


def load_bands(
    files: BandFiles, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, fits: FitsConfig | None = None
) -> Image.Image:
    """Three single-band FITS files (blue, green, red) -> one colour image (data.fits.to_rgb); ImageError
    names the band whose file is missing or unusable, or says that their sizes differ."""
    cfg, limit = fits or FitsConfig(), pixel_limit(max_pixels)
    planes = []
    for channel, path in zip(("blue", "green", "red"), files.paths, strict=True):
        try:
            fh, size = open_file(path)
        except FileNotFoundError:
            raise ImageError("missing", f"no {channel}-band file {path}") from None
        with fh:
            head = fh.read(len(FITS_MAGIC))
            fh.seek(0)
            if not head.startswith(FITS_MAGIC):
                raise ImageError("unsupported_format", f"{channel} band {path}: not a FITS file")
            try:
                planes.append(read_band(fh, size, cfg, max_pixels=limit, max_aspect=MAX_ASPECT))
            except ImageError as exc:
                raise ImageError(exc.reason, f"{channel} band {path}: {exc}") from None
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        sizes = ", ".join(f"{p.shape[1]}x{p.shape[0]}" for p in planes)
        raise ImageError("unsupported_mode", f"the three bands are {sizes} pixels: one galaxy's bands have one size")
    rgb = bands_rgb(planes, cfg, [f"the {c} band" for c in ("blue", "green", "red")])
    return Image.fromarray(rgb, "RGB")


def open_file(path: str | os.PathLike, *, nofollow: bool = False) -> tuple[BinaryIO, int]:
    """(binary file, size) of a regular file; never blocks on a FIFO. OSError (FileNotFoundError...) when it
    cannot be opened, ImageError("unreadable") when it is a folder, a device or a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | (getattr(os, "O_NOFOLLOW", 0) if nofollow else 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("unreadable", "is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def load_rgb(
    src: str | os.PathLike | bytes | BandFiles,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fits: FitsConfig | None = None,
    draft: int | None = None,
) -> Image.Image:
    """A local file (trusted: any path), bytes or three FITS band files -> 8-bit RGB; ImageError for what is
    not a usable image, OSError (FileNotFoundError...) when a file cannot be opened. `draft`: see read_image."""
    if isinstance(src, BandFiles):
        return load_bands(src, max_pixels=max_pixels, fits=fits)
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        return read_image(io.BytesIO(data), len(data), max_pixels=max_pixels, fits=fits, draft=draft).image
    fh, size = open_file(src)
    with fh:
        return read_image(fh, size, max_pixels=max_pixels, fits=fits, draft=draft).image


_INTEGER_OR_FLOAT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha composited on black (the sky), 16-bit/32-bit/float rescaled to 8-bit
    in float32; ImageError for NaN/infinite pixels or a mode PIL cannot convert."""
    try:
        if im.mode in _INTEGER_OR_FLOAT:
            arr = np.asarray(im).astype(np.float32)  # one float32 copy, rescaled in place
            finite = np.isfinite(arr)
            if not finite.all():
                bad = int(arr.size - np.count_nonzero(finite))
                raise ImageError("non_finite", f"{bad} of {arr.size} pixels are NaN or infinite")
            del finite
            lo, hi = arr.min(), arr.max()
            if hi > lo:
                arr -= lo
                arr /= hi - lo  # hi - lo divided by itself is exactly 1: the brightest pixel is 255
                arr *= np.float32(255.0)
            else:
                arr[...] = 0.0
            im = Image.fromarray(arr.astype(np.uint8))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im if im.mode == "RGBA" else im.convert("RGBA")
            sky = Image.new("RGB", rgba.size)  # pasting through the alpha = compositing on black, in 40% the memory
            sky.paste(rgba, mask=rgba.getchannel("A"))
            return sky
        return im.convert("RGB") if im.mode != "RGB" else im
    except ImageError:
        raise
    except (ValueError, OSError, TypeError, KeyError) as exc:
        raise ImageError("unsupported_mode", f"pixel mode {im.mode} cannot be converted to RGB ({exc})") from None


# ---------------------------------------------------------------------------------- what served models accept


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """What a served model accepts (the pyfunc under `mlflow models serve`, the web page).

    image_root: `file:<path>` rows are read only when set, and only files whose real path is under it;
    max_pixels: per image, checked from the header before decoding; max_rows and max_request_bytes: per
    request (None: no limit; the bytes are counted as sent, base64 included); max_decodes: images decoded
    at once per model in a process (a semaphore), which bounds decoding memory under concurrent requests.
    """

    image_root: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_rows: int | None = 256
    max_request_bytes: int | None = 64 * 2**20
    max_decodes: int = 2

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_rows", "max_request_bytes", "max_decodes"):
            value = getattr(self, name)
            if value is None and name in ("max_rows", "max_request_bytes"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive whole number, got {value!r}")
        if self.image_root is not None and not os.path.isdir(self.image_root):
            raise ValueError(f"image_root {self.image_root}: not a folder")

    def check_request(self, items: list[Any]) -> ImageError | None:
        """Why a whole request is refused (too many rows, too many bytes), before anything is decoded."""
        if self.max_rows is not None and len(items) > self.max_rows:
            return ImageError(
                "refused", f"the request has {len(items)} images, over the limit of {self.max_rows}: split it"
            )
        if self.max_request_bytes is not None:
            total = sum(_item_size(item) for item in items)
            if total > self.max_request_bytes:
                return ImageError(
                    "refused",
                    f"the request carries {total / 2**20:.1f} MB of image data, over the "
                    f"{self.max_request_bytes / 2**20:g} MB limit: split it",
                )
        return None


def _item_size(item: Any) -> int:
    if isinstance(item, str | bytes | bytearray):
        return len(item)
    if isinstance(item, memoryview):
        return item.nbytes
    return 0


_DATA_URL = "base64,"
_PATHS_OFF = "paths are not accepted here: send the image itself (base64 or bytes)"
_NO_FILE = "no readable image file at that path under the server's image root"


def decode_image(
    item: Any, limits: InputLimits | None = None, fits: FitsConfig | None = None, draft: int | None = None
) -> Image.Image:
    """One input row of a served model -> PIL RGB, or ImageError saying what was wrong.

    bytes: the image file's bytes. Text: base64 (optionally a data: URL), or `file:<path>` for a file under
    `limits.image_root` (refused when there is none). Base64 vs path is decided by the prefix, never by
    whether a file exists, and no message names a server path or an OS error. A Path object (or BandFiles)
    is a local, trusted file (galmorph predict) and is read wherever it is. `fits`: how FITS files are read;
    `draft`: how small a JPEG may be decoded (read_image).
    """
    limits = limits or InputLimits()
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        return read_image(io.BytesIO(data), len(data), max_pixels=limits.max_pixels, fits=fits, draft=draft).image
    if isinstance(item, os.PathLike | BandFiles):
        return load_rgb(item, max_pixels=limits.max_pixels, fits=fits, draft=draft)
    if not isinstance(item, str):
        if item is None or (isinstance(item, float) and math.isnan(item)):
            raise ImageError("no_image", "no image (empty value)")
        if isinstance(item, list | tuple | np.ndarray | pd.Series):
            raise ImageError("no_image", "got a list in one row: pass one image per row")
        raise ImageError("no_image", f"expected base64 text or bytes, got {type(item).__name__}")
    text = item.strip()
    if not text:
        raise ImageError("no_image", "no image (empty string)")
    if text.startswith(FILE_PREFIX):
        return _read_under_root(text[len(FILE_PREFIX) :], limits, fits, draft)
    if text.startswith("data:"):
        if _DATA_URL not in text[:200]:
            raise ImageError("not_an_image", "a data: URL without base64 data")
        text = text.split(_DATA_URL, 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            "not_an_image", "not base64 image data (a file on the server is written file:<path>)"
        ) from None
    return read_image(io.BytesIO(data), len(data), max_pixels=limits.max_pixels, fits=fits, draft=draft).image


def _read_under_root(
    path: str, limits: InputLimits, fits: FitsConfig | None = None, draft: int | None = None
) -> Image.Image:
    """A `file:` row: only a regular file whose real path is under the image root; every refusal reads the
    same, so a client learns nothing about the server's files."""
    if limits.image_root is None:
        raise ImageError("refused", _PATHS_OFF)
    if path.startswith("//"):  # file:///abs/x.jpg; a host (file://host/x) is not a local file
        path = path[2:]
        if not path.startswith("/"):
            raise ImageError("refused", _NO_FILE)
    if not path or "\x00" in path:
        raise ImageError("refused", _NO_FILE)
    root = os.path.realpath(limits.image_root)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise ImageError("refused", _NO_FILE)
    try:
        fh, size = open_file(real, nofollow=True)  # not a FIFO that blocks, not a symlink swapped in since
    except (OSError, ImageError):
        raise ImageError("refused", _NO_FILE) from None
    with fh:
        if limits.max_request_bytes is not None and size > limits.max_request_bytes:
            raise ImageError("too_large", f"the file is over the {limits.max_request_bytes / 2**20:g} MB limit")
        try:
            return read_image(fh, size, max_pixels=limits.max_pixels, fits=fits, draft=draft).image
        except OSError:
            raise ImageError("unreadable", "the file could not be read") from None


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
