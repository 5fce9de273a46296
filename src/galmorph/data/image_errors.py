"""Why an image cannot be used: the reasons and the one error the loader (images.py) and the FITS reader
(fits.py) raise, in a leaf module so both can raise it without importing each other."""

from __future__ import annotations

#: Why an image cannot be used. The first eight are select's reasons (data.verify.DROP_REASONS).
REASONS: tuple[str, ...] = (
    "missing",  # no file at that path
    "unreadable",  # a directory, permission denied, an I/O error
    "zero_bytes",
    "not_an_image",  # a PDF, an HTML error page, text, an archive... saved as .jpg
    "unsupported_format",  # an image format outside ACCEPTED_FORMATS and FITS (EPS, PSD, ICO, JPEG 2000...)
    "truncated",  # the data stops early: an interrupted download, or a zero-filled tail
    "corrupt",  # a decode error inside the data, or an accepted format's signature with an unreadable header
    "too_large",  # more pixels than the limit
    "elongated",  # longer than MAX_ASPECT times its width (or the other way round): not a cut-out
    "non_finite",  # a float image with NaN or infinite pixels
    "unsupported_mode",  # decodes, but its pixel mode cannot be converted to RGB
    "refused",  # a served model's input rule: a path where none is allowed, over the request limits
    "no_image",  # an empty row, or something that is not bytes or text
)


class ImageError(ValueError):
    """An image that cannot be used: `reason` (one of REASONS) and a message a person can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_dimensions(width: int, height: int, max_pixels: int, max_aspect: float) -> None:
    """The size rules every decoder applies from the header, before reading pixels: at most `max_pixels`
    (decompression bombs) and at most `max_aspect` times as long as wide (strips the framing would blow up)."""
    if width * height > max_pixels:
        raise ImageError(
            "too_large",
            f"{width}x{height} pixels ({width * height / 1e6:.1f} Mpx), over the {max_pixels / 1e6:g} Mpx limit: "
            "send a smaller cut-out",
        )
    if max(width, height) > max_aspect * min(width, height):
        raise ImageError(
            "elongated",
            f"{width}x{height} pixels: more than {max_aspect} times as long as it is wide; a cut-out is about square",
        )
