"""`galmorph predict --catalogue`: catalogues in (CSV, Parquet, FITS, VOTable; paths or RA/Dec in degrees or
sexagesimal, a size column) and out (every input column kept, the outputs added, provenance in the file's
metadata), cut-outs fetched from the local fake services, per-row errors, one-line mistakes, and the README's
20-row example run end to end."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits, votable
from astropy.table import Table

from galmorph import cli
from galmorph.config import CutoutServiceConfig, load_params
from galmorph.data.catalogue import find_columns
from galmorph.data.cutouts import Position, cache_path, service_of
from galmorph.serving import predict
from galmorph.serving.catalogue import score_catalogue
from galmorph.serving.resolve import load_model, resolve_model
from tests.conftest import REPO
from tests.fake_cutouts import EXAMPLE_COLUMNS, FakeCutoutService
from tests.serving_utils import champion_store, galaxy_image

OUTPUTS = ["p_spiral", "p_elliptical", "label", "error"]
OBJID = 587722981736120347  # 18 digits: a float64 would round it


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory, _mlflow_empty_db):
    with champion_store(tmp_path_factory.mktemp("catalogue"), tiny_model, _mlflow_empty_db) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def classifier(store):
    return load_model(resolve_model(None, store), store)


@pytest.fixture
def fake():
    service = FakeCutoutService().start()
    yield service
    service.stop()


def overrides(fake: FakeCutoutService, cache: Path) -> list[str]:
    """-S settings that point the sdss service at the fake one, with 64 px cut-outs and no rate limit."""
    sets = [
        "mlflow.tracking_uri=null",
        f"cutouts.services.sdss.url={fake.url('sdss')}",
        "cutouts.services.sdss.size=64",
        f"cutouts.cache_dir={cache}",
        "cutouts.rate_per_s=null",
        "cutouts.backoff_s=0.01",
    ]
    return [arg for s in sets for arg in ("-S", s)]


def run_cli(fake: FakeCutoutService, tmp_path: Path, *argv: str) -> int:
    return cli.main(["--params", str(REPO / "params.yaml"), *overrides(fake, tmp_path / "cache"), "predict", *argv])


def targets(n: int = 6, dec0: float = 2.0) -> Table:
    return Table(
        {
            "objid": np.arange(OBJID, OBJID + n, dtype=np.int64),
            "ra": 150.0 + 0.25 * np.arange(n),
            "dec": dec0 + 0.5 * np.arange(n),
            "z": np.linspace(0.02, 0.1, n),
            "name": [f"gal-{i}" for i in range(n)],
        }
    )


def write(table: Table, path: Path) -> Path:
    fmt = {".csv": "ascii.csv", ".vot": "votable", ".fits": "fits", ".parquet": "parquet"}[path.suffix]
    table.write(path, format=fmt)
    return path


def texts(column) -> list[str]:
    """A text column as str, blanks ("" read back from CSV as masked) as ""."""
    filled = column.filled("") if hasattr(column, "filled") else column
    return [str(v) for v in filled]


def metadata(path: Path) -> dict[str, str]:
    """The provenance a written catalogue carries, by its format's own means."""
    if path.suffix == ".fits":
        header = fits.getheader(path, 1)
        return {k: str(header[k]) for k in ("GMMODEL", "GMURI", "GMCUTSVC", "GMCUTURL", "GMTHRESH")}
    if path.suffix == ".vot":
        infos = votable.parse(str(path)).resources[0].infos
        return {info.name: info.value for info in infos}
    if path.suffix in (".parquet", ".ecsv"):
        return {k: str(v) for k, v in Table.read(path).meta.items()}
    return {}


@pytest.mark.parametrize(
    ("src", "out"),
    [("csv", "fits"), ("parquet", "vot"), ("fits", "parquet"), ("vot", "csv"), ("csv", "ecsv")],
)
def test_positions_in_any_format_come_back_with_every_column_and_provenance(store, fake, tmp_path, capsys, src, out):
    table = targets()
    table["dec"][4] = -45.0  # off the fake footprint
    source = write(table, tmp_path / f"targets.{src}")
    result = tmp_path / f"scored.{out}"
    assert run_cli(fake, tmp_path, "--catalogue", str(source), "--out", str(result), "--workers", "0") == 0
    back = Table.read(result, format="ascii.csv" if out == "csv" else None)
    assert back.colnames == [*table.colnames, *OUTPUTS]
    assert list(back["objid"]) == list(table["objid"]) and back["objid"].dtype.kind == "i"
    assert list(back["name"]) == list(table["name"])
    errors = texts(back["error"])
    assert errors[4].startswith("outside the survey footprint or blank")
    assert [bool(e) for e in errors] == [False, False, False, False, True, False]
    p = np.asarray(back["p_spiral"], dtype=float)
    assert np.isfinite(p[[0, 1, 2, 3, 5]]).all() and np.isnan(p[4])
    np.testing.assert_allclose(p[[0, 1, 2, 3, 5]] + np.asarray(back["p_elliptical"])[[0, 1, 2, 3, 5]], 1.0, atol=1e-6)
    assert len(fake.requests) == 6
    meta = metadata(result)
    if out == "fits":
        assert meta["GMMODEL"] == "galmorph v1 (@champion)" and meta["GMCUTSVC"] == "sdss"
        assert meta["GMCUTURL"] == fake.url("sdss") and float(meta["GMTHRESH"]) == 0.7
    elif out == "csv":
        assert meta == {}  # plain CSV has no place for it
    else:
        assert meta["galmorph_model"] == "galmorph v1 (@champion)" and meta["galmorph_cutout_service"] == "sdss"
        assert meta["galmorph_model_uri"] == "models:/galmorph@champion"
    err = capsys.readouterr().err
    assert "cut-outs: 6 from sdss (6 requested" in err and "5 rows" not in err
    assert f"row 5 (objid {OBJID + 4}): outside the survey footprint or blank" in err
    assert "1 failed" in err


def test_rows_score_the_same_as_the_image_files(classifier, fake, tmp_path):
    """One inference path: a row naming a file, and a row whose cut-out was fetched, give what `predict`
    gives for those files."""
    cfg = load_params(REPO / "params.yaml", required=("cutouts",)).cutouts
    import dataclasses

    cfg = dataclasses.replace(
        cfg,
        services={"sdss": CutoutServiceConfig(fake.url("sdss"), 0.396, 64)},
        cache_dir=str(tmp_path / "cache"),
        rate_per_s=None,
    )
    (tmp_path / "img").mkdir()
    for i in range(3):
        galaxy_image(i, 80).save(tmp_path / "img" / f"g{i}.png")
    table = Table(
        {
            "image_path": ["img/g0.png", "", "img/g1.png", str(tmp_path / "img" / "g2.png")],
            "ra": [0.0, 150.5, 0.0, 0.0],
            "dec": [0.0, 3.0, 0.0, 0.0],
        }
    )
    source = str(tmp_path / "mixed.csv")
    columns = find_columns(table, source)
    assert (columns.path, columns.ra, columns.dec) == ("image_path", "ra", "dec")
    result = score_catalogue(classifier, table, columns, source, cutouts=cfg, workers=0, progress=False)
    assert result.cutouts == 1 and result.cutouts_requested == 1 and len(fake.requests) == 1
    cut = cache_path(cfg.cache_dir, service_of(cfg), Position(150.5, 3.0))
    files = [tmp_path / "img" / "g0.png", cut, tmp_path / "img" / "g1.png", tmp_path / "img" / "g2.png"]
    expected = predict.score_files(classifier, [str(f) for f in files], workers=0, progress=False)
    np.testing.assert_allclose(np.asarray(result.table["p_spiral"]), expected["p_spiral"].to_numpy(), atol=1e-6)
    assert list(result.table["label"]) == list(expected["label"]) and result.errors == [""] * 4


def test_sexagesimal_and_degrees_name_the_same_cutouts(store, fake, tmp_path):
    degrees = Table({"RA": [150.0, 150.15, 150.3], "DEC": [2.5, -1.25, 10.0]})
    text = Table({"ra": ["10:00:00", "10h00m36s", "10 01 12.0"], "dec": ["+02:30:00", "-01d15m00s", "10.0"]})
    assert (
        run_cli(
            fake, tmp_path, "--catalogue", str(write(degrees, tmp_path / "deg.csv")), "--out", str(tmp_path / "a.csv")
        )
        == 0
    )
    asked = [(q["ra"], q["dec"]) for _, _, q in fake.requests]
    assert sorted(asked) == [("150.000000", "2.500000"), ("150.150000", "-1.250000"), ("150.300000", "10.000000")]
    assert (
        run_cli(fake, tmp_path, "--catalogue", str(write(text, tmp_path / "sex.csv")), "--out", str(tmp_path / "b.csv"))
        == 0
    )
    assert len(fake.requests) == 3, "the same positions written in sexagesimal were fetched again"
    a, b = Table.read(tmp_path / "a.csv"), Table.read(tmp_path / "b.csv")
    np.testing.assert_allclose(np.asarray(a["p_spiral"]), np.asarray(b["p_spiral"]))


def test_a_size_column_sets_the_scale_and_bad_sizes_are_row_errors(store, fake, tmp_path, capsys):
    table = targets(4)
    table["petroR90_r"] = [8.5, -9999.0, 12.0, 0.1]
    table["petroR90_r"].unit = u.arcsec
    table["petroR90_r"][3] = 0.1 * 60  # arcsec, written below in arcmin
    table["petroR90_r"] = table["petroR90_r"].to(u.arcmin)
    source = write(table, tmp_path / "sized.fits")
    out = tmp_path / "out.fits"
    assert run_cli(fake, tmp_path, "--catalogue", str(source), "--size-column", "petroR90_r", "--out", str(out)) == 0
    scales = sorted(float(q["scale"]) for _, _, q in fake.requests)
    np.testing.assert_allclose(scales, [0.02 * 6.0, 0.02 * 8.5, 0.02 * 12.0])  # arcmin read as its unit says
    back = Table.read(out)
    assert str(back["error"][1]) == "petroR90_r: expected a size in arcsec > 0, got -9999"
    assert fits.getheader(out, 1)["GMCUTSCL"] == "0.02 * petroR90_r arcsec/px"
    assert "1 failed" in capsys.readouterr().err


def test_output_names_the_catalogue_already_has_get_pred_prefix(store, fake, tmp_path, capsys):
    table = targets(2)
    table["label"] = ["spiral", "elliptical"]  # a catalogue's own morphology
    table["P_SPIRAL"] = [0.9, 0.1]
    out = tmp_path / "out.parquet"
    assert run_cli(fake, tmp_path, "--catalogue", str(write(table, tmp_path / "t.parquet")), "--out", str(out)) == 0
    back = Table.read(out)
    assert back.colnames[-4:] == ["pred_p_spiral", "p_elliptical", "pred_label", "error"]
    assert list(back["label"]) == ["spiral", "elliptical"] and list(back["P_SPIRAL"]) == [0.9, 0.1]
    assert "wrote p_spiral -> pred_p_spiral, label -> pred_label" in capsys.readouterr().err


def test_an_existing_output_is_replaced_only_with_force(store, fake, tmp_path, capsys):
    source = write(targets(2), tmp_path / "t.csv")
    out = tmp_path / "out.vot"
    out.write_text("the user's own file")
    assert run_cli(fake, tmp_path, "--catalogue", str(source), "--out", str(out)) == 1
    assert "already exists (pass --force to replace it)" in capsys.readouterr().err
    assert out.read_text() == "the user's own file" and fake.requests == []  # refused before any request
    assert run_cli(fake, tmp_path, "--catalogue", str(source), "--out", str(out), "--force") == 0
    assert len(Table.read(out)) == 2


def test_nothing_scored_exits_non_zero_with_the_rows_written(store, fake, tmp_path, capsys):
    source = write(targets(3, dec0=-60.0), tmp_path / "south.csv")
    out = tmp_path / "out.csv"
    assert run_cli(fake, tmp_path, "--catalogue", str(source), "--out", str(out)) == 1
    assert len(Table.read(out)) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        f"galmorph predict: error: none of the 3 row(s) could be scored (first: row 1 (objid {OBJID}): outside"
    )


def test_catalogue_to_stdout_is_csv(store, fake, tmp_path, capsys):
    assert run_cli(fake, tmp_path, "--catalogue", str(write(targets(2), tmp_path / "t.csv"))) == 0
    assert capsys.readouterr().out.splitlines()[0] == "objid,ra,dec,z,name,p_spiral,p_elliptical,label,error"


@pytest.mark.parametrize(
    ("table", "args", "message"),
    [
        ({"ra": [1.0], "dec": [2.0]}, ["--ra-column", "RAJ"], "missing column(s) RAJ"),
        ({"ra": [1.0], "dec": [2.0]}, ["--size-column", "petroR90"], "missing column(s) petroR90"),
        ({"x": [1.0], "y": [2.0]}, [], "no image-path column (image_path, filename, path, file, image) and no RA/Dec"),
        ({"ra": [1.0], "y": [2.0]}, [], "found a RA column but not its partner; pass --dec-column"),
        ({"ra": ["10:00:00", "25:61:00"], "dec": [2.0, 3.0]}, [], "row 2, column ra: expected a right ascension"),
        ({"ra": [1.0], "dec": [95.0]}, [], "row 1, column dec: expected a declination"),
        ({"ra": [1.0], "dec": [2.0]}, ["--service", "hst"], "cut-out service 'hst': not in params.yaml"),
        ({"ra": [1.0], "dec": [2.0]}, ["--out", "x.xlsx"], "unknown table format '.xlsx'"),
        ({"ra": [1.0], "dec": [2.0]}, ["a.jpg"], "give image paths or --catalogue, not both"),
    ],
)
def test_catalogue_mistakes_are_one_line_errors(store, fake, tmp_path, capsys, table, args, message):
    source = write(Table(table), tmp_path / "t.csv")
    assert run_cli(fake, tmp_path, "--catalogue", str(source), *args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("galmorph predict: error:") and message in last, last
    assert fake.requests == []


def test_a_missing_or_unreadable_catalogue_is_one_line(store, fake, tmp_path, capsys):
    assert run_cli(fake, tmp_path, "--catalogue", str(tmp_path / "none.fits")) == 1
    assert "none.fits: catalogue not found" in capsys.readouterr().err
    (tmp_path / "bad.fits").write_text("SIMPLE  = this is not FITS")
    assert run_cli(fake, tmp_path, "--catalogue", str(tmp_path / "bad.fits")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("galmorph predict: error:") and "bad.fits: cannot read the catalogue as fits" in last


# ------------------------------------------------------------------------ README "From a catalogue of positions"


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- catalogue-example -->\n", 1)[1].split("<!-- /catalogue-example -->", 1)[0]
    script = block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    lines = [line.split("  #", 1)[0].strip() for line in script.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_readme_catalogue_example_runs_end_to_end(store, tmp_path, capsys, monkeypatch):
    """The README's commands, as written, on its 20-row catalogue: the fake service started as the README
    starts it (here in this process, on the README's port when free), then `galmorph predict` twice."""
    start, *runs, stop = readme_commands()
    assert start[:4] == [".venv/bin/python", "-m", "tests.fake_cutouts", "--port"] and start[-1] == "&"
    assert stop == ["kill", "%1"]
    port = int(start[4])
    catalogue = start[start.index("--catalogue") + 1]
    monkeypatch.chdir(tmp_path)
    from tests.fake_cutouts import write_example_catalogue

    write_example_catalogue(catalogue)
    try:
        service = FakeCutoutService(port).start()
    except OSError:  # the README's port is taken on this machine: any free one, the URLs rewritten to it
        service = FakeCutoutService().start()
    try:
        base = f"http://127.0.0.1:{port}"
        for i, argv in enumerate(runs):
            assert argv[0] == "galmorph"
            args = [a.replace(base, service.base) for a in argv[1:]]
            args = ["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", *args]
            assert cli.main(args) == 0, capsys.readouterr().err
            err = capsys.readouterr().err
            requested = 19 if i == 0 else 0  # 20 rows, one without a usable radius; the second run: all cached
            assert f"cut-outs: 19 from sdss ({requested} requested" in err, err
    finally:
        service.stop()
    assert len(service.requests) == 19
    out = Path(runs[0][runs[0].index("--out") + 1])
    back = Table.read(out)
    assert len(back) == 20 and back.colnames == [*EXAMPLE_COLUMNS, *OUTPUTS]
    assert str(back["objid"][0]) == "587722981736120347"
    errors = texts(back["error"])
    assert errors[18].startswith("outside the survey footprint or blank") and errors[19].startswith("petroR90_r:")
    assert all(not e for e in errors[:18]) and set(back["label"][:18]) <= {"spiral", "elliptical", "uncertain"}
    header = fits.getheader(out, 1)
    assert header["GMMODEL"] == "galmorph v1 (@champion)" and header["GMCUTSCL"] == "0.02 * petroR90_r arcsec/px"
