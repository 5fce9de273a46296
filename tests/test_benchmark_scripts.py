"""The benchmark scripts whose numbers BENCHMARKS.md and the README quote: their tables are computed as they say,
on tiny made-up runs, and bad arguments end in one line naming what was expected."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph.config import SurveyConfig
from galmorph.models import resnet
from tests.conftest import benchmark_module
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, tiny_network
from tests.training_utils import make_catalogue


def _run_folder(root, name, test_wrong, ood_wrong=(), p_spiral=None):
    """An evaluate folder with predictions.csv for 10 test galaxies (two sources) and ood/predictions.csv for 4;
    the galaxies at the indices in *_wrong are predicted as the other class."""
    folder = root / name
    (folder / "ood").mkdir(parents=True)
    for path, n, wrong in (
        (folder / "predictions.csv", 10, test_wrong),
        (folder / "ood/predictions.csv", 4, ood_wrong),
    ):
        labels = np.array(["spiral", "elliptical"] * (n // 2))
        predicted = labels.copy()
        for i in wrong:
            predicted[i] = "elliptical" if labels[i] == "spiral" else "spiral"
        p = np.where(predicted == "spiral", 0.9, 0.1) if p_spiral is None or n != 10 else p_spiral
        pd.DataFrame(
            {
                "galaxy_id": [f"g{i}" for i in range(n)],
                "label": labels,
                "predicted": predicted,
                "p_spiral": p,
                "dataset": ["a"] * (n // 2) + ["b"] * (n - n // 2),
            }
        ).to_csv(path, index=False)
    return folder


def test_framing_table_gives_accuracies_and_paired_differences(tmp_path):
    framing_table = benchmark_module("framing_table")
    runs = {"base": _run_folder(tmp_path, "base", []), "new": _run_folder(tmp_path, "new", [0, 6], [1])}
    lines = framing_table.table(runs, "test", resamples=200, seed=0)
    assert lines[0] == "| source | n | base | new | new − base |"
    rows = {line.split(" | ")[0]: line for line in lines[2:]}
    assert rows["| test: all"].startswith("| test: all | 10 | 1.000 [1.000, 1.000] | 0.800 [")
    assert "| -0.200 [" in rows["| test: all"]
    assert rows["| test: a"].startswith("| test: a | 5 | 1.000 [1.000, 1.000] | 0.800 [")
    ood = framing_table.table(runs, "ood-dev", resamples=200, seed=0)
    assert ood[2].startswith("| ood-dev: all | 4 | 1.000 [1.000, 1.000] | 0.750 [")
    assert framing_table.table(runs, "test", 200, 0) == lines  # seeded


def test_framing_table_refuses_runs_on_other_images(tmp_path, monkeypatch, capsys):
    framing_table = benchmark_module("framing_table")
    base = _run_folder(tmp_path, "base", [])
    other = _run_folder(tmp_path, "other", [])
    pd.read_csv(other / "predictions.csv").assign(galaxy_id=lambda f: "x" + f["galaxy_id"]).to_csv(
        other / "predictions.csv", index=False
    )
    with pytest.raises(SystemExit, match="other: not the same test images as base"):
        framing_table.table({"base": base, "other": other}, "test", 10, 0)
    monkeypatch.setattr(sys, "argv", ["framing_table.py", f"base={base}", f"missing={tmp_path / 'nowhere'}"])
    assert framing_table.main() == 2
    assert "expected NAME=DIR with DIR/predictions.csv" in capsys.readouterr().err


def test_shared_errors_counts_shared_mistakes_and_scores_the_mean_of_both(tmp_path, capsys):
    shared_errors = benchmark_module("shared_errors")
    first = _run_folder(tmp_path, "first", [0, 1, 2])
    # the second model is wrong on 2 and 3; on 0 and 1 it is sure of the right class, so the mean of both is right
    p = np.where(np.array(["spiral", "elliptical"] * 5) == "spiral", 0.99, 0.01)
    p[2], p[3] = 0.2, 0.8
    second = _run_folder(tmp_path, "second", [2, 3], p_spiral=p)
    _, n_wrong, mean_p = shared_errors.compare([first, second], "predictions.csv", resamples=200)
    out = capsys.readouterr().out
    assert "## predictions.csv (10 galaxies, 2 models)" in out
    assert "accuracy: first 0.700, second 0.800" in out
    assert "mean of all 2: 0.900 (+0.200 [" in out
    assert "galaxies wrong in k models: k=0 6, k=1 3, k=2 1" in out
    assert "oracle (a right model per galaxy, if any): 0.900; all 2 right: 0.600" in out
    assert "mistakes: 3, 2; shared by all 2: 1" in out
    assert "shared mistakes by source: a 1 of 5, b 0 of 5" in out
    assert n_wrong.tolist() == [1, 1, 2, 1, 0, 0, 0, 0, 0, 0]
    assert mean_p[2] == pytest.approx((0.1 + 0.2) / 2)
    (second / "predictions.csv").write_text("label,predicted\nspiral,spiral\n")
    with pytest.raises(SystemExit, match="missing column"):
        shared_errors.compare([first, second], "predictions.csv")


def test_shared_errors_draws_the_mistakes_all_models_share_and_keeps_an_existing_gallery(tmp_path, capsys):
    shared_errors = benchmark_module("shared_errors")
    folders = [_run_folder(tmp_path, f"m{k}", [0, 7] + ([3] if k else [])) for k in range(3)]
    frame = pd.read_csv(folders[0] / "predictions.csv")
    frame["image_path"] = [str(tmp_path / f"g{i}.png") for i in range(10)]
    frame["votes_own_class"] = [0.65, np.nan, 0.95, 0.85, np.nan, 0.75, 0.9, 0.62, np.nan, 0.99]
    for i in range(10):
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(tmp_path / f"g{i}.png")
    frame.to_csv(folders[0] / "predictions.csv", index=False)
    gallery = tmp_path / "shared.png"
    assert shared_errors.main([*map(str, folders), "--gallery", str(gallery)]) == 0
    out = capsys.readouterr().out
    assert "galaxies wrong in k models: k=0 7, k=1 0, k=2 1, k=3 2" in out
    assert "shared mistakes by own-class vote: (0.6, 0.7] 2 of 2, (0.7, 0.8] 0 of 1" in out
    assert f"gallery: 2 shared mistakes drawn to {gallery}" in out
    assert Image.open(gallery).size[0] > 100
    with pytest.raises(SystemExit):
        shared_errors.main([*map(str, folders), "--gallery", str(gallery)])
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shared_errors.main([str(folders[0])])
    assert "expected two or more evaluate folders" in capsys.readouterr().err


def test_serve_preprocess_variants_are_checked(tmp_path):
    bench = benchmark_module("bench_serve_preprocess")
    assert bench.variant("image_size=40", TINY_PREPROCESS).image_size == 40
    with pytest.raises(SystemExit, match="expected field=value with a field of resize, crop"):
        bench.variant("colour=blue", TINY_PREPROCESS)
    with pytest.raises(SystemExit, match="'big' is not a int like 32"):
        bench.variant("image_size=big", TINY_PREPROCESS)
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(SystemExit, match="grey: .*bad.jpg"):
        bench.altered_copies(pd.DataFrame({"image_path": [str(tmp_path / "bad.jpg")]}), tmp_path, "grey", bench.grey)
    with pytest.raises(SystemExit, match="variant survey:blur: expected one of survey:sky, survey:colour"):
        bench.changes(["survey:blur"], SurveyConfig())


def test_serve_preprocess_survey_copies_alter_every_image_the_same_way_each_time(tmp_path):
    bench = benchmark_module("bench_serve_preprocess")
    catalogue = make_catalogue(tmp_path / "cat", n=4, size=48)
    sky = bench.changes(["survey:sky", "crop=40"], SurveyConfig(sky_offset=[0.05, 0.1]))
    assert list(sky) == ["survey:sky"]
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    twice = [bench.altered_copies(catalogue, tmp_path / d, "survey:sky", sky["survey:sky"]) for d in ("a", "b")]
    for i, row in catalogue.reset_index(drop=True).iterrows():
        before = np.asarray(Image.open(row["image_path"]).convert("RGB"), dtype=float)
        after = [np.asarray(Image.open(t["image_path"][i]), dtype=float) for t in twice]
        assert (after[0] == after[1]).all()  # seeded by the row: every model sees the same altered image
        offset = (after[0] - before)[before.max(axis=2) < 200].mean(axis=0)  # below the clip at white
        assert ((offset > 255 * 0.05 - 1) & (offset < 255 * 0.1 + 1)).all(), offset


def test_serve_preprocess_scores_variants_against_the_stored_preprocess(tmp_path, monkeypatch, capsys):
    bench = benchmark_module("bench_serve_preprocess")
    catalogue = make_catalogue(tmp_path / "cat", n=20, size=48)
    catalogue.to_parquet(tmp_path / "splits.parquet")
    model = tmp_path / "model.pt"
    resnet.save_model(model, tiny_network(), TINY_MODEL, TINY_PREPROCESS)
    argv = [
        "x",
        "grey",
        "crop=40",
        "copy",
        "survey:gamma",
        "--model",
        str(model),
        "--splits",
        str(tmp_path / "splits.parquet"),
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--ood", "", "--resamples", "50"])
    bench.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | test accuracy | difference [95%]")
    # the stored preprocess against itself is a difference of exactly 0
    assert table[2].startswith("| stored | ") and "| +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |" in table[2]
    assert [row.split(" | ")[0] for row in table[2:]] == ["| stored", "| grey", "| crop=40", "| copy", "| survey:gamma"]
    assert "test: 4 images" in out
    # grey copies are one band in three channels
    grey = bench.altered_copies(catalogue.head(1), tmp_path, "grey", bench.grey)
    (tmp_path / "copy").mkdir()
    copied = bench.altered_copies(catalogue.head(1), tmp_path / "copy", "copy", bench.unchanged)
    original = Image.open(catalogue["image_path"].iloc[0]).convert("RGB")
    assert (np.asarray(Image.open(copied["image_path"][0])) == np.asarray(original)).all()
    pixels = np.asarray(Image.open(grey["image_path"][0]))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_recipes_add_reads_a_run_folder_and_replaces_a_row_of_the_same_name(tmp_path, monkeypatch):
    recipes = benchmark_module("recipes")
    monkeypatch.setattr(recipes, "CSV", tmp_path / "recipes.csv")
    run = tmp_path / "wide-35ep-seed1"
    run.mkdir()
    (run / "minutes.txt").write_text(
        "recipe: -S train.lr=0.0007447144904083078 -S model.dropout=0.1 -S model.dropout=0.2; "
        "epochs 35; train_s=2841 evaluate_s=61\n"
    )
    metrics = {"test_accuracy": 0.9, "test_accuracy_ci_low": 0.89, "test_accuracy_ci_high": 0.91, "ood_accuracy": 0.8}
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = recipes.add(run, "wide", "quiet")
    assert row["recipe"] == "-S train.lr=0.000745 -S model.dropout=0.2"
    assert (row["epochs"], row["seed"], row["train_min"], row["ood_acc"]) == (35, 1, 47.4, 0.8)
    (run / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 0.95}))
    recipes.add(run, "wide", "shared")
    table = pd.read_csv(recipes.CSV)
    assert list(table["name"]) == ["wide"] and table["test_acc"].item() == 0.95 and table["load"].item() == "shared"
    (run / "metrics.json").write_text("{}")
    with pytest.raises(recipes.RunFolderError, match="wide-35ep-seed1/metrics.json: not evaluate's metrics"):
        recipes.add(run, "wide", "quiet")
    (run / "minutes.txt").unlink()
    with pytest.raises(recipes.RunFolderError, match="wide-35ep-seed1/minutes.txt: not found"):
        recipes.add(run, "wide", "quiet")
    assert pd.read_csv(recipes.CSV)["test_acc"].item() == 0.95  # a refused run leaves the table as it was


def test_shared_gallery_reads_relative_image_paths_from_root(tmp_path, monkeypatch):
    shared_errors = benchmark_module("shared_errors")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "imgs" / "a.png")
    first = pd.DataFrame({"image_path": ["imgs/a.png"], "label": ["spiral"]}, index=["a"])
    read = []
    monkeypatch.setattr(shared_errors, "load_rgb", lambda p: read.append(p) or Image.open(p).convert("RGB"))
    monkeypatch.chdir(tmp_path / "imgs")  # not where the path starts: only --root finds the image
    out = tmp_path / "g.png"
    assert shared_errors.shared_gallery(first, np.array([2]), np.array([0.1]), 2, out, root=tmp_path) == 1
    assert read == [tmp_path / "imgs" / "a.png"] and out.is_file()


def test_bench_step_arms_time_the_product_step_and_freeze_only_layer4():
    """bench_step's arms: the baseline's optimizer is the multi-tensor one, the others fit()'s fused one; the
    frozen arm leaves layer4's weights where they were and trains the rest; the 2x arm steps twice the images."""
    bench_step = benchmark_module("bench_step")
    torch.manual_seed(0)
    steps = {arm: bench_step.make_step(arm, "resnet18", 32, 4, None) for arm in bench_step.ARMS}
    for arm, step in steps.items():
        opt, model = step.optimizer, step.model
        assert bool(opt.defaults["fused"]) is (arm != "foreach")
        before = {n: w.detach().clone() for n, w in model.named_parameters()}
        fwd, bwd, upd, n = step()
        assert min(fwd, bwd, upd) > 0 and n == (8 if arm == "fused, batch 2x" else 4)
        moved = {n: not torch.equal(before[n], w) for n, w in model.named_parameters()}
        layer4 = [m for name, m in moved.items() if name.startswith("backbone.layer4.")]
        rest = [m for name, m in moved.items() if not name.startswith("backbone.layer4.")]
        assert layer4 and any(rest)
        assert not any(layer4) if arm == "fused, layer4 frozen" else all(layer4)


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench_step", ["--arch", "vgg"], "argument --arch: invalid choice: 'vgg'"),
        ("bench_step", ["--rounds", "0"], "argument --rounds: expected a whole number of at least 1, got '0'"),
        ("bench_step", ["--batch", "-2"], "argument --batch: expected a whole number of at least 1, got '-2'"),
        ("bench_compile", ["--arch", "vgg"], "argument --arch: invalid choice: 'vgg'"),
        ("bench_compile", ["--steps", "0"], "argument --steps: expected a whole number of at least 1, got '0'"),
        ("bench_compile", ["--side", "big"], "argument --side: expected a whole number of at least 1, got 'big'"),
    ],
)
def test_step_benchmarks_refuse_bad_arguments_in_one_line(monkeypatch, capsys, script, argv, message):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # bench_compile: bench_step
    module = benchmark_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
