"""The `galmorph join` stage through the CLI: outputs, report, terminal summary, and one-line errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from galmorph.cli import main
from galmorph.config import CLASSES

from .conftest import REPO
from .test_catalog import BASE, HEADER, LABELLED, row, write_csv, write_mapping


def run_join(tmp_path: Path, raw: Path) -> tuple[int, dict[str, Path]]:
    out = {name: tmp_path / "out" / name for name in ("joined.parquet", "uncertain.parquet", "join.json")}
    sets = [
        f"data.raw_dir={raw}",
        f"join.out={out['joined.parquet']}",
        f"join.uncertain_out={out['uncertain.parquet']}",
        f"join.report={out['join.json']}",
    ]
    argv = ["--params", str(REPO / "params.yaml")] + [a for s in sets for a in ("-S", s)] + ["join"]
    return main(argv), out


def catalogue_raw(tmp_path: Path, table2_rows: list[list[str]]) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "GalaxyZoo1_DR_table2.csv", HEADER, table2_rows)
    write_mapping(raw / "gz2_filename_mapping.csv", [(BASE + i, "original", 100 + i) for i in range(1, 10)])
    source = {
        "source": "synthetic",
        "kind": "catalogue",
        "table2": str(raw / "GalaxyZoo1_DR_table2.csv"),
        "mapping": str(raw / "gz2_filename_mapping.csv"),
        "images_dir": str(raw / "images"),
        "md5": {},
    }
    (raw / "source.json").write_text(json.dumps(source))
    return raw


def test_join_stage_writes_catalogue_uncertain_and_report(tmp_path, capsys):
    raw = catalogue_raw(tmp_path, [row(i, f, el, cs) for i, (f, el, cs) in enumerate(LABELLED, 1)])
    rc, out = run_join(tmp_path, raw)
    assert rc == 0
    joined = pd.read_parquet(out["joined.parquet"])
    uncertain = pd.read_parquet(out["uncertain.parquet"])
    report = json.loads(out["join.json"].read_text())
    assert list(joined.columns[:6]) == ["galaxy_id", "image_path", "label", "label_id", "p_spiral", "p_elliptical"]
    assert len(joined) == 6 and len(uncertain) == 2 and set(joined["label"]) == set(CLASSES)
    assert joined["image_path"].iloc[0] == f"{raw}/images/101.jpg"
    assert report["source"] == "synthetic" and report["rows_read"] == {"table2": 8, "mapping": 9}
    assert report["unmatched"] == {"table2": 0, "mapping": 1}
    assert report["classes"] == {"spiral": 3, "elliptical": 3} and report["uncertain"] == 2
    assert report["disagreement"]["rows"] == 5
    shown = capsys.readouterr().out
    assert "unmatched: mapping" in shown and "5 of 8 (62.5%)" in shown


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    raw = catalogue_raw(tmp_path, [row(1), row(2, P_CS="n/a?")])
    rc, out = run_join(tmp_path, raw)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("galmorph join: error: ") and "line 3, column P_CS" in err
    assert not any(p.exists() for p in out.values())


def test_missing_source_json(tmp_path, capsys):
    rc, _ = run_join(tmp_path, tmp_path / "nowhere")
    assert rc == 1 and "source.json: not found (run `galmorph fetch` first)" in capsys.readouterr().err


def test_manifest_source_through_the_stage(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(tmp_path / "labels.csv", ["filename", "label"], [["ça va/é 1.jpg", "S"], ["b.jpg", "E"], ["c.jpg", "?"]])
    source = {
        "source": "manifest",
        "kind": "manifest",
        "path": str(tmp_path / "labels.csv"),
        "image_root": str(tmp_path / "imgs"),
        "path_column": "filename",
        "id_column": None,
        "label_column": "label",
        "label_map": {"S": "spiral", "E": "elliptical"},
        "vote_columns": None,
        "vote_threshold": 0.8,
        "md5": {},
    }
    (raw / "source.json").write_text(json.dumps(source))
    rc, out = run_join(tmp_path, raw)
    assert rc == 0
    joined = pd.read_parquet(out["joined.parquet"])
    assert joined["image_path"].tolist() == [f"{tmp_path}/imgs/ça va/é 1.jpg", f"{tmp_path}/imgs/b.jpg"]
    assert json.loads(out["join.json"].read_text())["dropped_labels"] == {"?": 1}
    assert len(pd.read_parquet(out["uncertain.parquet"])) == 0


@pytest.mark.realdata
def test_real_galaxyzoo_manifest(tmp_path, real_galaxyzoo):
    raw = tmp_path / "raw"
    raw.mkdir()
    source = {
        "source": "manifest",
        "kind": "manifest",
        "path": str(real_galaxyzoo / "labels.csv"),
        "image_root": None,
        "path_column": "filename",
        "id_column": None,
        "label_column": "label",
        "label_map": {"spiral": "spiral", "elliptical": "elliptical"},
        "vote_columns": None,
        "vote_threshold": 0.8,
    }
    (raw / "source.json").write_text(json.dumps(source))
    with (real_galaxyzoo / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = Counter(r["label"] for r in rows)
    rc, out = run_join(tmp_path, raw)
    assert rc == 0
    joined = pd.read_parquet(out["joined.parquet"])
    report = json.loads(out["join.json"].read_text())
    assert report["rows_read"] == {"manifest": len(rows)} == {"manifest": 15259}
    assert report["classes"] == {"spiral": counts["spiral"], "elliptical": counts["elliptical"]}
    assert report["dropped_labels"] == {"other": counts["other"]}
    assert joined["galaxy_id"].is_unique and joined["galaxy_id"].iloc[0] == rows[0]["filename"]
    first = Path(joined["image_path"].iloc[0])
    assert first.is_file() and first == real_galaxyzoo / rows[0]["filename"]


def test_synthetic_catalogues_join_as_generated(tmp_path):
    """The synthetic source's files (official format, with its duplicate and coadd mapping rows) join cleanly;
    expected numbers are recomputed here with plain pandas."""
    from galmorph.config import JoinConfig
    from galmorph.data.join import build_catalogue
    from galmorph.data.sources.synthetic.population import generate_catalogues

    table2, mapping = generate_catalogues(400, 0.8, seed=3)
    table2.to_csv(tmp_path / "t2.csv", index=False)
    mapping.to_csv(tmp_path / "m.csv", index=False)
    source = {"kind": "catalogue", "table2": "t2.csv", "mapping": "m.csv", "images_dir": "img"}
    cfg = JoinConfig(label_rule="flags", threshold=0.8, out="-", uncertain_out="-", report="-")
    result = build_catalogue(source, cfg, root=tmp_path)
    first = mapping.drop_duplicates("objid")
    matched = table2[table2["OBJID"].isin(first["objid"])]
    assert result.report["matched"] == len(matched)
    assert result.report["duplicates"]["mapping_duplicate_objid_rows"] == len(mapping) - len(first)
    assert result.report["classes"] == {"spiral": matched["SPIRAL"].sum(), "elliptical": matched["ELLIPTICAL"].sum()}
    assert result.report["uncertain"] == matched["UNCERTAIN"].sum()
    assert set(result.joined["image_path"]) <= {f"img/{a}.jpg" for a in first["asset_id"]}
