"""The `select` stage: manifest, dropped list and report, class folders, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import galmorph.data.select as select_module
from galmorph.cli import main
from galmorph.config import CLASSES, SelectConfig
from galmorph.data.select import (
    CLASS_FOLDER_NAMES,
    SAME_IMAGE,
    SAME_IMAGE_CONFLICT,
    build_class_folders,
    select_catalogue,
)
from galmorph.errors import UserError
from galmorph.io import file_md5

from .conftest import REPO
from .test_images import write_image_zoo

# same_content off: the zoo holds one picture under several names on purpose (spaces, unicode, a symlink)
CFG = SelectConfig(
    verify="decode",
    workers=1,
    class_folders=None,
    out="m.parquet",
    dropped="d.csv",
    report="r.json",
    same_content=False,
)


def zoo_catalogue(root: Path, *, absolute: bool = True) -> tuple[pd.DataFrame, dict]:
    """A catalogue in join's contract over every kind of file in tests/test_images.py's zoo."""
    expected = write_image_zoo(root)
    rels = list(expected)
    labels = [CLASSES[i % 2] for i in range(len(rels))]
    catalogue = pd.DataFrame(
        {
            "galaxy_id": [f"58{i:04d}" for i in range(len(rels))],
            "image_path": [str(root / r) if absolute else r for r in rels],
            "label": labels,
            "label_id": [CLASSES.index(c) for c in labels],
            "p_spiral": np.linspace(0, 1, len(rels)),
            "p_elliptical": np.linspace(1, 0, len(rels)),
            "ra": np.arange(len(rels), dtype=float),
        }
    )
    return catalogue, expected


def run_select(tmp_path: Path, joined: Path, *extra: str) -> tuple[int, dict[str, Path]]:
    out = {name: tmp_path / "out" / name for name in ("manifest.parquet", "dropped.csv", "select.json")}
    sets = [
        f"join.out={joined}",
        f"select.out={out['manifest.parquet']}",
        f"select.dropped={out['dropped.csv']}",
        f"select.report={out['select.json']}",
        "select.workers=2",
        *extra,
    ]
    argv = ["--params", str(REPO / "params.yaml")] + [a for s in sets for a in ("-S", s)] + ["select"]
    return main(argv), out


def test_select_catalogue_keeps_decodable_rows_and_reports(tmp_path):
    catalogue, expected = zoo_catalogue(tmp_path / "img")
    result = select_catalogue(catalogue, CFG, progress=False)
    kept_rels = [rel for rel, (reason, _) in expected.items() if reason is None]
    assert len(result.manifest) == len(kept_rels)
    assert list(result.manifest.columns) == [*catalogue.columns, "width", "height", "mode"]
    assert set(result.manifest["mode"]) == {"RGB", "RGBA", "L", "I;16", "P", "CMYK", "F", "1 band, BITPIX -32"}
    assert result.manifest["galaxy_id"].is_unique and result.manifest.index.equals(pd.RangeIndex(len(kept_rels)))
    r = result.report
    assert r["rows_in"] == len(expected) and r["kept"] == len(kept_rels) and r["dropped"] == len(result.dropped)
    assert r["dropped_by_reason"]["missing"] == 3 and r["dropped_by_reason"]["corrupt"] == 4
    assert r["dropped_by_reason"]["truncated"] == 3 and r["dropped_by_reason"]["not_an_image"] == 2
    assert r["dropped_by_reason"]["unsupported_format"] == 1 and r["dropped_by_reason"]["non_finite"] == 2
    assert r["dropped_by_reason"]["zero_bytes"] == 1 and r["dropped_by_reason"]["unreadable"] == 1
    assert r["converted_by_mode"] == {"1 band, BITPIX -32": 1, "CMYK": 1, "F": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}
    assert r["converted"] == 7
    assert sum(r["classes"].values()) == r["kept"] and sum(r["dropped_by_class"].values()) == r["dropped"]
    assert list(result.dropped.columns) == ["galaxy_id", "image_path", "reason", "detail"]


def test_files_with_the_same_bytes_are_one_galaxy(tmp_path):
    """Two ids whose files hold the same picture (the GZ2 cut-out tables file 161 galaxies twice): kept once when
    the labels agree, dropped both when they do not, so one picture never lands in train and in test."""
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, 300, dtype=np.uint8).tobytes() for _ in range(3)]
    files = {"a.jpg": 0, "sub/a-again.jpg": 0, "b.jpg": 1, "b2.jpg": 1, "c.jpg": 2, "a-third.jpg": 0}
    for name, picture in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(pictures[picture])
    catalogue = pd.DataFrame(
        {
            "galaxy_id": ["g1", "g2", "g3", "g4", "g5", "g6"],
            "image_path": list(files),
            "label": ["spiral", "spiral", "spiral", "elliptical", "elliptical", "spiral"],
        }
    )
    cfg = dataclasses.replace(CFG, verify="exists", same_content=True)
    result = select_catalogue(catalogue, cfg, root=tmp_path, progress=False)
    assert result.manifest["galaxy_id"].tolist() == ["g1", "g5"]
    dropped = result.dropped.set_index("galaxy_id")
    assert dropped["reason"].to_dict() == {
        "g2": SAME_IMAGE,
        "g3": SAME_IMAGE_CONFLICT,
        "g4": SAME_IMAGE_CONFLICT,
        "g6": SAME_IMAGE,
    }
    assert dropped.loc["g6", "detail"] == "the same file content as galaxy g1, kept"
    assert dropped.loc["g4", "detail"] == "one file, labels that disagree: g3 (spiral), g4 (elliptical)"
    assert result.report["dropped_by_reason"][SAME_IMAGE] == 2 and result.report["kept"] == 2
    assert result.report["dropped_by_reason"][SAME_IMAGE_CONFLICT] == 2
    # an unusable file is no copy of anything: only the kept rows are compared
    (tmp_path / "b.jpg").write_bytes(b"")
    result = select_catalogue(catalogue, cfg, root=tmp_path, progress=False)
    assert result.manifest["galaxy_id"].tolist() == ["g1", "g4", "g5"]
    off = select_catalogue(catalogue, dataclasses.replace(cfg, same_content=False), root=tmp_path, progress=False)
    assert len(off.manifest) == 5
    # copies whose labels disagree can leave nothing: the same clear refusal as no usable image, no empty manifest
    (tmp_path / "x.jpg").write_bytes(pictures[1])
    (tmp_path / "y.jpg").write_bytes(pictures[1])
    conflict = pd.DataFrame({"galaxy_id": ["x", "y"], "image_path": ["x.jpg", "y.jpg"], "label": list(CLASSES)})
    with pytest.raises(UserError, match=r"none of the 2 rows has a usable image \(same_image_other_label 2\)"):
        select_catalogue(conflict, cfg, root=tmp_path, progress=False)


def test_a_file_removed_between_the_check_and_the_comparison_is_dropped_as_missing(tmp_path, monkeypatch):
    """The decode check and the same-bytes comparison read each file at different moments: a file deleted in
    between (a sync, a clean-up) is counted as missing, not a traceback that loses the whole stage."""
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(name.encode() * 50)
    catalogue = pd.DataFrame({"galaxy_id": ["g1", "g2"], "image_path": ["a.jpg", "b.jpg"], "label": ["spiral"] * 2})

    def delete_then_hash(path):
        if Path(path).name == "b.jpg":
            Path(path).unlink()
        return file_md5(path)

    monkeypatch.setattr(select_module, "file_md5", delete_then_hash)
    cfg = dataclasses.replace(CFG, verify="exists", same_content=True)
    result = select_catalogue(catalogue, cfg, root=tmp_path, progress=False)
    assert result.manifest["galaxy_id"].tolist() == ["g1"]
    assert result.dropped[["galaxy_id", "reason"]].values.tolist() == [["g2", "missing"]]
    assert "while comparing contents" in result.dropped["detail"].iloc[0] and str(tmp_path) not in str(result.dropped)
    assert result.report["dropped_by_reason"]["missing"] == 1


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    catalogue, expected = zoo_catalogue(tmp_path, absolute=False)
    monkeypatch.chdir(tmp_path)
    result = select_catalogue(catalogue, dataclasses.replace(CFG, verify="exists"), progress=False)
    assert result.report["dropped_by_reason"]["missing"] == 3 and result.report["dropped_by_reason"]["zero_bytes"] == 1
    assert result.manifest["width"].isna().all()  # exists mode does not decode
    assert result.manifest["image_path"].iloc[0] == "good.jpg"  # paths are kept as the catalogue wrote them


def test_select_stage_writes_manifest_dropped_and_report(tmp_path, capsys):
    catalogue, expected = zoo_catalogue(tmp_path / "img")
    joined = tmp_path / "joined.parquet"
    catalogue.to_parquet(joined)
    rc, out = run_select(tmp_path, joined)
    assert rc == 0
    manifest = pd.read_parquet(out["manifest.parquet"])
    dropped = pd.read_csv(out["dropped.csv"])
    report = json.loads(out["select.json"].read_text())
    assert len(manifest) + len(dropped) == len(catalogue) == report["rows_in"]
    reasons = dict(zip(dropped["image_path"], dropped["reason"], strict=True))
    assert reasons[str(tmp_path / "img" / "truncated.jpg")] == "truncated"
    assert reasons[str(tmp_path / "img" / "text.jpg")] == "not_an_image"
    assert str(tmp_path / "img" / "dir with space" / "ünïcode ✓" / "galaxy ü 1.jpg") in set(manifest["image_path"])
    assert manifest["width"].dtype == "Int64" and (manifest["width"] == 48).all()
    shown = capsys.readouterr().out
    assert "dropped: truncated" in shown and "converted from CMYK" in shown


def test_missing_joined_table_is_one_line(tmp_path, capsys):
    rc, out = run_select(tmp_path, tmp_path / "nowhere" / "joined.parquet")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "joined.parquet: not found (run `galmorph join` first)" in err
    assert not any(p.exists() for p in out.values())


def test_no_image_at_all_names_the_folder(tmp_path, capsys):
    images = tmp_path / "raw" / "images"
    images.mkdir(parents=True)
    catalogue = pd.DataFrame(
        {
            "galaxy_id": ["1", "2", "3"],
            "image_path": [str(images / f"{i}.jpg") for i in range(3)],
            "label": ["spiral"] * 3,
        }
    )
    joined = tmp_path / "joined.parquet"
    catalogue.to_parquet(joined)
    rc, out = run_select(tmp_path, joined)
    err = capsys.readouterr().err
    assert rc == 1 and f"no image found under {images}: 0 of 3 rows have a file" in err
    assert not any(p.exists() for p in out.values())


def test_nothing_decodes_says_why(tmp_path):
    (tmp_path / "a.jpg").write_text("not a jpeg")
    catalogue = pd.DataFrame({"galaxy_id": ["1"], "image_path": [str(tmp_path / "a.jpg")], "label": ["spiral"]})
    with pytest.raises(UserError, match=r"none of the 1 rows has a usable image \(not_an_image 1\); e\.g\. .*a\.jpg"):
        select_catalogue(catalogue, CFG, progress=False)


def test_class_folders_are_symlinks_rebuilt_in_place(tmp_path, monkeypatch):
    catalogue, _ = zoo_catalogue(tmp_path / "img")
    monkeypatch.chdir(tmp_path)
    relative = catalogue.assign(image_path=catalogue["image_path"].map(lambda p: os.path.relpath(p, tmp_path)))
    manifest = select_catalogue(relative, CFG, progress=False).manifest
    dest = tmp_path / "imagefolder"
    counts = build_class_folders(manifest, dest)
    assert counts == manifest["label"].value_counts().to_dict()
    for cls, folder in CLASS_FOLDER_NAMES.items():
        links = sorted((dest / folder).iterdir())
        assert len(links) == counts[cls] and all(p.is_symlink() and p.is_file() for p in links)
        assert not any(os.path.isabs(os.readlink(p)) for p in links)  # relative: the repo can move
    # names with spaces and unicode are kept as they are
    names = {p.name for f in CLASS_FOLDER_NAMES.values() for p in (dest / f).iterdir()}
    assert "galaxy ü 1.jpg" in names

    # a second run replaces the tree (here with fewer images) and leaves no temporary folders behind
    counts = build_class_folders(manifest.iloc[:2], dest)
    assert sum(counts.values()) == 2 == sum(len(list((dest / f).iterdir())) for f in CLASS_FOLDER_NAMES.values())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_class_folders_name_clashes_get_a_suffix(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "1.jpg").write_bytes(b"x")
    manifest = pd.DataFrame(
        {"image_path": [str(tmp_path / "a" / "1.jpg"), str(tmp_path / "b" / "1.jpg")], "label": ["spiral"] * 2}
    )
    build_class_folders(manifest, tmp_path / "tree")
    links = sorted((tmp_path / "tree" / "spirals").iterdir())
    assert [p.name for p in links] == ["1-2.jpg", "1.jpg"]
    assert {os.readlink(p) for p in links} == set(manifest["image_path"])  # absolute paths stay absolute


def test_class_folders_never_replace_someone_elses_folder(tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "precious.csv").write_text("1,2\n")
    manifest = pd.DataFrame({"image_path": ["x.jpg"], "label": ["spiral"]})
    with pytest.raises(UserError, match="holds precious.csv, which this stage did not make"):
        build_class_folders(manifest, dest)
    assert (dest / "precious.csv").exists()


def test_a_bad_class_folders_path_fails_before_decoding(tmp_path, monkeypatch):
    catalogue, _ = zoo_catalogue(tmp_path / "img")
    monkeypatch.setattr("galmorph.data.select.check_images", lambda *a, **k: pytest.fail("decoded first"))
    cfg = dataclasses.replace(CFG, class_folders=str(tmp_path / "img"))
    with pytest.raises(UserError, match="select.class_folders: .* holds"):
        select_catalogue(catalogue, cfg, progress=False)
