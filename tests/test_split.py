"""Splits: stratified, seeded, grouped by galaxy, repeated; bad fractions and tiny classes are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph.cli import main
from galmorph.config import CLASSES, SplitConfig
from galmorph.data.splits import PARTS, make_splits, split_report, stratified_split
from galmorph.errors import UserError

from .conftest import REPO

CFG = SplitConfig(seed=42, val_fraction=0.15, test_fraction=0.15, repeats=3, out="s.parquet", report="s.json")


def manifest(n_spiral: int = 140, n_elliptical: int = 60, *, duplicates: int = 0, seed: int = 0) -> pd.DataFrame:
    """A manifest in the catalogue contract; `duplicates` galaxies get a second (and third) image."""
    labels = ["spiral"] * n_spiral + ["elliptical"] * n_elliptical
    ids = [f"g{i:05d}" for i in range(len(labels))]
    df = pd.DataFrame({"galaxy_id": ids, "image_path": [f"img/{g}.jpg" for g in ids], "label": labels})
    if duplicates:
        extra = df.sample(duplicates, random_state=seed)
        df = pd.concat([df, extra.assign(image_path=extra["image_path"] + ".b"), extra.iloc[::2]], ignore_index=True)
    df["label_id"] = df["label"].map(CLASSES.index)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_split_is_stratified_and_has_the_requested_fractions():
    df = manifest()
    split = stratified_split(df, 0.15, 0.15, seed=0)
    assert split.index.equals(df.index) and set(split) == set(PARTS)
    overall = (df["label"] == "spiral").mean()
    for part in PARTS:
        rows = df[split == part]
        assert abs((rows["label"] == "spiral").mean() - overall) < 0.03, part
    assert (split == "test").sum() == 30 and (split == "val").sum() == 30 and (split == "train").sum() == 140


def test_split_is_deterministic_and_ignores_row_order():
    df = manifest()
    a = stratified_split(df, 0.2, 0.1, seed=7)
    b = stratified_split(df, 0.2, 0.1, seed=7)
    shuffled = df.sample(frac=1.0, random_state=3)
    c = stratified_split(shuffled, 0.2, 0.1, seed=7)
    pd.testing.assert_series_equal(a, b)
    assert dict(zip(df["galaxy_id"], a, strict=True)) == dict(zip(shuffled["galaxy_id"], c, strict=True))
    assert not stratified_split(df, 0.2, 0.1, seed=8).equals(a)


def test_no_galaxy_is_in_two_parts():
    df = manifest(duplicates=40)
    assert not df["galaxy_id"].is_unique
    out = make_splits(df, CFG)
    for column in ["split", "split_1", "split_2", "split_3"]:
        parts_per_galaxy = out.groupby("galaxy_id")[column].nunique()
        assert (parts_per_galaxy == 1).all(), column


def test_make_splits_adds_repeats_that_differ():
    df = manifest().assign(ra=np.arange(200.0), split="stale", split_9="stale")
    out = make_splits(df, CFG)
    assert list(out.columns) == [*[c for c in df.columns if not c.startswith("split")], *out.columns[-4:]]
    assert list(out.columns[-4:]) == ["split", "split_1", "split_2", "split_3"]
    for k in (1, 2, 3):
        assert (out[f"split_{k}"] != out["split"]).mean() > 0.2
        pd.testing.assert_series_equal(
            out[f"split_{k}"], stratified_split(df, 0.15, 0.15, seed=42 + k), check_names=False
        )
    assert not out["split_1"].equals(out["split_2"])
    assert "split" in make_splits(df, SplitConfig(**{**CFG.__dict__, "repeats": 0})).columns


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (0.0, 0.2, "split.val_fraction: expected a fraction strictly between 0 and 1, got 0.0"),
        (0.2, 1.0, "split.test_fraction: expected a fraction strictly between 0 and 1, got 1.0"),
        (0.5, 0.5, "split.val_fraction + split.test_fraction = 1: must be under 1"),
        (-0.1, 0.2, "split.val_fraction"),
    ],
)
def test_bad_fractions_are_user_errors(val, test, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("+", r"\+")):
        stratified_split(manifest(), val, test, seed=0)


def test_too_few_galaxies_of_a_class_names_it():
    with pytest.raises(UserError, match="class 'elliptical' has 2 galaxies: a stratified train/val/test split needs"):
        stratified_split(manifest(50, 2), 0.15, 0.15, seed=0)
    with pytest.raises(UserError, match="class 'spiral' has 0 galaxies"):
        stratified_split(manifest(0, 50), 0.15, 0.15, seed=0)
    with pytest.raises(UserError, match="class 'elliptical' has only 3 galaxies: none landed in"):
        stratified_split(manifest(200, 3), 0.15, 0.15, seed=0)
    with pytest.raises(UserError, match="split.test_fraction 0.01 of 20 galaxies gives 0 test galaxies"):
        stratified_split(manifest(10, 10), 0.3, 0.01, seed=0)


def test_unknown_labels_are_user_errors():
    df = manifest().assign(label=lambda d: d["label"].replace({"spiral": "Sp"}))
    with pytest.raises(UserError, match="column label: unexpected value\\(s\\) 'Sp'"):
        stratified_split(df, 0.15, 0.15, seed=0)


def test_report_counts_parts_classes_and_overlap():
    df = manifest(duplicates=10)
    out = make_splits(df, CFG)
    report = split_report(out, CFG)
    assert sum(report["galaxies"].values()) == df["galaxy_id"].nunique()
    assert sum(report["images"].values()) == len(df)
    assert sum(sum(c.values()) for c in report["classes"].values()) == len(df)
    assert report["requested"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert abs(report["fractions"]["test"] - 0.15) < 0.01
    assert set(report["test_overlap_with_main"]) == {"split_1", "split_2", "split_3"}
    assert all(0.0 <= v < 0.5 for v in report["test_overlap_with_main"].values())


def run_split(tmp_path: Path, manifest_path: Path, *extra: str) -> tuple[int, dict[str, Path]]:
    out = {"splits.parquet": tmp_path / "out" / "splits.parquet", "split.json": tmp_path / "out" / "split.json"}
    sets = [
        f"select.out={manifest_path}",
        f"split.out={out['splits.parquet']}",
        f"split.report={out['split.json']}",
        *extra,
    ]
    argv = ["--params", str(REPO / "params.yaml")] + [a for s in sets for a in ("-S", s)] + ["split"]
    return main(argv), out


def test_split_stage_writes_splits_and_report(tmp_path, capsys):
    path = tmp_path / "manifest.parquet"
    manifest().to_parquet(path)
    rc, out = run_split(tmp_path, path, "split.repeats=2")
    assert rc == 0
    splits = pd.read_parquet(out["splits.parquet"])
    report = json.loads(out["split.json"].read_text())
    assert {"split", "split_1", "split_2"} <= set(splits.columns) and "split_3" not in splits.columns
    assert report["images"] == splits["split"].value_counts().to_dict()
    assert "train" in capsys.readouterr().out


def test_split_stage_errors_are_one_line(tmp_path, capsys):
    rc, out = run_split(tmp_path, tmp_path / "missing.parquet")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "run `galmorph select` first" in err
    path = tmp_path / "manifest.parquet"
    manifest().to_parquet(path)
    rc, out = run_split(tmp_path, path, "split.test_fraction=0.9")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "must be under 1" in err
    assert not any(p.exists() for p in out.values())
