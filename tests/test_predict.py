"""`galmorph predict`: inputs (files, folders, globs), every image kind, per-file errors, outputs, and the
same numbers as the logged pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph import cli
from galmorph.errors import UserError
from galmorph.models import resnet
from galmorph.serving import predict
from galmorph.serving.resolve import load_model, resolve_model
from galmorph.tracking import logged_model
from tests.conftest import REPO
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, champion_store, galaxy_image, tiny_network


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory, _mlflow_empty_db):
    with champion_store(tmp_path_factory.mktemp("predict"), tiny_model, _mlflow_empty_db) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def classifier(store):
    return load_model(resolve_model(None, store), store)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Every kind people bring: JPEG and PNG, RGB, RGBA, grey, 16-bit, odd sizes, upper-case suffixes."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    galaxy_image(0, 424).save(root / "a.jpg")
    galaxy_image(1, 424).convert("RGBA").save(root / "b.png")
    galaxy_image(2, 100).convert("L").save(root / "c.png")
    galaxy_image(3, 37).save(root / "sub" / "d.JPG")
    wide = galaxy_image(4, 300).resize((500, 300))
    wide.save(root / "sub" / "e.jpeg")
    grey16 = np.asarray(galaxy_image(5, 64).convert("L"), dtype=np.uint16) * 200
    from PIL import Image

    Image.fromarray(grey16).save(root / "f16.png")
    (root / "notes.txt").write_text("not an image")  # ignored when scanning a folder
    return root


def test_expand_inputs_files_folders_globs(images):
    found = predict.expand_inputs([str(images)])
    names = [p.rsplit("/", 1)[-1] for p in found]
    assert sorted(names) == ["a.jpg", "b.png", "c.png", "d.JPG", "e.jpeg", "f16.png"]
    assert predict.expand_inputs([str(images / "*.png")]) == [
        str(images / "b.png"),
        str(images / "c.png"),
        str(images / "f16.png"),
    ]
    again = predict.expand_inputs([str(images / "a.jpg"), str(images), str(images / "**" / "*.jpeg")])
    assert len(again) == len(found) and again[0] == str(images / "a.jpg")  # deduplicated, order kept


def test_expand_inputs_mistakes_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder has no JPEG, PNG or FITS"):
        predict.expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no such file or folder"):
        predict.expand_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(UserError, match="matches no files"):
        predict.expand_inputs([str(tmp_path / "*.jpg")])
    with pytest.raises(UserError, match="no input"):
        predict.expand_inputs([])


def test_scores_every_kind_and_reports_corrupt_files(classifier, images, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((images / "a.jpg").read_bytes()[:300])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    paths = predict.expand_inputs([str(images)])
    df = predict.score_files(classifier, [*paths[:3], str(truncated), *paths[3:], str(text)], batch_size=3, workers=2)
    assert list(df.columns) == ["path", "p_spiral", "p_elliptical", "label", "error"]
    bad = df["path"].isin([str(truncated), str(text)])
    assert (df.loc[bad, "error"] != "").all() and df.loc[bad, "p_spiral"].isna().all()
    assert (df.loc[bad, "label"] == "").all()
    good = df[~bad]
    assert len(good) == 6 and (good["error"] == "").all()
    np.testing.assert_allclose(good["p_spiral"] + good["p_elliptical"], 1.0, atol=1e-6)
    assert set(good["label"]) <= {"spiral", "elliptical", "uncertain"}


def test_equals_the_logged_pyfunc_batching_and_workers_aside(classifier, store, images):
    paths = predict.expand_inputs([str(images)])
    ours = predict.score_files(classifier, paths, batch_size=4, workers=0, progress=False)
    other = predict.score_files(classifier, paths, batch_size=64, workers=2, progress=False)
    np.testing.assert_allclose(ours["p_spiral"], other["p_spiral"], atol=1e-6)
    pyfunc = logged_model.load_classifier("models:/galmorph@champion", cfg=store)
    raw = [Path(p).read_bytes() for p in paths]  # a served model reads no server path unless it has an image root
    expected = pyfunc.predict(pd.DataFrame({"image": raw}))
    np.testing.assert_allclose(ours["p_spiral"], expected["p_spiral"], atol=1e-4)
    tta = predict.score_files(classifier, paths, tta=True, progress=False)
    expected_tta = pyfunc.predict(pd.DataFrame({"image": raw}), params={"tta": True})
    np.testing.assert_allclose(tta["p_spiral"], expected_tta["p_spiral"], atol=1e-4)
    assert not np.allclose(tta["p_spiral"], ours["p_spiral"], atol=1e-6)


def test_threshold_makes_uncertain(classifier, images):
    paths = predict.expand_inputs([str(images)])
    assert set(predict.score_files(classifier, paths, threshold=1.0, progress=False)["label"]) == {"uncertain"}
    decided = predict.score_files(classifier, paths, threshold=0.0, progress=False)
    expected = np.where(decided["p_spiral"] >= decided["p_elliptical"], "spiral", "elliptical")
    assert decided["label"].tolist() == expected.tolist()


def test_local_checkpoint_gives_the_same_numbers(classifier, images, tmp_path):
    ckpt = tmp_path / "model.pt"
    resnet.save_model(ckpt, tiny_network(), TINY_MODEL, TINY_PREPROCESS, temperature=1.5)
    ref = resolve_model(str(ckpt), None)
    assert ref.version == "local"
    local = load_model(ref, None)
    paths = predict.expand_inputs([str(images)])
    a = predict.score_files(local, paths, progress=False)
    b = predict.score_files(classifier, paths, progress=False)
    np.testing.assert_allclose(a["p_spiral"], b["p_spiral"], atol=1e-5)


def run_cli(*argv: str) -> int:
    return cli.main(["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", "predict", *argv])


def test_cli_writes_csv_json_and_stdout(store, images, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out_csv = tmp_path / "out.csv"
    assert run_cli(str(images), str(broken), "--out", str(out_csv), "--workers", "1") == 0
    df = pd.read_csv(out_csv, keep_default_na=False)
    assert len(df) == 7 and list(df.columns) == ["path", "p_spiral", "p_elliptical", "label", "error"]
    assert df.loc[df["path"] == str(broken), "error"].item() != ""
    err = capsys.readouterr().err
    assert "galmorph v1 (@champion)" in err and "1 unreadable" in err and "broken.png" in err

    out_json = tmp_path / "out.json"
    assert run_cli(str(images / "a.jpg"), str(broken), "--out", str(out_json), "--tta", "--threshold", "0.9") == 0
    records = json.loads(out_json.read_text())
    assert records[1]["p_spiral"] is None and records[1]["error"]
    assert records[0]["label"] in ("spiral", "elliptical", "uncertain")

    capsys.readouterr()
    assert run_cli(str(images / "a.jpg")) == 0
    assert capsys.readouterr().out.splitlines()[0] == "path,p_spiral,p_elliptical,label,error"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "models:/galmorph@nope"], "has no alias @nope (aliases: @challenger, @champion)"),
        (["--model", "models:/missing@champion"], "no registered model 'missing'"),
        (["--model", "models:/galmorph/7"], "has no version 7"),
        (["--model", "no/such/model.pt"], "no such file or folder"),
        (["--out", "x.xlsx"], "expected a .csv, .json or .parquet"),
        (["--threshold", "2"], "between 0 and 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_line(store, images, capsys, args, message):
    assert run_cli(str(images / "a.jpg"), *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("galmorph predict: error:")


def test_cli_empty_folder(store, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(str(tmp_path / "empty")) == 1
    assert "folder has no JPEG, PNG or FITS images" in capsys.readouterr().err


def test_cli_exits_non_zero_when_nothing_could_be_scored(store, tmp_path, capsys):
    bad = [tmp_path / "a.jpg", tmp_path / "b.png"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bad[1].write_bytes(b"%PDF-1.4 a pdf named .png")
    out = tmp_path / "out.csv"
    assert run_cli(*map(str, bad), "--out", str(out)) == 1
    assert len(pd.read_csv(out)) == 2  # the rows and their errors are still written
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("galmorph predict: error: none of the 2 file(s) could be scored (first: ")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    resnet.save_model(path, tiny_network(), TINY_MODEL, TINY_PREPROCESS, temperature=1.5)
    return path


def test_predict_with_a_model_file_needs_no_params_yaml(model_file, images, tmp_path, monkeypatch, capsys):
    """Outside the repository there is no params.yaml: the model file carries its preprocessing, the threshold
    is the default one."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert cli.main(["predict", "--model", str(model_file), str(images / "a.jpg"), "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "path,p_spiral,p_elliptical,label,error"
    # the registry needs params.yaml's mlflow section; an explicit --params must exist
    assert cli.main(["predict", str(images / "a.jpg")]) == 1
    assert "params.yaml: params file not found" in capsys.readouterr().err
    assert cli.main(["--params", "p.yaml", "predict", "--model", str(model_file), str(images / "a.jpg")]) == 1
    assert "p.yaml: params file not found" in capsys.readouterr().err


def test_predict_ignores_sections_it_does_not_read(model_file, images, tmp_path, capsys):
    """After a failed `dvc exp run -S train.lr=abc`, params.yaml holds the bad value: predict still runs."""
    text = (REPO / "params.yaml").read_text()
    params_file = tmp_path / "params.yaml"
    params_file.write_text(text.replace("\n  lr: 0.001", "\n  lr: abc", 1))
    argv = ["--params", str(params_file), "predict", "--model", str(model_file), str(images / "a.jpg")]
    assert cli.main([*argv, "--workers", "0"]) == 0
    assert cli.main(["--params", str(REPO / "params.yaml"), "-S", "train.lr=abc", *argv[2:], "--workers", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["--params", str(params_file), "train"]) == 1  # the stage that reads it refuses it
    assert "train.lr: expected a number, got 'abc'" in capsys.readouterr().err
