"""The evaluate stage end to end on a tiny trained model, and `galmorph evaluate-folder` on awkward images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph import cli
from galmorph.config import Params, load_params, replace
from galmorph.errors import UserError
from galmorph.evaluation.folder import read_labelled
from galmorph.evaluation.scoring import check_readable
from tests.conftest import REPO
from tests.training_utils import _galaxy, make_catalogue, tiny_params


@dataclasses.dataclass
class Trained:
    params: Params
    catalogue: pd.DataFrame
    root: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """A resnet18 head trained for 2 epochs on 48 tiny blue spirals and red ellipticals, saved as model.pt,
    with the splits (main + 2 repeated), an UNCERTAIN table and evaluate params shrunk for speed."""
    from galmorph.evaluation.calibration import fit_temperature
    from galmorph.models.resnet import save_model
    from galmorph.training.features import build_feature_cache, save_feature_cache
    from galmorph.training.loop import fit

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("evaluate")
    params = tiny_params(load_params(REPO / "params.yaml"), root)
    params = dataclasses.replace(params, embed=replace(params.embed, views=["identity", "rot90"]))
    catalogue = make_catalogue(root, n=48, size=48, seed=1)
    rng = np.random.default_rng(0)
    for k in (1, 2):  # two repeated splits: the main one with a different assignment of pairs
        pairs = rng.permutation(len(catalogue) // 2)
        pos = np.repeat(pairs, 2)
        n = len(pairs)
        catalogue[f"split_{k}"] = np.where(pos < 0.6 * n, "train", np.where(pos < 0.8 * n, "val", "test"))
    # the embed stage's cache, so every fit (this one and the stability refits) trains the head only
    features = build_feature_cache(
        catalogue, params.model, params.preprocess, params.embed, device="cpu", progress=False
    )
    save_feature_cache(features, params.embed.out)
    result = fit(catalogue, params, features=features, progress=False)
    temperature = fit_temperature(result.val_logits, result.val_labels)
    save_model(params.train.out, result.model, params.model, params.preprocess, temperature=temperature)

    uncertain_dir = root / "uncertain"
    uncertain_dir.mkdir()
    rows = []
    for i in range(6):
        path = uncertain_dir / f"u{i}.jpg"
        Image.fromarray(_galaxy("spiral" if i % 2 == 0 else "elliptical", 48, rng)).save(path)
        p = 0.62 if i % 2 == 0 else 0.3
        rows.append(
            {
                "galaxy_id": f"u{i}",
                "image_path": str(path),
                "label": "uncertain",
                "label_id": -1,
                "p_spiral": p,
                "p_elliptical": 1 - p - 0.05,
            }
        )
    rows.append({**rows[0], "galaxy_id": "u_missing", "image_path": str(uncertain_dir / "gone.jpg")})
    pd.DataFrame(rows).to_parquet(root / "uncertain.parquet")
    catalogue.to_parquet(root / "splits.parquet")

    evaluate = replace(
        params.evaluate,
        out_dir=str(root / "reports" / "eval"),
        metrics=str(root / "reports" / "eval" / "metrics.json"),
        bootstrap=100,
        tta_views=["identity", "rot90", "hflip"],
        gallery_size=4,
        uncertain_limit=5,
        batch_size=16,
        num_workers=0,
        device="cpu",
    )
    params = dataclasses.replace(
        params,
        evaluate=evaluate,
        split=replace(params.split, out=str(root / "splits.parquet")),
        join=replace(params.join, uncertain_out=str(root / "uncertain.parquet")),
    )
    return Trained(params, catalogue, root)


def labelled_folder(root: Path, rng: np.random.Generator) -> Path:
    """spirals/ and ellipticals/ with greyscale JPEG, RGBA PNG, a large RGBA PNG, plain JPEGs and a broken file."""
    folder = root / "telescope"
    for cls, name in (("spiral", "spirals"), ("elliptical", "Ellipticals")):
        (folder / name / "night1").mkdir(parents=True)
        for i in range(4):
            im = Image.fromarray(_galaxy(cls, 48, rng))
            target = folder / name / "night1" if i == 3 else folder / name
            if i == 0:
                im.convert("L").save(target / f"{cls}{i}_grey.jpg")
            elif i == 1:
                rgba = im.convert("RGBA")
                rgba.putalpha(180)
                rgba.save(target / f"{cls}{i}_rgba.png")
            elif i == 2:
                im.resize((2000, 1500), Image.BICUBIC).convert("RGBA").save(target / f"{cls}{i}_large.png")
            else:
                im.save(target / f"{cls}{i}.jpg", quality=90)
    (folder / "spirals" / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a JPEG")
    (folder / "spirals" / "README.txt").write_text("not an image, ignored")
    return folder


def test_read_labelled_folder_finds_every_image_and_reports_unreadable(tmp_path):
    folder = labelled_folder(tmp_path, np.random.default_rng(3))
    cat = read_labelled(folder)
    assert len(cat) == 9  # 4 + 4 images and the corrupt one; README.txt is not an image
    assert cat["label"].value_counts().to_dict() == {"spiral": 5, "elliptical": 4}
    assert set(cat["label_id"]) == {0, 1}
    ok, skipped = check_readable(cat)
    assert len(ok) == 8
    assert skipped["image_path"].str.endswith("corrupt.jpg").all()
    assert skipped["reason"].iloc[0].startswith("cannot decode")


def test_read_labelled_bad_inputs_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="expected subfolders spirals/ and ellipticals/.*empty"):
        read_labelled(empty)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(UserError, match="found 1 image"):
        read_labelled(loose)
    hollow = tmp_path / "hollow"
    (hollow / "spirals").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        read_labelled(hollow)
    with pytest.raises(UserError, match="no such folder"):
        read_labelled(tmp_path / "nowhere")
    csv = tmp_path / "m.csv"
    csv.write_text("filename,label\na.png,cat\nb.png,dog\n")
    with pytest.raises(UserError, match="no spiral/elliptical labels"):
        read_labelled(csv)
    csv.write_text("name,label\na.png,spiral\n")
    with pytest.raises(UserError, match="no image-path column"):
        read_labelled(csv)


def test_read_labelled_csv_maps_label_spellings_and_keeps_votes(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.fromarray(_galaxy("spiral", 32, rng)).save(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "m.csv").write_text(
        "filename,label,p_spiral,p_elliptical\n"
        "img/0.jpg,Spirals,0.9,0.1\nimg/1.jpg,E,0.2,0.7\nimg/2.jpg,elliptical,,\nimg/3.jpg,merger,0.5,0.5\n"
    )
    cat = read_labelled(tmp_path / "m.csv")
    assert cat["label"].tolist() == ["spiral", "elliptical", "elliptical"]
    assert cat["p_spiral"].iloc[0] == pytest.approx(0.9)
    assert np.isnan(cat["p_spiral"].iloc[2])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in cat["image_path"])
    assert cat.attrs["dropped_labels"] == {"merger": 1}


def _write_params(params: Params, path: Path) -> Path:
    """The test's params as a params.yaml for the CLI."""
    import yaml

    path.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    return path


def test_evaluate_folder_cli_scores_awkward_images_and_writes_a_report(trained, tmp_path, capsys):
    folder = labelled_folder(tmp_path, np.random.default_rng(5))
    params_file = _write_params(trained.params, tmp_path / "params.yaml")
    out = tmp_path / "report"
    model = ["--model", trained.params.train.out]
    rc = cli.main(["--params", str(params_file), "evaluate-folder", str(folder), "--out", str(out), *model])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8
    assert metrics["n_skipped"] == 1
    assert 0.0 <= metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"] <= 1.0
    assert "tta_accuracy" in metrics
    html = (out / "report.html").read_text()
    assert f"{metrics['accuracy']:.3f}" in html
    assert "corrupt.jpg" in html and "could not be read" in html
    assert html.count("data:image/png;base64,") >= 5
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8
    assert np.allclose(preds["p_spiral"] + preds["p_elliptical"], 1.0, atol=1e-6)
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_folder_reports_the_out_of_distribution_score(trained, tmp_path, capsys):
    """A model file with a detector: every prediction has its ood_score, the report and metrics say how many
    the detector flags; a flag-everything scale flags them all."""
    from galmorph.models.resnet import load_model, save_model
    from galmorph.training.ood import fit_ood

    loaded = load_model(trained.params.train.out)
    params = dataclasses.replace(trained.params, train=replace(trained.params.train, ood_quantile=0.9))
    detector = dataclasses.replace(fit_ood(loaded.model, trained.catalogue, params), scale=1e-9)
    model_file = tmp_path / "with_ood.pt"
    save_model(model_file, loaded.model, loaded.model_cfg, loaded.preprocess, temperature=1.0, ood=detector)
    folder = labelled_folder(tmp_path, np.random.default_rng(5))
    params_file = _write_params(trained.params, tmp_path / "params.yaml")
    out = tmp_path / "report"
    rc = cli.main(
        ["--params", str(params_file), "evaluate-folder", str(folder), "--out", str(out), "--model", str(model_file)]
    )
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ood_flagged"] == 1.0 and metrics["ood_n_flagged"] == metrics["n"] == 8
    preds = pd.read_csv(out / "predictions.csv")
    assert (preds["ood_score"] > 1).all() and preds["unlike_training_data"].all()
    assert "unlike training data" in (out / "report.html").read_text()


def test_evaluate_folder_cli_errors_cleanly(trained, tmp_path, capsys):
    params_file = _write_params(trained.params, tmp_path / "params.yaml")
    (tmp_path / "nothing").mkdir()
    model = ["--model", trained.params.train.out]
    rc = cli.main(["--params", str(params_file), "evaluate-folder", str(tmp_path / "nothing"), *model])
    err = capsys.readouterr().err
    assert rc == 1
    assert "error:" in err and "spirals/" in err and "Traceback" not in err
    bad = tmp_path / "bad" / "spirals"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"garbage")
    rc = cli.main(["--params", str(params_file), "evaluate-folder", str(tmp_path / "bad"), *model])
    assert rc == 1
    assert "none of the 1 images could be read" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_stage_end_to_end(trained, tmp_path, mlflow_uri):
    import mlflow

    from galmorph.stages import evaluate
    from galmorph.tracking import runs

    params = trained.params
    with runs.start_run(params.mlflow, "train", params.train) as run:
        train_run = run.info.run_id
    Path(params.train.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(params.train.metrics).write_text(json.dumps({"mlflow_run_id": train_run}))

    evaluate.main(params, None)

    out = Path(params.evaluate.out_dir)
    metrics = json.loads(Path(params.evaluate.metrics).read_text())
    for key in ("test_accuracy", "test_macro_f1", "test_roc_auc", "test_log_loss", "test_ece", "test_ece_calibrated"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    for key in ("test_precision_spiral", "test_recall_elliptical", "test_tta_accuracy", "test_abstain_coverage"):
        assert key in metrics
    assert metrics["temperature"] > 0
    n_test = int((trained.catalogue["split"] == "test").sum())
    assert metrics["test_n"] == n_test
    # the UNCERTAIN galaxies: 7 in the catalogue (one without an image), a seeded sample of 5 scored
    assert metrics["uncertain_n_catalogue"] == 7
    assert metrics["uncertain_n_scored"] + metrics["uncertain_n_missing_image"] == 5
    assert metrics["uncertain_n_scored"] >= 4
    assert 0 <= metrics["uncertain_agreement"] <= 1
    # stability over split_1 and split_2
    assert metrics["stability_n_splits"] == 2
    assert 0 <= metrics["stability_accuracy_mean"] <= 1 and metrics["stability_accuracy_std"] >= 0

    # DVC plot data
    confusion = pd.read_csv(out / "plots" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == n_test
    for name in ("roc.csv", "reliability_uncalibrated.csv", "reliability_calibrated.csv", "coverage.csv"):
        assert len(pd.read_csv(out / "plots" / name)) > 0
    for name in ("confusion", "roc", "reliability", "coverage", "votes", "uncertain_votes", "stability"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert any((out / "galleries").glob("correct_*.png"))

    html = (out / "report.html").read_text()
    assert f"{metrics['test_accuracy']:.3f}" in html
    assert f"{metrics['test_ece_calibrated']:.3f}" in html
    assert "UNCERTAIN" in html and "Stability" in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sets"][0]["n"] == n_test

    # logged into the training run: metrics and the evaluation folder
    logged = runs.run_metrics(train_run, cfg=params.mlflow)
    assert logged["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(train_run, "evaluation")}
    assert "evaluation/report.html" in names
    assert names == {f"evaluation/{p.name}" for p in out.iterdir()}  # the whole folder, as written


def test_temperature_comes_from_the_model_file_or_is_fitted_on_val(trained):
    from galmorph.evaluation.evaluate import resolve_temperature
    from galmorph.models.resnet import load_model

    loaded = load_model(trained.params.train.out)
    t, source = resolve_temperature(loaded, trained.catalogue, trained.params)
    assert t == loaded.temperature and "train" in source
    uncalibrated = dataclasses.replace(loaded, temperature=1.0)
    t, source = resolve_temperature(uncalibrated, trained.catalogue, trained.params)
    assert t != 1.0 and "fitted here" in source
    no_val = trained.catalogue[trained.catalogue["split"] != "val"]
    assert resolve_temperature(uncalibrated, no_val, trained.params)[0] == 1.0


def test_mlflow_run_id_from_train_metrics(tmp_path):
    from galmorph.evaluation.evaluate import mlflow_run_id

    assert mlflow_run_id(tmp_path / "absent.json") is None
    (tmp_path / "m.json").write_text('{"mlflow_run_id": "abc", "val_acc": 0.9}')
    assert mlflow_run_id(tmp_path / "m.json") == "abc"
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(UserError, match="not a JSON object"):
        mlflow_run_id(tmp_path / "bad.json")


def test_preprocess_mismatch_between_model_and_params_is_a_user_error(trained):
    from galmorph.evaluation.evaluate import check_preprocess
    from galmorph.models.resnet import load_model

    loaded = load_model(trained.params.train.out)
    check_preprocess(loaded, trained.params, "model.pt")
    other = dataclasses.replace(trained.params, preprocess=replace(trained.params.preprocess, image_size=64))
    with pytest.raises(UserError, match="retrain"):
        check_preprocess(loaded, other, "model.pt")


def test_evaluate_folder_takes_the_same_default_model_as_predict(tiny_model, _mlflow_empty_db, tmp_path, capsys):
    """No --model: @champion of the registered model, as predict and web; its report names the version and
    scores exactly as the model file inside it does."""
    from tests.serving_utils import champion_store

    folder = labelled_folder(tmp_path, np.random.default_rng(5))
    params_file = REPO / "params.yaml"
    with champion_store(tmp_path / "store", tiny_model, _mlflow_empty_db) as cfg:
        base = ["--params", str(params_file), "-S", f"mlflow.tracking_uri={cfg.tracking_uri}", "evaluate-folder"]
        base += [str(folder), "--no-tta"]
        assert cli.main([*base, "--out", str(tmp_path / "champion")]) == 0, capsys.readouterr().err
        shipped = next(Path(tiny_model.source.removeprefix("file://")).rglob("model.pt"))
        assert cli.main([*base, "--out", str(tmp_path / "file"), "--model", str(shipped)]) == 0
        assert cli.main([*base, "--model", "models:/galmorph@nope"]) == 1
        assert "has no alias @nope" in capsys.readouterr().err
    champion = json.loads((tmp_path / "champion" / "metrics.json").read_text())
    assert champion == json.loads((tmp_path / "file" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "champion" / "summary.json").read_text())
    assert summary["model"]["file"] == "galmorph v1 (@champion)"


def test_evaluate_folder_reports_per_source_by_confidence_and_every_mistake(trained, tmp_path, capsys):
    """A CSV like ../shared/ood-dev's: KPIs per `dataset`, accuracy by the volunteers' confidence where votes
    exist, the CSV's own columns kept in the predictions, the left-out rows counted by label, and every mistake
    listed with its full name beside a thumbnail."""
    rng = np.random.default_rng(9)
    (tmp_path / "img").mkdir()
    lines = ["filename,label,dataset,label_detail,p_spiral,p_elliptical"]
    for i in range(12):
        cls = "spiral" if i % 2 == 0 else "elliptical"
        Image.fromarray(_galaxy(cls, 32, rng)).save(tmp_path / "img" / f"{i}.jpg")
        votes = ("0.92,0.08" if cls == "spiral" else "0.1,0.9") if i < 6 else ("0.65,0.35" if cls == "spiral" else ",")
        lines.append(f"img/{i}.jpg,{cls},{'decals' if i < 6 else 'hsc'},detail {i},{votes}")
    lines += ["img/0.jpg,other,decals,merger,,", "img/1.jpg,other,hsc,merger,,"]
    (tmp_path / "ood.csv").write_text("\n".join(lines) + "\n")
    params_file = _write_params(trained.params, tmp_path / "params.yaml")
    out = tmp_path / "report"
    rc = cli.main(["--params", str(params_file), "evaluate-folder", str(tmp_path / "ood.csv"), "--out", str(out),
                   "--model", trained.params.train.out])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_by_decals"] == 6 and metrics["n_by_hsc"] == 6
    assert 0 <= metrics["accuracy_by_hsc"] <= 1 and "accuracy_by_decals_ci_low" in metrics
    assert metrics["n_with_votes"] == 9 and metrics["confident_n"] == 6  # the hsc ellipticals have no votes
    wrong = metrics["mistakes_confident"] + metrics["mistakes_split"] + metrics["mistakes_without_votes"]
    preds = pd.read_csv(out / "predictions.csv")
    assert wrong == int((~preds["correct"]).sum())
    assert {"dataset", "label_detail", "votes_own_class"} <= set(preds.columns)
    assert preds.loc[preds["image_path"].str.endswith("img/3.jpg"), "label_detail"].item() == "detail 3"
    html = (out / "report.html").read_text()
    assert "By dataset" in html and "By the volunteers" in html and "&#x27;other&#x27; (2)" in html
    if wrong:
        assert f"Every mistake: {wrong}" in html and html.count("data:image/jpeg;base64,") == wrong
        first_wrong = preds.loc[~preds["correct"], "image_path"].iloc[0]
        assert first_wrong in html  # the full name, not only a caption
