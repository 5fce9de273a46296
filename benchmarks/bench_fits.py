"""FITS decode and stretch per image, beside JPEG decode of an image of the same size, in the same run.

Each contender turns the bytes of one cut-out (in memory: what REST and the web page receive) into the 8-bit
RGB image the model sees, `--n` times per round; the table gives the median ms per image over `--repeats`
rounds (contenders take turns within a round) and the ratio to the baseline, the loader's own JPEG decode
(data.images.load_rgb of a quality-90 JPEG of the same size: what every SDSS cut-out costs today).

- FITS, 1 band: float32 primary HDU -> grey by make_lupton_rgb (header walk, checks, NaN mask, median sky).
- FITS, 3-band cube: float32 (3, H, W) -> Lupton colour.
- FITS, 3 files: three single-band files (g, r, i) from disk -> Lupton colour (`predict --bands`).
- FITS, 1 band RICE_1: the same image as int32, tile-compressed the way fpack does it.
- astropy alone: fits.open(...)[0].data + make_lupton_rgb of the cube, no checks or masking (the floor).

    .venv/bin/python benchmarks/bench_fits.py              # --sizes 424 1024 --n 30 --repeats 5
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.visualization import make_lupton_rgb
from PIL import Image

from galmorph.config import FitsConfig
from galmorph.data.fits import BandFiles
from galmorph.data.images import load_rgb


def galaxy(size: int, bands: int, seed: int = 0) -> np.ndarray:
    """A 2-D Gaussian galaxy, brighter in redder bands, on a noisy sky: float32 (bands, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    light = np.exp(-(xx**2 + (yy / 0.7) ** 2) / (2 * (size / 12) ** 2))
    return np.stack([light * (2 + k) + rng.normal(0.5, 0.05, light.shape) for k in range(bands)]).astype(np.float32)


def fits_bytes(hdu: fits.hdu.base._BaseHDU, primary: bool = True) -> bytes:
    buf = io.BytesIO()
    fits.HDUList([hdu] if primary else [fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def contenders(size: int, folder: Path) -> dict[str, Callable[[], object]]:
    cube = galaxy(size, 3)
    jpeg = io.BytesIO()
    Image.fromarray(np.asarray(load_rgb(fits_bytes(fits.PrimaryHDU(cube))))).save(jpeg, "JPEG", quality=90)
    one = fits_bytes(fits.PrimaryHDU(cube[1]))
    cube_bytes = fits_bytes(fits.PrimaryHDU(cube))
    rice = fits_bytes(fits.CompImageHDU((cube[1] * 1000).astype(np.int32), compression_type="RICE_1"), primary=False)
    paths = []
    for name, plane in zip("gri", cube, strict=True):
        path = folder / f"obj_{name}_{size}.fits"
        path.write_bytes(fits_bytes(fits.PrimaryHDU(plane)))
        paths.append(str(path))
    files = BandFiles(*paths)
    jpeg_bytes = jpeg.getvalue()
    cfg = FitsConfig()

    def astropy_alone() -> object:
        with fits.open(io.BytesIO(cube_bytes), memmap=False) as hdul:
            b, g, r = hdul[0].data
            return make_lupton_rgb(r, g, b, minimum=0.0, stretch=0.2, Q=8.0)

    return {
        "baseline: JPEG, the loader (load_rgb)": lambda: load_rgb(jpeg_bytes),
        "FITS, 1 band (grey)": lambda: load_rgb(one, fits=cfg),
        "FITS, 3-band cube (Lupton colour)": lambda: load_rgb(cube_bytes, fits=cfg),
        "FITS, 3 files g r i from disk": lambda: load_rgb(files, fits=cfg),
        "FITS, 1 band, RICE_1 tiles": lambda: load_rgb(rice, fits=cfg),
        "astropy alone: open + make_lupton_rgb, no checks": astropy_alone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[424, 1024])
    parser.add_argument("--n", type=int, default=30, help="decodes per contender per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (the median is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fits-") as tmp:
        for size in args.sizes:
            runs = contenders(size, Path(tmp))
            for run in runs.values():  # warm-up: imports (astropy), first allocations
                run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    for _ in range(args.n):
                        run()
                    times[name].append((time.perf_counter() - start) / args.n * 1000)
            base = statistics.median(times[next(iter(runs))])
            print(f"\n{size}x{size}, {args.n} decodes x {args.repeats} rounds (median ms per image)")
            print(f"| {size}x{size} | ms per image | x JPEG's time |\n| --- | ---: | ---: |")
            for name, values in times.items():
                ms = statistics.median(values)
                print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
