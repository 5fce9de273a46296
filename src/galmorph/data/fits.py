"""FITS images for the one loader (data.images): the survey's own pixels, turned into the RGB the model sees.

Which image: the first HDU holding a 2-D image or a cube of three planes (axes of length 1 ignored), or the
one `FitsConfig.hdu` names (a number, 0 = primary, or an EXTNAME). How it looks: Lupton et al.'s asinh
stretch, astropy.visualization.make_lupton_rgb, the way the SDSS colour JPEGs were made, of three bands (a
cube, planes blue to red as grz/gri cut-outs store them, or three files) in colour, or of one band in grey.
By default (`relative`) each band's median sky is subtracted and all are divided by one common level first,
so that one Q and stretch suit any survey's units: the sky comes out dark and a galaxy's core bright but
not saturated, as in the SDSS JPEGs the model was trained on. NaN and infinite pixels (masked, off the
detector) are replaced by their band's median before the stretch; a band with no finite pixel is an error.
FITS rows run bottom to top: the RGB is flipped so that the image looks as ds9 shows it.

The bytes may come from anyone (REST, the web page), so the headers are read and checked here before
astropy sees any data: every HDU's header (at most MAX_HEADER_BLOCKS blocks of printable text, a sane
BITPIX/NAXIS), the data sizes against the file's length, the chosen image against the pixel limit, and a
tile-compressed image's tiles and codec (SAFE_CODECS: GZIP and HCOMPRESS tiles are refused). Only then is the
chosen HDU, copied out on its own, handed to astropy.io.fits (no memmap). Errors are the loader's own
ImageError (data.image_errors); their messages name HDUs, never a path.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import io
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from galmorph.config import FitsConfig
from galmorph.data.image_errors import ImageError, check_dimensions
from galmorph.errors import UserError

MAGIC = b"SIMPLE  ="
"""How every FITS file starts (the primary header's first card)."""
SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz")
"""File names scanned as FITS in folders (predict, evaluate-folder, batch); a named file is read whatever it is called."""
BLOCK, CARD = 2880, 80
MAX_HEADER_BLOCKS = 100
"""3,600 cards per header at most (a real cut-out has tens; an HST drizzled image a few hundred)."""
MAX_HDUS = 100
"""HDUs looked at before giving up on finding an image."""
BITPIX_BYTES = {8: 1, 16: 2, 32: 4, 64: 8, -32: 4, -64: 8}
MAX_AXIS = 2**31 - 1
SAFE_CODECS = ("RICE_1", "RICE_ONE", "PLIO_1", "NOCOMPRESS")
"""Tile codecs accepted. astropy's GZIP_1/GZIP_2 call gzip.decompress without a bound (a 64 MB upload can
inflate to tens of GB), and its HCOMPRESS_1 decoder corrupted the C heap and aborted the process on
bit-flipped tiles in our fuzzing (astropy 8.0.2); RICE_1 (fpack's default) and PLIO_1 survived 15,000
bit-flipped files each."""
_PRINTABLE = bytes(range(32, 127))
CHANNELS = ("blue", "green", "red")


@dataclasses.dataclass(frozen=True)
class Hdu:
    """One HDU as its header describes it, before any of its data is read."""

    index: int
    name: str
    kind: str  # "image", "compressed image", "table", "random groups" or the XTENSION
    axes: tuple[int, ...]  # NAXIS1, NAXIS2, ... of the image (ZNAXISn of a compressed one)
    bitpix: int
    start: int  # offset of the header
    data_end: int  # offset just after the data (padding excluded)
    codec: str | None = None
    tiles: tuple[int, ...] = ()

    @property
    def is_image(self) -> bool:
        return self.kind in ("image", "compressed image")

    @property
    def planes(self) -> int:
        return math.prod(self.axes[2:])

    @property
    def usable(self) -> bool:
        """A 2-D image or a cube of three planes, with pixels (axes of length 1 beyond the second ignored)."""
        return self.is_image and len(self.axes) >= 2 and min(self.axes) > 0 and self.planes in (1, 3)

    def describe(self) -> str:
        label = f"{self.index} {self.name}".rstrip()
        if not self.is_image:
            return f"{label}: {self.kind}"
        if len(self.axes) < 2 or min(self.axes, default=0) == 0:
            return f"{label}: no image data"
        shape = "x".join(str(n) for n in self.axes)
        return f"{label}: {shape} {'compressed ' if self.codec else ''}image"


def _header_bytes(fh: BinaryIO, start: int) -> bytes:
    """The header at `start`, up to and with the block of its END card; checked to be FITS header text."""
    fh.seek(start)
    blocks = []
    for _ in range(MAX_HEADER_BLOCKS):
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise ImageError("truncated", "the file ends inside a FITS header")
        if block.translate(None, _PRINTABLE):
            raise ImageError("corrupt", "starts like a FITS file but its header is not FITS header text")
        blocks.append(block)
        if any(block[i : i + 8] == b"END     " for i in range(0, BLOCK, CARD)):
            return b"".join(blocks)
    raise ImageError("corrupt", f"a FITS header with no END card in its first {MAX_HEADER_BLOCKS * 36} cards")


def _get(header: Any, key: str, default: Any = None) -> Any:
    """A card's value; a card astropy cannot parse is a corrupt header."""
    try:
        return header.get(key, default)
    except Exception:  # astropy's VerifyError for an unparsable card
        raise ImageError("corrupt", f"a FITS header whose {key} card cannot be read: not a usable image") from None


def _int(header: Any, key: str, default: int | None = None, low: int = 0, high: int = MAX_AXIS) -> int:
    value = _get(header, key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ImageError("corrupt", f"a FITS header with an invalid {key} ({str(value)[:20]}): not a usable image")
    return int(value)


def _axes(header: Any, prefix: str = "") -> tuple[int, tuple[int, ...]]:
    bitpix = _int(header, f"{prefix}BITPIX", low=-64, high=64)
    if bitpix not in BITPIX_BYTES:
        raise ImageError("corrupt", f"a FITS header with {prefix}BITPIX = {bitpix}: expected 8, 16, 32, 64, -32 or -64")
    naxis = _int(header, f"{prefix}NAXIS", high=999)
    return bitpix, tuple(_int(header, f"{prefix}NAXIS{i}") for i in range(1, naxis + 1))


def _parse(fh: BinaryIO, index: int, start: int) -> Hdu:
    """The HDU whose header starts at `start`: its kind, image axes and where its data ends."""
    fits = _astropy().io.fits
    raw = _header_bytes(fh, start)
    try:
        header = fits.Header.fromstring(raw.decode("ascii"))
    except Exception as exc:
        raise ImageError("corrupt", f"a FITS header that cannot be read ({type(exc).__name__})") from None
    bitpix, axes = _axes(header)
    pcount, gcount = _int(header, "PCOUNT", 0, high=2**62), _int(header, "GCOUNT", 1)
    groups = index == 0 and _get(header, "GROUPS") is True and axes[:1] == (0,)
    pixels = math.prod(axes[1:] if groups else axes) if axes else 0
    data_end = start + len(raw) + BITPIX_BYTES[bitpix] * gcount * (pcount + pixels)
    name = str(_get(header, "EXTNAME", "PRIMARY" if index == 0 else ""))[:24]
    xtension = None if index == 0 else str(_get(header, "XTENSION", "")).strip().upper()
    if groups:
        return Hdu(index, name, "random groups", axes, bitpix, start, data_end)
    if xtension in (None, "IMAGE"):
        return Hdu(index, name, "image", axes, bitpix, start, data_end)
    if xtension == "BINTABLE" and _get(header, "ZIMAGE") is True:
        zbitpix, zaxes = _axes(header, "Z")
        codec = str(_get(header, "ZCMPTYPE", "")).strip().upper()
        tiles = tuple(_int(header, f"ZTILE{i}", zaxes[i - 1] if i == 1 else 1) for i in range(1, len(zaxes) + 1))
        return Hdu(index, name, "compressed image", zaxes, zbitpix, start, data_end, codec or "?", tiles)
    kind = "table" if xtension in ("BINTABLE", "TABLE") else f"a {xtension or 'nameless'} extension"
    return Hdu(index, name, kind, axes, bitpix, start, data_end)


def _listing(hdus: Sequence[Hdu]) -> str:
    shown = ", ".join(h.describe() for h in hdus[:6])
    return shown + (f", ... ({len(hdus)} HDUs)" if len(hdus) > 6 else "")


def find_hdu(fh: BinaryIO, size: int, hdu: int | str | None = None) -> Hdu:
    """Walk the headers to the image to read: `hdu` (index or EXTNAME), or the first usable one. Reads
    headers only; FitsError when there is none, or the chosen one is not an image."""
    seen: list[Hdu] = []
    start = 0
    while start < size and len(seen) < MAX_HDUS:
        if seen:  # after the primary HDU: an extension, or trailing bytes that are not ours to read
            fh.seek(start)
            if fh.read(8) != b"XTENSION":
                break
        current = _parse(fh, len(seen), start)
        seen.append(current)
        wanted = (
            current.usable
            if hdu is None
            else current.index == hdu
            if isinstance(hdu, int)
            else current.name.strip().upper() == str(hdu).strip().upper()
        )
        if wanted:
            return current
        if current.data_end > size:
            raise ImageError("truncated", f"the data of HDU {current.index} stops early (the file is cut short)")
        start += math.ceil((current.data_end - start) / BLOCK) * BLOCK
    if hdu is None:
        raise ImageError("unsupported_mode", f"a FITS file with no 2-D image or 3-band cube in it ({_listing(seen)})")
    raise ImageError("unsupported_mode", f"no HDU {hdu!r} in this FITS file ({_listing(seen)})")


def check_hdu(hdu: Hdu, size: int, *, max_pixels: int, max_aspect: int) -> None:
    """The chosen HDU against the limits, before its data is read."""
    if not hdu.is_image:
        raise ImageError("unsupported_mode", f"HDU {hdu.describe()}, not an image")
    if not hdu.usable:
        cube = min(hdu.axes, default=0) > 0 and len(hdu.axes) > 2
        what = f" (a cube of {hdu.planes} planes)" if cube else ""
        raise ImageError("unsupported_mode", f"HDU {hdu.describe()}{what}: expected an image of one band or three")
    check_dimensions(hdu.axes[0], hdu.axes[1], max_pixels, max_aspect)
    if hdu.data_end > size:
        raise ImageError("truncated", f"the data of HDU {hdu.index} stops early (the file is cut short)")
    if hdu.codec is not None:
        if hdu.codec not in SAFE_CODECS:
            raise ImageError(
                "unsupported_format",
                f"HDU {hdu.index} is tile-compressed with {hdu.codec}; accepted: RICE_1 (fpack's default), PLIO_1 "
                "or uncompressed (funpack it first)",
            )
        if len(hdu.tiles) != len(hdu.axes) or not all(0 < t <= n for t, n in zip(hdu.tiles, hdu.axes, strict=True)):
            raise ImageError("corrupt", f"HDU {hdu.index} declares tiles {hdu.tiles} that do not fit its image")


@functools.cache
def _astropy() -> Any:
    """astropy, imported on the first FITS file (not by every importer of the loader). Its FITS reader's
    warnings about non-standard headers are ignored: the checks above decide what is usable."""
    import astropy.io.fits
    import astropy.visualization
    from astropy.utils.exceptions import AstropyUserWarning

    warnings.filterwarnings("ignore", category=AstropyUserWarning, module=r"(astropy\.io\.fits|galmorph\.data)")
    warnings.filterwarnings("ignore", category=astropy.io.fits.verify.VerifyWarning)
    return astropy


def read_planes(fh: BinaryIO, size: int, hdu: Hdu) -> np.ndarray:
    """The pixels of a checked HDU as float32 (planes, height, width), BSCALE/BZERO applied by astropy from
    a copy of that HDU alone, so that nothing else of the file is parsed."""
    fh.seek(hdu.start)
    chunk = fh.read(hdu.data_end - hdu.start)
    if len(chunk) < hdu.data_end - hdu.start:
        raise ImageError("truncated", f"the data of HDU {hdu.index} stops early (the file is cut short)")
    chunk += bytes(-len(chunk) % BLOCK)
    fits = _astropy().io.fits
    try:
        with fits.open(io.BytesIO(chunk), memmap=False, ignore_missing_simple=True, lazy_load_hdus=True) as hdul:
            data = hdul[0].data
            planes = np.asarray(data, dtype=np.float32).reshape(hdu.planes, hdu.axes[1], hdu.axes[0])
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_large", "not enough memory to read this FITS image") from None
    except Exception as exc:  # astropy's readers raise ValueError, TypeError, OSError, VerifyError...
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ImageError("corrupt", f"the data of HDU {hdu.index} cannot be read ({text})") from None
    return planes


def _filled(band: np.ndarray, what: str) -> np.ndarray:
    """`band` with its NaN/infinite pixels set to the median of the others (in place); FitsError when none is finite."""
    bad = ~np.isfinite(band)
    if bad.all():
        raise ImageError("non_finite", f"every pixel of {what} is NaN or infinite: no image")
    if bad.any():
        band[bad] = np.median(band[~bad])
    return band


def lupton(bands: Sequence[np.ndarray], cfg: FitsConfig) -> np.ndarray:
    """Bands (blue, green, red; or one, drawn as grey) -> uint8 (H, W, 3) by astropy's make_lupton_rgb. With
    cfg.relative each band is sky-subtracted (its median) and all are divided by one common level (the
    cfg.level_percentile of their mean), so that stretch and minimum do not depend on the survey's units."""
    if len(bands) == 3:
        bands = [b * np.float32(s) for b, s in zip(bands, cfg.band_scales, strict=True)]
    if cfg.relative:
        bands = [b - np.median(b) for b in bands]
        level = float(np.percentile(sum(bands) / len(bands), cfg.level_percentile))
        if not level > 0:  # a flat or empty sky
            return np.zeros((*bands[0].shape, 3), dtype=np.uint8)
        bands = [b / np.float32(level) for b in bands]
    blue, green, red = bands if len(bands) == 3 else bands * 3
    make = _astropy().visualization.make_lupton_rgb
    with np.errstate(divide="ignore", invalid="ignore"):  # it divides by the intensity where that is 0 too
        return make(red, green, blue, minimum=cfg.minimum, stretch=cfg.stretch, Q=cfg.q)


def bands_rgb(planes: Sequence[np.ndarray], cfg: FitsConfig, names: Sequence[str] | None = None) -> np.ndarray:
    """One band (grey) or three (blue, green, red) -> uint8 (H, W, 3), non-finite pixels masked, top row first."""
    if len(planes) not in (1, 3):
        raise ImageError("unsupported_mode", f"{len(planes)} bands: expected one or three")
    if names is None:
        names = ["the image"] if len(planes) == 1 else [f"the {c} plane" for c in CHANNELS]
    rgb = lupton([_filled(p, n) for p, n in zip(planes, names, strict=True)], cfg)
    return np.ascontiguousarray(rgb[::-1])  # FITS row 0 is the bottom of the image


def read_fits(fh: BinaryIO, size: int, cfg: FitsConfig, *, max_pixels: int, max_aspect: int) -> tuple[np.ndarray, Hdu]:
    """A FITS file (one band or a 3-plane cube) -> (uint8 RGB (H, W, 3), the HDU it came from)."""
    hdu = find_hdu(fh, size, cfg.hdu)
    check_hdu(hdu, size, max_pixels=max_pixels, max_aspect=max_aspect)
    planes = read_planes(fh, size, hdu)
    return bands_rgb(list(planes), cfg), hdu


def read_band(fh: BinaryIO, size: int, cfg: FitsConfig, *, max_pixels: int, max_aspect: int) -> np.ndarray:
    """One band of a three-file set: float32 (H, W); a cube here is an error."""
    hdu = find_hdu(fh, size, cfg.hdu)
    check_hdu(hdu, size, max_pixels=max_pixels, max_aspect=max_aspect)
    if hdu.planes != 1:
        raise ImageError("unsupported_mode", f"HDU {hdu.describe()}: a cube; each of the three files holds one band")
    return read_planes(fh, size, hdu)[0]


# ------------------------------------------------------------------------------ three files, one galaxy


@dataclasses.dataclass(frozen=True)
class BandFiles:
    """One galaxy as three single-band FITS files, blue to red (e.g. g, r, i): `galmorph predict --bands`."""

    blue: str
    green: str
    red: str

    @property
    def paths(self) -> tuple[str, str, str]:
        return (self.blue, self.green, self.red)

    def __str__(self) -> str:
        """The set as one path, the way a shell writes it: cut/obj_{g,r,i}.fits."""
        prefix = os.path.commonprefix(list(self.paths))
        suffix = os.path.commonprefix([p[len(prefix) :][::-1] for p in self.paths])[::-1]
        middles = [p[len(prefix) : len(p) - len(suffix)] for p in self.paths]
        if not all(middles) or any("," in m for m in middles):
            return "+".join(self.paths)
        return f"{prefix}{{{','.join(middles)}}}{suffix}"


def expand_band_sets(triples: Sequence[Sequence[str]]) -> list[BandFiles]:
    """`--bands BLUE GREEN RED` arguments -> band sets. Each argument is a file, or a pattern with one `*`
    (all three then): the files of the three patterns are paired by the text the `*` stands for, so
    `cut/*_g.fits cut/*_r.fits cut/*_i.fits` gives one set per object. An object missing a band still gets
    its set (its row says which file is missing); a pattern that matches nothing is a UserError."""
    sets: list[BandFiles] = []
    for triple in triples:
        if len(triple) != 3:
            raise UserError(f"--bands {' '.join(triple)}: expected three files or patterns (blue, green, red)")
        stars = [p.count("*") for p in triple]
        if not any(stars):
            for p in triple:
                if not os.path.isfile(p):
                    raise UserError(f"--bands: {p}: no such file")
            sets.append(BandFiles(*triple))
            continue
        if stars != [1, 1, 1] or any(glob.has_magic(p.replace("*", "")) for p in triple):
            raise UserError(
                f"--bands {' '.join(triple)}: give three files, or three patterns with one * each "
                "(e.g. 'cut/*_g.fits' 'cut/*_r.fits' 'cut/*_i.fits')"
            )
        keyed: list[dict[str, str]] = []
        for pattern in triple:
            head, tail = pattern.split("*")
            found = {
                m[len(head) : len(m) - len(tail)]: m
                for m in glob.glob(pattern)
                if m.startswith(head) and m.endswith(tail) and os.path.isfile(m)
            }
            if not found:
                raise UserError(f"--bands: {pattern}: the pattern matches no files")
            keyed.append(found)
        for key in sorted(set().union(*keyed)):
            sets.append(BandFiles(*(k.get(key, p.replace("*", key)) for k, p in zip(keyed, triple, strict=True))))
    return list(dict.fromkeys(sets))
