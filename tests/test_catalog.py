"""The Galaxy Zoo CSV reader, the catalogue join and the manifest reader on small hand-made catalogues whose every expected number is worked out by hand."""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from galmorph.config import JoinConfig
from galmorph.data.gzcsv import FRACTION_COLUMNS, TABLE2_SCHEMA, read_mapping, read_table2
from galmorph.data.join import join_catalogues
from galmorph.data.labels import CONTRACT_COLUMNS
from galmorph.data.sources.manifest import read_manifest_catalogue
from galmorph.errors import UserError

HEADER = list(TABLE2_SCHEMA)
BASE = 587722981736120347  # a real-looking 18-digit SDSS OBJID: float64 would round it to ...120320
FLAGS = {"S": ("1", "0", "0"), "E": ("0", "1", "0"), "U": ("0", "0", "1")}


def row(i: int, flag: str = "S", el: float = 0.05, cs: float = 0.9, **over: str) -> list[str]:
    """One table 2 row for galaxy BASE+i; `over` replaces single columns by name."""
    values = dict(zip(HEADER[:4], [str(BASE + i), "00:00:00.41", "-10:22:25.7", "30"], strict=True))
    values.update(dict.fromkeys(FRACTION_COLUMNS, "0.1"))
    values.update(P_EL_DEBIASED=str(el), P_CS_DEBIASED=str(cs))
    values.update(zip(("SPIRAL", "ELLIPTICAL", "UNCERTAIN"), FLAGS[flag], strict=True))
    values.update(over)
    return [values[c] for c in HEADER]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_mapping(path: Path, rows: list[tuple[int, str, int]]) -> Path:
    return write_csv(path, ["objid", "sample", "asset_id"], [[str(o), s, str(a)] for o, s, a in rows])


def cfg(rule: str = "flags", threshold: float = 0.8) -> JoinConfig:
    return JoinConfig(label_rule=rule, threshold=threshold, out="j.parquet", uncertain_out="u.parquet", report="r.json")


# Eight galaxies: (flag, P_EL_DEBIASED, P_CS_DEBIASED). Threshold rule at 0.8 (strictly above):
#   1 S .05 .9  spiral      2 S .1 .7   uncertain   3 E .95 0   elliptical   4 E .75 .1  uncertain
#   5 U .85 .1  elliptical  6 U .3 .3   uncertain   7 S .81 .1  elliptical   8 E .8  .1  uncertain (not > .8)
LABELLED = [("S", 0.05, 0.9), ("S", 0.1, 0.7), ("E", 0.95, 0.0), ("E", 0.75, 0.1)]
LABELLED += [("U", 0.85, 0.1), ("U", 0.3, 0.3), ("S", 0.81, 0.1), ("E", 0.8, 0.1)]


@pytest.fixture
def eight(tmp_path):
    t2 = write_csv(tmp_path / "t2.csv", HEADER, [row(i, f, el, cs) for i, (f, el, cs) in enumerate(LABELLED, 1)])
    mp = write_mapping(tmp_path / "map.csv", [(BASE + i, "original", 100 + i) for i in range(1, 9)])
    return read_table2(t2), read_mapping(mp)


# ------------------------------------------------------------------------------------------------ reading


def test_read_table2_types_and_exact_values(tmp_path):
    rows = [row(1), row(2, RA="23:59:59.99", DEC="-00:30:00.0"), row(3, RA="150.5", DEC="2.25")]
    df = read_table2(write_csv(tmp_path / "t2.csv", HEADER, rows))
    assert df["OBJID"].dtype == np.int64
    assert df["OBJID"].tolist() == [BASE + 1, BASE + 2, BASE + 3]  # exact: never through float
    assert df["RA"].tolist() == pytest.approx([0.41 * 15 / 3600, (23 + 59 / 60 + 59.99 / 3600) * 15, 150.5])
    assert df["DEC"].tolist() == pytest.approx([-(10 + 22 / 60 + 25.7 / 3600), -0.5, 2.25])  # "-00" keeps its sign
    assert df["SPIRAL"].tolist() == [1, 1, 1] and df.attrs["extra_columns"] == []


def test_gzipped_table2_is_read_by_content(tmp_path):
    text = (write_csv(tmp_path / "plain.csv", HEADER, [row(1), row(2)])).read_bytes()
    (tmp_path / "GalaxyZoo1_DR_table2.csv.gz").write_bytes(gzip.compress(text))
    (tmp_path / "misnamed.csv").write_bytes(gzip.compress(text))
    for name in ("GalaxyZoo1_DR_table2.csv.gz", "misnamed.csv"):
        assert read_table2(tmp_path / name)["OBJID"].tolist() == [BASE + 1, BASE + 2]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv: GZ1 table 2 not found"):
        read_table2(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"empty\.csv: GZ1 table 2 is empty"):
        read_table2(tmp_path / "empty.csv")
    write_csv(tmp_path / "header.csv", ["objid", "sample", "asset_id"], [])
    with pytest.raises(UserError, match=r"header\.csv: has a header but no data rows"):
        read_mapping(tmp_path / "header.csv")


def test_missing_column_is_named(tmp_path):
    header = [c for c in HEADER if c != "NVOTE"]
    rows = [[v for c, v in zip(HEADER, row(1), strict=True) if c != "NVOTE"]]
    with pytest.raises(UserError, match=r"t2\.csv: missing column\(s\) NVOTE;"):
        read_table2(write_csv(tmp_path / "t2.csv", header, rows))


def test_renamed_column_gets_the_close_match(tmp_path):
    header = ["P_EL_DEBIASD" if c == "P_EL_DEBIASED" else "objid" if c == "OBJID" else c for c in HEADER]
    with pytest.raises(UserError) as err:
        read_table2(write_csv(tmp_path / "t2.csv", header, [row(1)]))
    msg = str(err.value)
    assert "OBJID (found 'objid': renamed?)" in msg and "P_EL_DEBIASED (found 'P_EL_DEBIASD': renamed?)" in msg
    assert "\n" not in msg


def test_extra_columns_are_reported_and_ignored(tmp_path):
    t2 = read_table2(write_csv(tmp_path / "t2.csv", [*HEADER, "NOTE"], [[*row(1), "hi"]]))
    mp = read_mapping(
        write_csv(tmp_path / "m.csv", ["asset_id", "objid", "sample", "x"], [["7", str(BASE + 1), "o", "1"]])
    )
    result = join_catalogues(t2, mp, tmp_path / "img", cfg())
    assert "NOTE" not in t2.columns
    assert result.report["extra_columns"] == {"table2": ["NOTE"], "mapping": ["x"]}
    assert result.joined["asset_id"].tolist() == [7]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("P_CS", "abc", "column P_CS: expected a vote fraction in [0, 1], got 'abc'"),
        ("NVOTE", "", "column NVOTE: missing value (expected a non-negative integer)"),
        ("NVOTE", "12.5", "column NVOTE: expected a non-negative integer, got '12.5'"),
        ("OBJID", "5.877229817361203e+17", "column OBJID: expected an integer ID, got '5.877229817361203e+17'"),
        ("P_MG", "1.5", "column P_MG: expected a vote fraction in [0, 1], got 1.5"),
        ("P_MG", "-0.1", "column P_MG: expected a vote fraction in [0, 1], got -0.1"),
        ("ELLIPTICAL", "2", "column ELLIPTICAL: expected 0 or 1, got 2"),
        ("RA", "25:00:00.0", "column RA: expected a right ascension"),
        ("DEC", "-10:61:00", "column DEC: expected a declination"),
        ("DEC", "north", "column DEC: expected a declination"),
    ],
)
def test_bad_value_names_file_line_and_column(tmp_path, column, value, message):
    path = tmp_path / "t2.csv"
    write_csv(path, HEADER, [row(1), row(2), row(3, **{column: value})])
    # a blank line before the bad row: the line number is the file's, not the row index
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:2], "\n", *lines[2:]]))
    with pytest.raises(UserError, match=re.escape(f"{path}: line 5, {message}")):
        read_table2(path)


def test_flags_must_pick_exactly_one_class(tmp_path):
    path = write_csv(tmp_path / "t2.csv", HEADER, [row(1), row(2, UNCERTAIN="1")])
    with pytest.raises(UserError, match=r"line 3, column SPIRAL/ELLIPTICAL/UNCERTAIN: exactly one flag must be 1"):
        read_table2(path)


def test_short_row_names_the_line(tmp_path):
    path = write_csv(tmp_path / "t2.csv", HEADER, [row(1), row(2)[:-1]])
    with pytest.raises(UserError, match=r"t2\.csv: line 3: expected 16 fields, found 15"):
        read_table2(path)


def test_mapping_bad_asset_id(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["objid", "sample", "asset_id"], [[str(BASE), "original", "12a"]])
    with pytest.raises(UserError, match=r"m\.csv: line 2, column asset_id: expected an integer ID, got '12a'"):
        read_mapping(path)


# ---------------------------------------------------------------------------------------------- duplicates


def test_table2_duplicates_identical_kept_once_conflicting_dropped(tmp_path):
    rows = [row(1), row(1), row(2), row(3), row(3, NVOTE="31"), row(4), row(4), row(4, flag="E")]
    t2 = read_table2(write_csv(tmp_path / "t2.csv", HEADER, rows))
    mp = read_mapping(write_mapping(tmp_path / "m.csv", [(BASE + i, "original", i) for i in range(1, 5)]))
    result = join_catalogues(t2, mp, tmp_path, cfg())
    dup = result.report["duplicates"]
    assert dup["table2_identical_rows"] == 1  # galaxy 1's copy
    assert dup["table2_conflicting_rows"] == 5  # both rows of 3, all three of 4
    assert dup["table2_conflicting_ids"] == [str(BASE + 3), str(BASE + 4)]
    assert result.joined["galaxy_id"].tolist() == [str(BASE + 1), str(BASE + 2)]
    assert result.report["unmatched"] == {"table2": 0, "mapping": 2}


def test_mapping_duplicates(tmp_path):
    t2 = read_table2(write_csv(tmp_path / "t2.csv", HEADER, [row(i) for i in range(1, 6)]))
    mapping = [
        (BASE + 1, "original", 11),
        (BASE + 1, "original", 11),  # identical: one kept
        (BASE + 2, "stripe82", 22),
        (BASE + 2, "stripe82_coadd_1", 21),  # second asset of galaxy 2: first in file order wins
        (BASE + 3, "original", 33),
        (BASE + 4, "original", 33),  # asset 33 claimed by galaxies 3 and 4: both dropped
        (BASE + 5, "original", 55),
    ]
    mp = read_mapping(write_mapping(tmp_path / "m.csv", mapping))
    result = join_catalogues(t2, mp, tmp_path / "img", cfg())
    assert result.report["duplicates"] == {
        "table2_identical_rows": 0,
        "table2_conflicting_rows": 0,
        "table2_conflicting_id_count": 0,
        "table2_conflicting_ids": [],
        "mapping_identical_rows": 1,
        "mapping_duplicate_asset_id_rows": 2,
        "mapping_duplicate_objid_rows": 1,
    }
    joined = result.joined.set_index("objid")
    assert joined["asset_id"].to_dict() == {BASE + 1: 11, BASE + 2: 22, BASE + 5: 55}
    assert joined.loc[BASE + 2, "sample"] == "stripe82"
    assert result.report["unmatched"] == {"table2": 2, "mapping": 0}


# -------------------------------------------------------------------------------------------- label rules


def test_flags_rule_contract_and_disagreement(eight, tmp_path):
    result = join_catalogues(*eight, tmp_path / "images", cfg("flags"), root=tmp_path)
    joined, report = result.joined, result.report
    assert list(joined.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert {"objid", "asset_id", "sample", "ra", "dec", "nvote", *FRACTION_COLUMNS} <= set(joined.columns)
    assert joined["galaxy_id"].tolist() == [str(BASE + i) for i in (1, 2, 3, 4, 7, 8)]
    assert joined["label"].tolist() == ["spiral", "spiral", "elliptical", "elliptical", "spiral", "elliptical"]
    assert joined["label_id"].tolist() == [0, 0, 1, 1, 0, 1]
    assert joined["image_path"].iloc[0] == "images/101.jpg"  # relative: inside the root
    assert joined["p_spiral"].tolist() == [0.9, 0.7, 0.0, 0.1, 0.1, 0.1]
    assert joined["p_elliptical"].tolist() == [0.05, 0.1, 0.95, 0.75, 0.81, 0.8]
    assert report["classes"] == {"spiral": 3, "elliptical": 3} and report["uncertain"] == 2
    assert result.uncertain["galaxy_id"].tolist() == [str(BASE + 5), str(BASE + 6)]
    assert list(result.uncertain.columns) == list(joined.columns)
    assert set(result.uncertain["label"]) == {"uncertain"} and set(result.uncertain["label_id"]) == {-1}
    d = report["disagreement"]
    assert (d["rows"], d["of_rows"], d["fraction"]) == (5, 8, 5 / 8)
    assert d["flags_spiral_threshold_uncertain"] == 1
    assert d["flags_spiral_threshold_elliptical"] == 1
    assert d["flags_elliptical_threshold_uncertain"] == 2
    assert d["flags_uncertain_threshold_elliptical"] == 1
    assert d["flags_elliptical_threshold_spiral"] == d["flags_uncertain_threshold_spiral"] == 0


def test_debiased_rule(eight, tmp_path):
    result = join_catalogues(*eight, "/elsewhere/images", cfg("debiased"), root=tmp_path)
    assert result.joined["galaxy_id"].tolist() == [str(BASE + i) for i in (1, 3, 5, 7)]
    assert result.joined["label"].tolist() == ["spiral", "elliptical", "elliptical", "elliptical"]
    assert result.report["classes"] == {"spiral": 1, "elliptical": 3} and result.report["uncertain"] == 4
    assert result.joined["image_path"].iloc[0] == "/elsewhere/images/101.jpg"  # absolute: outside the root
    assert result.report["disagreement"]["rows"] == 5  # the same comparison whatever the rule
    loose = join_catalogues(*eight, "/img", cfg("debiased", threshold=0.7))  # 2 and 4 become labelled
    assert loose.report["classes"] == {"spiral": 1, "elliptical": 5} and loose.report["uncertain"] == 2


def test_no_rows_left_names_the_filter(eight, tmp_path):
    t2, mp = eight
    other = read_mapping(write_mapping(tmp_path / "o.csv", [(1, "original", 1)]))
    with pytest.raises(UserError, match=r"no OBJID of .*t2\.csv appears in the objid column of .*o\.csv"):
        join_catalogues(t2, other, tmp_path, cfg())
    only_uncertain = read_mapping(write_mapping(tmp_path / "u.csv", [(BASE + 5, "original", 5)]))
    with pytest.raises(UserError, match=r"all 1 matched galaxies are UNCERTAIN under .*join\.label_rule"):
        join_catalogues(t2, only_uncertain, tmp_path, cfg())
    with pytest.raises(UserError, match=r"join\.threshold: expected a vote fraction"):
        join_catalogues(t2, mp, tmp_path, cfg(threshold=1.5))


# ---------------------------------------------------------------------------------------------- manifests


def manifest_source(path: Path, **over) -> dict:
    source = {
        "source": "manifest",
        "kind": "manifest",
        "path": str(path),
        "image_root": None,
        "path_column": "filename",
        "id_column": None,
        "label_column": "label",
        "label_map": {"S": "spiral", "E": "elliptical"},
        "vote_columns": None,
        "vote_threshold": 0.8,
    }
    return source | over


MANIFEST_ROWS = [
    ["a b/spiral 1.jpg", "S", "0.9", "0.05", "g1"],
    ["ünï/ell.jpg", "E", "0.1", "0.85", "g2"],
    ["x.jpg", "other", "0.5", "0.5", "g3"],
    ["y.jpg", "S", "", "", "g4"],
    ["z.jpg", "E", "0.3", "0.6", "g5"],
    ["w.jpg", "", "0.8", "0.2", "g6"],
]
MANIFEST_HEADER = ["filename", "label", "v_sp", "v_el", "dataset"]


def test_manifest_label_column_with_odd_paths(tmp_path):
    path = write_csv(tmp_path / "m.csv", MANIFEST_HEADER, MANIFEST_ROWS)
    result = read_manifest_catalogue(manifest_source(path))
    joined, report = result.joined, result.report
    assert joined["galaxy_id"].tolist() == ["a b/spiral 1.jpg", "ünï/ell.jpg", "y.jpg", "z.jpg"]
    assert joined["image_path"].tolist()[:2] == [f"{tmp_path}/a b/spiral 1.jpg", f"{tmp_path}/ünï/ell.jpg"]
    assert joined["label"].tolist() == ["spiral", "elliptical", "spiral", "elliptical"]
    assert joined["p_spiral"].isna().all() and joined["dataset"].tolist() == ["g1", "g2", "g4", "g5"]
    assert report["dropped_labels"] == {"(empty)": 1, "other": 1}
    assert report["classes"] == {"spiral": 2, "elliptical": 2} and report["uncertain"] == 0
    assert report["extra_columns"] == {"manifest": ["v_sp", "v_el"]}
    roots = read_manifest_catalogue(manifest_source(path, image_root="pics"), root=tmp_path).joined
    assert roots["image_path"].iloc[0] == "pics/a b/spiral 1.jpg"


def test_manifest_vote_columns(tmp_path):
    path = write_csv(tmp_path / "m.csv", MANIFEST_HEADER, MANIFEST_ROWS)
    votes = {"spiral": "v_sp", "elliptical": "v_el"}
    result = read_manifest_catalogue(manifest_source(path, label_column=None, vote_columns=votes))
    r = result.report
    # >= 0.8: g1 spiral, g2 elliptical, g6 spiral (0.8 reaches it); g3, g5 uncertain; g4 has no votes
    assert result.joined["galaxy_id"].tolist() == ["a b/spiral 1.jpg", "ünï/ell.jpg", "w.jpg"]
    assert result.joined["label"].tolist() == ["spiral", "elliptical", "spiral"]
    assert result.joined["p_spiral"].tolist() == [0.9, 0.1, 0.8]
    assert result.uncertain["galaxy_id"].tolist() == ["x.jpg", "z.jpg"]
    assert (r["missing_votes"], r["uncertain"], r["classes"]) == (1, 2, {"spiral": 2, "elliptical": 1})
    both = read_manifest_catalogue(manifest_source(path, vote_columns=votes)).report["disagreement"]
    # labelled and voted: g1 S/spiral, g2 E/elliptical, g5 E/uncertain
    assert (both["rows"], both["of_rows"], both["label_elliptical_votes_uncertain"]) == (1, 3, 1)


def test_manifest_errors(tmp_path):
    path = write_csv(tmp_path / "m.csv", MANIFEST_HEADER, MANIFEST_ROWS)
    with pytest.raises(UserError, match=r"label_map: 'S' maps to 'spirals'; expected one of spiral, elliptical"):
        read_manifest_catalogue(manifest_source(path, label_map={"S": "spirals"}))
    with pytest.raises(
        UserError, match=r"no value of column label is in label_map \(Sp\); found '', 'E', 'S', 'other'"
    ):
        read_manifest_catalogue(manifest_source(path, label_map={"Sp": "spiral"}))
    with pytest.raises(UserError, match=r"missing column\(s\) filename \(found 'file_name': renamed\?\)"):
        read_manifest_catalogue(manifest_source(write_csv(tmp_path / "r.csv", ["file_name", "label"], [["a", "S"]])))
    bad_vote = [["a.jpg", "S", "lots", "0"]]
    votes = {"spiral": "v_sp", "elliptical": "v_el"}
    with pytest.raises(
        UserError, match=r"b\.csv: line 2, column v_sp: expected a vote fraction in \[0, 1\], got 'lots'"
    ):
        read_manifest_catalogue(
            manifest_source(write_csv(tmp_path / "b.csv", MANIFEST_HEADER[:4], bad_vote), vote_columns=votes)
        )
    mangled = write_csv(tmp_path / "f.csv", ["filename", "label", "objid"], [["a.jpg", "S", "5.888489015324182e+17"]])
    with pytest.raises(
        UserError, match=r"f\.csv: line 2, column objid: ID '5.888489015324182e\+17' was written as a float"
    ):
        read_manifest_catalogue(manifest_source(mangled, id_column="objid"))


def test_manifest_duplicate_ids(tmp_path):
    rows = [["a.jpg", "S", "1"], ["a.jpg", "S", "1"], ["b.jpg", "S", "2"], ["c.jpg", "E", "2"], ["d.jpg", "E", "3"]]
    path = write_csv(tmp_path / "m.csv", ["filename", "label", "gid"], rows)
    by_path = read_manifest_catalogue(manifest_source(path))
    assert by_path.joined["galaxy_id"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert by_path.report["duplicates"]["manifest_identical_rows"] == 1
    by_id = read_manifest_catalogue(manifest_source(path, id_column="gid"))
    assert by_id.joined["galaxy_id"].tolist() == ["1", "3"]
    assert by_id.report["duplicates"]["manifest_conflicting_ids"] == ["2"]
    assert by_id.report["duplicates"]["manifest_conflicting_rows"] == 2


def test_manifest_same_image_under_two_ids_counts_once(tmp_path):
    """Different ids, one file (another spelling of its path, a symlink, its absolute path): one image, kept
    once when the labels agree and dropped when they do not, so it can never be in train and in test."""
    (tmp_path / "imgs").mkdir()
    for name in ("a", "b", "c", "d"):
        (tmp_path / "imgs" / f"{name}.jpg").write_bytes(name.encode())
    (tmp_path / "imgs" / "link.jpg").symlink_to("a.jpg")
    rows = [
        ["imgs/a.jpg", "S", "1"],
        ["./imgs/a.jpg", "S", "2"],  # the same file: dropped, 1 kept
        ["imgs/link.jpg", "S", "3"],  # a symlink to it: dropped
        [str(tmp_path / "imgs" / "a.jpg"), "S", "4"],  # its absolute path: dropped
        ["imgs/b.jpg", "S", "5"],
        ["imgs/../imgs/b.jpg", "E", "6"],  # b under another label: neither can be trusted
        ["imgs/c.jpg", "E", "7"],
        ["imgs/d.jpg", "E", "8"],
    ]
    path = write_csv(tmp_path / "m.csv", ["filename", "label", "gid"], rows)
    result = read_manifest_catalogue(manifest_source(path, id_column="gid"), root=tmp_path)
    assert result.joined["galaxy_id"].tolist() == ["1", "7", "8"]
    assert result.joined["image_path"].tolist() == ["imgs/a.jpg", "imgs/c.jpg", "imgs/d.jpg"]
    dup = result.report["duplicates"]
    assert (dup["manifest_same_image_rows"], dup["manifest_same_image_conflicting_rows"]) == (3, 2)
    assert dup["manifest_same_image_files"] == 2
    assert result.report["classes"] == {"spiral": 1, "elliptical": 2}


def test_header_with_bom_spaces_and_repeated_extra_columns(tmp_path):
    path = write_csv(tmp_path / "t2.csv", [f" {c} " for c in HEADER] + ["note", "note"], [[*row(1), "a", "b"]])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's UTF-8 BOM
    df = read_table2(path)
    assert df["OBJID"].tolist() == [BASE + 1] and df.attrs["extra_columns"] == ["note", "note"]
    doubled = write_csv(tmp_path / "d.csv", [*HEADER, "NVOTE"], [[*row(1), "3"]])
    with pytest.raises(UserError, match=r"d\.csv: column\(s\) NVOTE appear more than once"):
        read_table2(doubled)
