"""train.pseudo (self-training): `galmorph predict`'s verdicts on unlabelled images join the training split.

The table is predict's own output, so these tests write it the way predict does (path, p_<class>, label, error)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph import cli
from galmorph.config import replace
from galmorph.data.dataset import PSEUDO_DATASET, pseudo_rows, soft_targets
from galmorph.errors import UserError
from galmorph.models.inference import predict_logits
from galmorph.training.loop import fit
from tests.training_utils import make_catalogue, one_thread, tiny_params, write_params

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_catalogue(tmp_path_factory.mktemp("tiny_pseudo"), n=40)


def _images(folder: Path, n: int) -> list[str]:
    """n unlabelled images, relative to `folder`: even ones noise, odd ones a flat grey (two looks no galaxy has)."""
    rng = np.random.default_rng(3)
    (folder / "new").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) if i % 2 == 0 else np.full((48, 48, 3), 90, np.uint8)
        Image.fromarray(img).save(folder / "new" / f"u{i}.png")
        names.append(f"new/u{i}.png")
    return names


def _table(folder: Path, rows: list[tuple[str, float, str, str]]) -> Path:
    """A predict output: (path, p_spiral, label, error) per row."""
    df = pd.DataFrame(rows, columns=["path", "p_spiral", "label", "error"])
    df.insert(2, "p_elliptical", 1 - df["p_spiral"])
    df["ood_score"] = 0.5
    out = folder / "teacher.csv"
    df.to_csv(out, index=False)
    return out


def test_rows_with_a_class_verdict_become_training_rows_and_the_rest_are_counted(catalogue, tmp_path):
    names = _images(tmp_path, 5)
    table = _table(
        tmp_path,
        [
            (names[0], 0.95, "spiral", ""),
            (names[1], 0.08, "elliptical", ""),
            (names[2], 0.6, "uncertain", ""),
            (names[3], 0.97, "unlike training data", ""),
            (names[4], float("nan"), "", "cannot read image"),
        ],
    )
    pseudo = pseudo_rows(table, catalogue)
    assert pseudo.rows["image_path"].tolist() == [str(tmp_path / n) for n in names[:2]]  # from the table's folder
    assert pseudo.rows["label_id"].tolist() == [0, 1] and set(pseudo.rows["dataset"]) == {PSEUDO_DATASET}
    assert pseudo.left_out == {"uncertain": 1, "unlike training data": 1, "unreadable": 1}
    # train.loss: soft trains toward the teacher's probabilities
    np.testing.assert_allclose(soft_targets(pseudo.rows), [[0.95, 0.05], [0.08, 0.92]], atol=1e-6)
    assert pseudo.describe() == (
        "2 pseudo-labelled images (1 spiral, 1 elliptical); left out 1 uncertain, 1 unlike training data, 1 unreadable"
    )


def test_pseudo_tables_fail_in_one_line_naming_the_row(catalogue, params, tmp_path):
    names = _images(tmp_path, 2)
    labelled = catalogue.loc[catalogue["split"] == "test", "image_path"].iloc[0]
    with pytest.raises(UserError, match=r"teacher.csv: row 2: .*g00\d\d.jpg is already in the splits \(test\)"):
        pseudo_rows(_table(tmp_path, [(names[0], 0.9, "spiral", ""), (labelled, 0.9, "spiral", "")]), catalogue)
    with pytest.raises(UserError, match=r"row 2, column path: expected an image file, got 'new/gone.png'"):
        pseudo_rows(_table(tmp_path, [(names[0], 0.9, "spiral", ""), ("new/gone.png", 0.9, "spiral", "")]), catalogue)
    with pytest.raises(UserError, match="row 3: new/u0.png repeats row 1"):
        rows = [(names[0], 0.9, "spiral", ""), (names[1], 0.9, "spiral", ""), (names[0], 0.9, "spiral", "")]
        pseudo_rows(_table(tmp_path, rows), catalogue)
    with pytest.raises(UserError, match=r"row 1, column p_spiral: expected a probability in \[0, 1\], got '1.5'"):
        pseudo_rows(_table(tmp_path, [(names[0], 1.5, "spiral", "")]), catalogue)
    with pytest.raises(UserError, match=r"no row's label is spiral or elliptical \(2 uncertain\)"):
        pseudo_rows(_table(tmp_path, [(n, 0.5, "uncertain", "") for n in names]), catalogue)
    (tmp_path / "bare.csv").write_text("path,label\nnew/u0.png,spiral\n")
    with pytest.raises(UserError, match="p_spiral"):
        pseudo_rows(tmp_path / "bare.csv", catalogue)
    with pytest.raises(UserError, match="train.pseudo needs images"):
        replace(params.train, mode="frozen", pseudo="x.csv")


def test_a_bad_setting_or_table_is_refused_before_train_or_tune_opens_an_mlflow_run(
    catalogue, params, tmp_path, mlflow_uri, capsys
):
    """A table row refused a second into fit() used to leave the stage's MLflow run behind, marked failed."""
    import mlflow

    names = _images(tmp_path, 1)
    labelled = catalogue.loc[catalogue["split"] == "test", "image_path"].iloc[0]
    pseudo = _table(tmp_path, [(names[0], 0.9, "spiral", ""), (labelled, 0.9, "spiral", "")])
    outliers = tmp_path / "outliers.csv"
    outliers.write_text(f"image_path\n{names[0]}\nnew/gone.png\n")
    p = tiny_params(params, tmp_path, mode="finetune", epochs=1, loader="cache")
    for setting, message in (
        ({"progressive_start": p.preprocess.image_size}, "below preprocess.image_size"),
        ({"pseudo": str(pseudo)}, "teacher.csv: row 2: "),
        ({"outliers": str(outliers)}, "outliers.csv: row 2, column image_path: expected an image file"),
    ):
        _, path = write_params(dataclasses.replace(p, train=replace(p.train, **setting)), tmp_path, catalogue)
        for stage in ("train", "tune"):
            assert cli.main(["--params", path, stage]) == 1, stage
            assert message in capsys.readouterr().err, stage
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_the_model_learns_the_teachers_labels_on_the_pseudo_rows(catalogue, params, tmp_path):
    """Noise labelled spiral and flat grey labelled elliptical by the 'teacher': after training with train.pseudo
    the model gives those images those labels, against the same fit without the table; the galaxies still train."""
    names = _images(tmp_path, 8)
    table = _table(tmp_path, [(n, 0.95 if i % 2 == 0 else 0.05, "spiral" if i % 2 == 0 else "elliptical", "")
                              for i, n in enumerate(names)])  # fmt: skip
    p = tiny_params(params, tmp_path, mode="finetune", epochs=5, lr=0.003, loader="cache")
    plain = fit(catalogue, p, progress=False)
    taught = fit(catalogue, dataclasses.replace(p, train=replace(p.train, pseudo=str(table))), progress=False)
    assert plain.pseudo_images == 0 and taught.pseudo_images == 8
    assert taught.best_metrics["val_acc"] >= 0.875

    def p_teacher(model) -> float:
        logits = predict_logits(
            model, pd.DataFrame({"image_path": [str(tmp_path / n) for n in names]}), p.preprocess,
            batch_size=8, num_workers=0, device="cpu", precision="fp32",
        )  # fmt: skip
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
        return float(np.mean([probs[i, i % 2] for i in range(len(names))]))  # the teacher's class: 0 even, 1 odd

    assert p_teacher(taught.model) > 0.8
    assert p_teacher(taught.model) > p_teacher(plain.model) + 0.2
