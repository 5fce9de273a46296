"""FITS in: one band (grey), a 3-band cube or three files (Lupton colour), the HDU found or chosen, NaN
masked, hostile headers refused before any data is read; and the same numbers from predict, evaluate-folder,
the pyfunc (REST) and the web page (tests/test_web.py) as from the PNG the loader makes of the FITS file.
Every FITS file here is written by the test with astropy."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.visualization import make_lupton_rgb

from galmorph import cli
from galmorph.config import FitsConfig, from_dict, load_params
from galmorph.data import fits as fitsmod
from galmorph.data.fits import BandFiles, expand_band_sets
from galmorph.data.images import ImageError, decode_image, load_rgb, read_image
from galmorph.errors import UserError
from galmorph.models import resnet
from tests.conftest import REPO
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, tiny_network

# ------------------------------------------------------------------------------------------ fixtures


def galaxy_bands(n_bands: int, size: int = 64, seed: int = 0, *, spiral: bool = False) -> np.ndarray:
    """A galaxy-like source: an elliptical 2-D Gaussian (plus two arms when `spiral`), brighter in redder
    bands, on a sky of 0.5 with Gaussian noise. (size, size) for one band, (n, size, size) for more."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r2 = xx**2 + (yy / 0.7) ** 2
    light = np.exp(-r2 / (2 * (size / 12) ** 2))
    if spiral:
        theta, r = np.arctan2(yy, xx), np.sqrt(r2) + 1
        light += 0.4 * np.exp(-r2 / (2 * (size / 4) ** 2)) * (1 + np.cos(2 * theta - 4 * np.log(r))) / 2
    bands = [light * (2.0 + k) + rng.normal(0.5, 0.05, light.shape) for k in range(n_bands)]
    return np.asarray(bands[0] if n_bands == 1 else bands, dtype=np.float32)


def fits_bytes(*images: np.ndarray | None, names: tuple[str, ...] = (), compress: str | None = None) -> bytes:
    """A FITS file: images[0] in the primary HDU (None: a header only), the others as image extensions
    named by `names` (tile-compressed with `compress`)."""
    hdus: list = [fits.PrimaryHDU(images[0])]
    for image, name in zip(images[1:], names, strict=True):
        if compress:
            hdus.append(fits.CompImageHDU(image, name=name, compression_type=compress))
        else:
            hdus.append(fits.ImageHDU(image, name=name))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def fits_header_only(width: int, height: int, planes: int = 1, bitpix: int = -32) -> bytes:
    """A primary header declaring width x height (x planes) pixels, and no data at all."""
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = bitpix
    header["NAXIS"] = 2 if planes == 1 else 3
    header["NAXIS1"] = width
    header["NAXIS2"] = height
    if planes != 1:
        header["NAXIS3"] = planes
    return header.tostring().encode("ascii")


def _with_card(data: bytes, key: str, value: str) -> bytes:
    """`data` with the value of the first card `key` replaced by the text `value` (a hand-broken header)."""
    at = data.index(key.ljust(8).encode() + b"= ")
    card = (key.ljust(8) + "= " + value).ljust(80).encode()
    return data[:at] + card + data[at + 80 :]


def _rgb(data: bytes | BandFiles, **cfg) -> np.ndarray:
    return np.asarray(load_rgb(data, fits=FitsConfig(**cfg) if cfg else None))


# ------------------------------------------------------------------------------------------ the stretch


def test_one_band_is_grey_with_a_dark_sky_a_bright_core_and_the_top_row_first():
    band = galaxy_bands(1, 96)
    band[1, 2] = 50.0  # near the bottom-left corner as ds9 shows it (FITS row 0 is the bottom)
    rgb = _rgb(fits_bytes(band))
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.median(rgb[:16, 60:]) < 20  # the sky: dark, as in the SDSS JPEGs (median 7 of 0-255)
    assert 120 < rgb[48, 48, 0] < 255  # the core: bright, not saturated
    assert rgb[96 - 1 - 1, 2, 0] == rgb.max() and rgb[1, 2, 0] < 60


def test_three_bands_are_lupton_colour_from_a_cube_or_three_files_alike(tmp_path):
    cube = galaxy_bands(3, 80, seed=1)
    from_cube = _rgb(fits_bytes(cube))
    for name, plane in zip("gri", cube, strict=True):
        (tmp_path / f"obj_{name}.fits").write_bytes(fits_bytes(plane))
    files = BandFiles(*(str(tmp_path / f"obj_{b}.fits") for b in "gri"))
    assert str(files) == f"{tmp_path}/obj_{{g,r,i}}.fits"
    assert np.array_equal(_rgb(files), from_cube)
    # what astropy's make_lupton_rgb makes of the sky-subtracted bands over their common level
    b, g, r = (x - np.median(x) for x in cube)
    level = np.percentile((b + g + r) / 3, 99.5)
    expected = make_lupton_rgb(r / level, g / level, b / level, minimum=0.0, stretch=0.2, Q=8.0)[::-1]
    assert np.abs(from_cube.astype(int) - expected).max() <= 1
    centre = from_cube[40, 40].astype(int)
    assert centre[0] > centre[1] > centre[2]  # brighter in redder bands: i -> red, g -> blue


def test_the_stretch_follows_the_config():
    data = fits_bytes(galaxy_bands(3, 48))
    base = _rgb(data)
    assert not np.array_equal(_rgb(data, stretch=1.0), base)
    assert not np.array_equal(_rgb(data, q=2.0), base)
    bluer = _rgb(data, band_scales=[3.0, 1.0, 1.0])
    assert bluer[24, 24, 2] > base[24, 24, 2] and bluer[24, 24, 0] < base[24, 24, 0]
    raw = _rgb(data, relative=False, stretch=5.0)  # the data's own units: sky 0.5 and core ~3 on a stretch of 5
    assert raw[0, 0, 0] > 0 and raw[24, 24, 0] < base[24, 24, 0]
    with pytest.raises(UserError, match=r"fits.q: expected a number >= 0"):
        FitsConfig(q=-1.0)
    with pytest.raises(UserError, match="fits.band_scales: expected three numbers > 0"):
        FitsConfig(band_scales=[1.0, 1.0])
    with pytest.raises(UserError, match="--hdu '-2': expected an HDU number"):
        FitsConfig().with_hdu("-2")
    assert FitsConfig().with_hdu("2").hdu == 2 and FitsConfig().with_hdu("SCI").hdu == "SCI"


def test_params_yaml_fits_section_is_the_defaults_the_served_model_uses():
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())["fits"]
    assert from_dict(FitsConfig, raw, "fits") == FitsConfig()
    from galmorph.tracking.logged_model import fits_config

    assert fits_config(None) == FitsConfig() and fits_config({"hdu": 1}).hdu == 1
    with pytest.raises(UserError, match="unknown key"):
        fits_config({"Q": 3})


def test_nan_and_infinite_pixels_are_masked_never_propagated():
    band = galaxy_bands(1, 64)
    holed = band.copy()
    holed[10:14, 20:30] = np.nan
    holed[50, 5] = np.inf
    holed[51, 5] = -np.inf
    rgb = _rgb(fits_bytes(holed))
    filled = band.copy()
    bad = ~np.isfinite(holed)
    filled[bad] = np.median(holed[~bad])
    assert np.array_equal(rgb, _rgb(fits_bytes(filled)))
    cube = galaxy_bands(3, 32)
    cube[1, :3, :3] = np.nan
    assert _rgb(fits_bytes(cube)).shape == (32, 32, 3)
    with pytest.raises(ImageError, match="every pixel of the image is NaN or infinite") as info:
        load_rgb(fits_bytes(np.full((16, 16), np.nan, dtype=np.float32)))
    assert info.value.reason == "non_finite"
    cube[0] = np.nan
    with pytest.raises(ImageError, match="every pixel of the blue plane is NaN"):
        load_rgb(fits_bytes(cube))


# ------------------------------------------------------------------------------------------ which HDU


def test_the_first_image_hdu_is_found_and_hdu_chooses_another():
    sci, other = galaxy_bands(1, 40, seed=2), galaxy_bands(1, 40, seed=3, spiral=True)
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))], name="CAT")
    buf = io.BytesIO()
    fits.HDUList(
        [fits.PrimaryHDU(), table, fits.ImageHDU(sci, name="SCI"), fits.ImageHDU(other, name="OTHER")]
    ).writeto(buf)
    data = buf.getvalue()
    alone = _rgb(fits_bytes(sci))
    assert np.array_equal(_rgb(data), alone)  # the empty primary and the table are passed over
    assert np.array_equal(_rgb(data, hdu=2), alone) and np.array_equal(_rgb(data, hdu="sci"), alone)
    assert np.array_equal(_rgb(data, hdu="OTHER"), _rgb(fits_bytes(other)))
    cases = {
        1: ("unsupported_mode", "HDU 1 CAT: table, not an image"),
        0: ("unsupported_mode", "HDU 0 PRIMARY: no image data: expected an image of one band or three"),
        7: ("unsupported_mode", "no HDU 7 in this FITS file (0 PRIMARY: no image data, 1 CAT: table, 2 SCI: 40x40"),
        "WHT": ("unsupported_mode", "no HDU 'WHT' in this FITS file"),
    }
    for hdu, (reason, message) in cases.items():
        with pytest.raises(ImageError) as info:
            load_rgb(data, fits=FitsConfig(hdu=hdu))
        assert info.value.reason == reason and str(info.value).startswith(message), str(info.value)
    with pytest.raises(ImageError, match=r"no 2-D image or 3-band cube in it \(0 PRIMARY: 40x40x5 image\)"):
        load_rgb(fits_bytes(np.zeros((5, 40, 40), dtype=np.float32)))
    degenerate = _rgb(fits_bytes(sci[None, None]))  # NAXIS = 4 with NAXIS3 = NAXIS4 = 1, as radio images come
    assert np.array_equal(degenerate, alone)


def test_tile_compressed_images_decode_unless_their_codec_is_unsafe():
    image = (galaxy_bands(1, 48) * 1000).astype(np.int32)  # integers: RICE is lossless
    plain = _rgb(fits_bytes(None, image, names=("SCI",)))
    for codec in ("RICE_1", "PLIO_1"):
        small = image - image.min()  # PLIO: non-negative integers
        want = plain if codec != "PLIO_1" else _rgb(fits_bytes(None, small, names=("SCI",)))
        got = _rgb(fits_bytes(None, small if codec == "PLIO_1" else image, names=("SCI",), compress=codec))
        assert np.array_equal(got, want), codec
    for codec in ("GZIP_1", "GZIP_2", "HCOMPRESS_1"):  # unbounded inflation; a heap-corrupting decoder
        with pytest.raises(ImageError, match=f"tile-compressed with {codec}; accepted: RICE_1") as info:
            load_rgb(fits_bytes(None, image, names=("SCI",), compress=codec))
        assert info.value.reason == "unsupported_format"
    rice = fits_bytes(None, image, names=("SCI",), compress="RICE_1")
    with pytest.raises(ImageError, match="declares tiles") as info:
        load_rgb(_with_card(rice, "ZTILE1", "100000"))
    assert info.value.reason == "corrupt"


# ------------------------------------------------------------------------------------------ hostile files


class _Reads(io.BytesIO):
    """A file that remembers how far into it anything read."""

    furthest = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return data


def test_a_huge_image_is_refused_from_its_header_before_any_data_is_read(monkeypatch):
    monkeypatch.setattr(fits, "open", lambda *a, **k: pytest.fail("astropy was asked to read the data"))
    for width, height, planes in ((100_000, 100_000, 1), (6000, 6000, 1), (5100, 5000, 3), (2**31 - 1, 2, 1)):
        header = fits_header_only(width, height, planes)
        declared = len(header) + width * height * planes * 4  # as if the file held all of its data
        fh = _Reads(header)
        with pytest.raises(ImageError) as info:
            read_image(fh, declared, max_pixels=25_000_000)
        assert info.value.reason in ("too_large", "elongated"), str(info.value)
        assert fh.furthest <= len(header)
    with pytest.raises(ImageError, match=r"6000x6000 pixels \(36.0 Mpx\), over the 25 Mpx limit"):
        load_rgb(fits_header_only(6000, 6000))
    with pytest.raises(ImageError, match="over the 0.001 Mpx limit"):
        load_rgb(fits_bytes(galaxy_bands(1, 40)), max_pixels=1000)


def test_broken_and_absurd_headers_are_refused_with_a_reason():
    good = fits_bytes(galaxy_bands(1, 32))
    cases = {
        "not text": (b"SIMPLE  =                    T" + bytes(range(256)) * 12, "corrupt", "not FITS header text"),
        "no END": (b"SIMPLE  =                    T".ljust(2880 * 101, b" "), "corrupt", "no END card"),
        "cut in its header": (good[:1000], "truncated", "ends inside a FITS header"),
        "cut in its data": (good[: 2880 + 100], "truncated", "the data of HDU 0 stops early"),
        "BITPIX 12": (_with_card(good, "BITPIX", "12"), "corrupt", "BITPIX = 12: expected 8, 16, 32, 64, -32 or -64"),
        "BITPIX text": (_with_card(good, "BITPIX", "'abc'"), "corrupt", "an invalid BITPIX"),
        "NAXIS 1000": (_with_card(good, "NAXIS", "1000"), "corrupt", "an invalid NAXIS (1000)"),
        "NAXIS1 < 0": (_with_card(good, "NAXIS1", "-5"), "corrupt", "an invalid NAXIS1 (-5)"),
        "NAXIS1 float": (_with_card(good, "NAXIS1", "3.5"), "corrupt", "an invalid NAXIS1 (3.5)"),
        "a strip": (fits_bytes(np.zeros((2, 100), dtype=np.float32)), "elongated", "100x2 pixels"),
    }
    for name, (data, reason, message) in cases.items():
        with pytest.raises(ImageError) as info:
            load_rgb(data)
        assert info.value.reason == reason and message in str(info.value), (name, str(info.value))
    # valid header cards over data that is noise: decodes (NaN/inf masked) or says why, never a traceback
    header_end = good.index(b"END     ") // 2880 * 2880 + 2880
    noise = good[:header_end] + np.random.default_rng(0).bytes(len(good) - header_end)
    try:
        assert load_rgb(noise).size == (32, 32)
    except ImageError as exc:
        assert exc.reason == "non_finite"


def test_served_inputs_read_fits_as_bytes_base64_and_under_the_image_root(tmp_path):
    from galmorph.data.images import InputLimits

    data = fits_bytes(None, galaxy_bands(1, 40), names=("SCI",))
    want = _rgb(data)
    (tmp_path / "cut.fits").write_bytes(data)
    limits = InputLimits(image_root=str(tmp_path))
    b64 = base64.b64encode(data).decode()
    for item in (data, b64, "data:image/fits;base64," + b64, "file:cut.fits", tmp_path / "cut.fits"):
        assert np.array_equal(np.asarray(decode_image(item, limits)), want)
    with pytest.raises(ImageError, match="HDU 0 PRIMARY: no image data"):
        decode_image(b64, limits, FitsConfig(hdu=0))


# ------------------------------------------------------------------------------------------ predict


def test_band_sets_pair_files_by_what_the_star_stands_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cut").mkdir()
    for obj, bands in (("a", "gri"), ("b", "gr"), ("c", "gri")):
        for band in bands:
            (tmp_path / "cut" / f"{obj}_{band}.fits").write_bytes(b"x")
    sets = expand_band_sets([["cut/*_g.fits", "cut/*_r.fits", "cut/*_i.fits"]])
    assert [str(s) for s in sets] == ["cut/a_{g,r,i}.fits", "cut/b_{g,r,i}.fits", "cut/c_{g,r,i}.fits"]
    assert sets[1].red == "cut/b_i.fits" and not Path(sets[1].red).exists()  # its row will say so
    assert expand_band_sets([["cut/a_g.fits", "cut/a_r.fits", "cut/a_i.fits"]]) == sets[:1]
    for triple, message in (
        (["cut/*_g.fits", "cut/a_r.fits", "cut/*_i.fits"], "three patterns with one * each"),
        (["cut/*_*g.fits", "cut/*_r.fits", "cut/*_i.fits"], "three patterns with one * each"),
        (["cut/*_z.fits", "cut/*_r.fits", "cut/*_i.fits"], "cut/*_z.fits: the pattern matches no files"),
        (["cut/a_g.fits", "cut/a_r.fits", "cut/nope.fits"], "cut/nope.fits: no such file"),
    ):
        with pytest.raises(UserError, match=message.replace("*", r"\*")):
            expand_band_sets([triple])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """The tiny network the serving tests use, as a models/model.pt."""
    path = tmp_path_factory.mktemp("fits-model") / "model.pt"
    resnet.save_model(path, tiny_network(), TINY_MODEL, TINY_PREPROCESS, temperature=1.5)
    return path


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    """FITS files of every form, and beside each the PNG of what the loader makes of it."""
    root = tmp_path_factory.mktemp("fits-survey")
    decoy = np.zeros((64, 64), dtype=np.float32) + np.eye(64, dtype=np.float32)
    files = {
        "one.fits": fits_bytes(galaxy_bands(1, 64, seed=4)),
        "cube.fits": fits_bytes(galaxy_bands(3, 72, seed=5, spiral=True)),
        "ext.fits": fits_bytes(decoy, galaxy_bands(1, 64, seed=6), names=("SCI",)),
        "nan.fits": fits_bytes(np.where(np.eye(60) > 0, np.nan, galaxy_bands(1, 60, seed=7)).astype(np.float32)),
        "empty.fits": fits_bytes(np.full((8, 8), np.nan, dtype=np.float32)),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    for obj, seed in (("a", 8), ("b", 9)):
        for band, plane in zip("gri", galaxy_bands(3, 64, seed=seed), strict=True):
            (root / "bands" / obj).parent.mkdir(exist_ok=True)
            (root / "bands" / f"{obj}_{band}.fits").write_bytes(fits_bytes(plane))
    (root / "bands" / "b_i.fits").unlink()  # b has no i band
    return root


def _png_of(src: Path | BandFiles, dest: Path, **cfg) -> Path:
    load_rgb(src, fits=FitsConfig(**cfg)).save(dest)
    return dest


def run_predict(*argv: str) -> int:
    return cli.main(["--params", str(REPO / "params.yaml"), "predict", *argv])


def test_predict_scores_fits_as_the_png_it_decodes_to(model_file, survey, tmp_path, capsys):
    out = tmp_path / "out.csv"
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    argv = [str(survey / "*.fits"), "--bands", *(str(survey / "bands" / f"*_{b}.fits") for b in "gri")]
    assert run_predict(*argv, "--model", str(model_file), "--out", str(out), "--workers", "0") == 0
    got = pd.read_csv(out, keep_default_na=False, dtype={"p_spiral": str}).set_index("path")
    bands_a = BandFiles(*(str(survey / "bands" / f"a_{b}.fits") for b in "gri"))
    assert sorted(got.index) == sorted(
        [*(str(survey / f) for f in ("cube.fits", "empty.fits", "ext.fits", "nan.fits", "one.fits")), str(bands_a)]
        + [str(survey / "bands" / "b_{g,r,i}.fits")]
    )
    assert "every pixel of the image is NaN or infinite" in got.loc[str(survey / "empty.fits"), "error"]
    assert got.loc[str(survey / "bands" / "b_{g,r,i}.fits"), "error"].startswith("no red-band file ")
    scored = [p for p in got.index if not got.loc[p, "error"]]
    assert len(scored) == 5
    sources = {p: (bands_a if p == str(bands_a) else Path(p)) for p in scored}
    as_png = [str(_png_of(src, pngs / f"{i}.png")) for i, src in enumerate(sources.values())]
    assert run_predict(*as_png, "--model", str(model_file), "--out", str(tmp_path / "png.csv")) == 0
    want = pd.read_csv(tmp_path / "png.csv", keep_default_na=False)
    np.testing.assert_allclose(got.loc[scored, "p_spiral"].astype(float), want["p_spiral"], atol=1e-6)
    assert list(got.loc[scored, "label"]) == list(want["label"])
    err = capsys.readouterr().err
    assert "2 unreadable" in err and "empty.fits" in err

    # --hdu: ext.fits holds a decoy (a diagonal line) in its primary HDU, which comes first, and a galaxy in SCI
    capsys.readouterr()
    assert run_predict(str(survey / "ext.fits"), "--hdu", "SCI", "--model", str(model_file), "--workers", "0") == 0
    sci = pd.read_csv(io.StringIO(capsys.readouterr().out))["p_spiral"].item()
    assert run_predict(str(_png_of(survey / "ext.fits", pngs / "sci.png", hdu="SCI")), "--model", str(model_file)) == 0
    assert sci == pytest.approx(pd.read_csv(io.StringIO(capsys.readouterr().out))["p_spiral"].item(), abs=1e-6)
    assert sci != pytest.approx(float(got.loc[str(survey / "ext.fits"), "p_spiral"]), abs=1e-6)
    assert run_predict(str(survey / "one.fits"), "--hdu", "SCI", "--model", str(model_file)) == 1
    assert "no HDU 'SCI' in this FITS file (0 PRIMARY: 64x64 image)" in capsys.readouterr().err
    assert run_predict(str(survey / "one.fits"), "--hdu", "-1", "--model", str(model_file)) == 1
    assert "--hdu '-1': expected an HDU number" in capsys.readouterr().err


def test_predict_reads_fits_from_a_folder(model_file, survey, capsys):
    assert run_predict(str(survey / "bands"), "--model", str(model_file), "--workers", "0") == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert len(df) == 5 and (df["error"] == "").all()  # each band file alone, as grey


def test_evaluate_folder_reads_fits_with_hdu(model_file, tmp_path, capsys):
    """The same KPIs and probabilities as for a folder of the PNGs the loader makes of the SCI HDUs; without
    --hdu the decoy in the primary HDU would be scored instead."""
    decoy = np.eye(48, dtype=np.float32)
    for cls, spiral in (("spirals", True), ("ellipticals", False)):
        for kind in ("fits", "png"):
            (tmp_path / kind / cls).mkdir(parents=True)
        for i in range(3):
            data = fits_bytes(decoy, galaxy_bands(3, 48, seed=10 + i + 5 * spiral, spiral=spiral), names=("SCI",))
            (tmp_path / "fits" / cls / f"g{i}.fits").write_bytes(data)
            load_rgb(data, fits=FitsConfig(hdu="SCI")).save(tmp_path / "png" / cls / f"g{i}.png")
    (tmp_path / "fits" / "spirals" / "broken.fits").write_bytes(fits_bytes(decoy)[:3000])
    argv = ["--params", str(REPO / "params.yaml"), "-S", "evaluate.bootstrap=20", "-S", "evaluate.saliency=false"]
    results = {}
    for kind in ("fits", "png"):
        out = tmp_path / f"report-{kind}"
        args = [*argv, "evaluate-folder", str(tmp_path / kind), "--model", str(model_file), "--no-tta"]
        assert cli.main([*args, "--hdu", "SCI", "--out", str(out)]) == 0, capsys.readouterr().err
        metrics = json.loads((out / "metrics.json").read_text())
        preds = pd.read_csv(out / "predictions.csv")
        results[kind] = (
            metrics,
            preds.assign(stem=preds["image_path"].map(lambda p: f"{Path(p).parent.name}/{Path(p).stem}")).set_index(
                "stem"
            ),
        )
    (fits_metrics, fits_preds), (png_metrics, png_preds) = results["fits"], results["png"]
    assert fits_metrics["n"] == 6 and fits_metrics["n_skipped"] == 1 and png_metrics["n_skipped"] == 0
    assert fits_metrics["accuracy"] == png_metrics["accuracy"]
    np.testing.assert_allclose(fits_preds["p_spiral"], png_preds.loc[fits_preds.index, "p_spiral"], atol=1e-6)
    assert (tmp_path / "report-fits" / "report.html").read_text().count("data:image/png;base64,") >= 3


# ------------------------------------------------------------------------------------------ REST


def test_the_pyfunc_takes_base64_fits_and_its_model_config_chooses_the_hdu(tiny_model, tmp_path):
    import mlflow

    from galmorph.tracking.logged_model import PIP_REQUIREMENTS

    assert "astropy" in PIP_REQUIREMENTS
    data = fits_bytes(galaxy_bands(1, 64, seed=1), galaxy_bands(3, 64, seed=2, spiral=True), names=("SCI",))
    png = io.BytesIO()
    load_rgb(data).save(png, "PNG")
    png_sci = io.BytesIO()
    load_rgb(data, fits=FitsConfig(hdu="SCI")).save(png_sci, "PNG")
    rows = [base64.b64encode(b).decode() for b in (data, png.getvalue(), png_sci.getvalue())]
    rows.append(base64.b64encode(fits_header_only(9000, 9000)).decode())
    model = mlflow.pyfunc.load_model(tiny_model.source)
    assert model.model_config["fits"] is None  # logged unset: FitsConfig()'s defaults
    out = model.predict(pd.DataFrame({"image": rows}))
    assert out.loc[0, "p_spiral"] == pytest.approx(out.loc[1, "p_spiral"], abs=1e-6)
    assert out.loc[3, "label"] == "error: 9000x9000 pixels (81.0 Mpx), over the 25 Mpx limit: send a smaller cut-out"
    sci = mlflow.pyfunc.load_model(tiny_model.source, model_config={"fits": {"hdu": "SCI"}})
    got = sci.predict(pd.DataFrame({"image": rows[:1]}))
    assert got.loc[0, "p_spiral"] == pytest.approx(out.loc[2, "p_spiral"], abs=1e-6)
    assert got.loc[0, "p_spiral"] != pytest.approx(out.loc[0, "p_spiral"], abs=1e-9)


def test_fits_support_needs_no_astropy_import_until_a_fits_file_comes(monkeypatch):
    """Importing the loader does not import astropy (it costs ~0.4 s): a JPEG-only server never pays it."""
    import subprocess
    import sys

    code = "import sys, galmorph.data.images; print('astropy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert fitsmod.MAGIC == b"SIMPLE  ="


def test_load_params_accepts_the_fits_section():
    assert load_params(REPO / "params.yaml", required=("fits",)).fits == FitsConfig()
