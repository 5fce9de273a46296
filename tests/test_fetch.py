"""The fetch stage: every data.source end to end (galaxyzoo against a local HTTP server), what it leaves in
raw_dir, source.json, re-runs, and the errors a user sees."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from galmorph.cli import main
from galmorph.config import DataConfig, Params
from galmorph.data.fetch import fetch_data
from galmorph.data.join import build_catalogue
from galmorph.data.sources import rawdir, synthetic
from galmorph.data.sources.galaxyzoo import MARKER_NAME, unpack_images
from galmorph.data.sources.rawdir import read_source
from galmorph.data.sources.synthetic.population import generate_catalogues
from galmorph.errors import UserError

from .conftest import REPO
from .test_download import FileServer, closed_port_url, server  # noqa: F401  (server is a fixture)

T2, MAP, ZIP, API = (
    "/gz1/GalaxyZoo1_DR_table2.csv.gz",
    "/records/3565489/files/gz2_filename_mapping.csv?download=1",
    "/records/3565489/files/images_gz2.zip?download=1",
    "/api/records/3565489",
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.fixture
def zoo(server):  # noqa: F811
    """The official files in miniature (real column layout, 20 galaxies) on the local server."""
    table2, mapping = generate_catalogues(20, 0.8, seed=3)
    files = {
        T2: gzip.compress(table2.to_csv(index=False).encode()),
        MAP: mapping.to_csv(index=False).encode(),
        ZIP: make_zip({f"images/{a}.jpg": jpeg(a) for a in mapping["asset_id"]} | {"__MACOSX/._x": b"junk"}),
    }
    server.files.update(files)
    record = {"files": [{"key": "gz2_filename_mapping.csv", "checksum": f"md5:{md5(files[MAP])}"}]}
    record["files"].append({"key": "images_gz2.zip", "checksum": f"md5:{md5(files[ZIP])}"})
    server.files[API] = json.dumps(record).encode()
    server.n_images = len(mapping)
    return server


def zoo_config(params: Params, srv: FileServer, raw: Path, **changes) -> DataConfig:
    gz = dataclasses.replace(
        params.data.galaxyzoo,
        table2_url=srv.url(T2),
        mapping_url=srv.url(MAP),
        images_url=srv.url(ZIP),
        zenodo_api_url=srv.url(API),
        table2_md5=md5(srv.files[T2]),
        retries=2,
        timeout_s=5.0,
        backoff_s=0.001,
    )
    return dataclasses.replace(
        params.data, source="galaxyzoo", raw_dir=str(raw), galaxyzoo=dataclasses.replace(gz, **changes)
    )


def test_galaxyzoo_end_to_end_then_rerun_makes_no_request(params, zoo, tmp_path):
    raw = tmp_path / "raw"
    cfg = zoo_config(params, zoo, raw)
    source, removed = fetch_data(cfg, progress=False)
    assert removed == []
    assert (raw / "GalaxyZoo1_DR_table2.csv.gz").read_bytes() == zoo.files[T2]  # kept gzipped
    assert (raw / "gz2_filename_mapping.csv").read_bytes() == zoo.files[MAP]
    jpgs = sorted((raw / "images_gz2" / "images").glob("*.jpg"))
    assert len(jpgs) == zoo.n_images and not (raw / "images_gz2.zip").exists()
    assert not (raw / "images_gz2" / "__MACOSX").exists()
    assert json.loads((raw / "images_gz2" / MARKER_NAME).read_text())["files"] == zoo.n_images
    assert read_source(raw) == source
    assert source["kind"] == "catalogue" and source["source"] == "galaxyzoo"
    assert source["table2"] == str(raw / "GalaxyZoo1_DR_table2.csv.gz")  # outside the repo: absolute
    assert source["images_dir"] == str(raw / "images_gz2" / "images")
    assert source["md5"] == {
        "table2": md5(zoo.files[T2]),
        "mapping": md5(zoo.files[MAP]),
        "images_zip": md5(zoo.files[ZIP]),
    }
    assert sorted(p.name for p in raw.iterdir()) == [
        ".downloads.json",
        ".owned.json",
        "GalaxyZoo1_DR_table2.csv.gz",
        "gz2_filename_mapping.csv",
        "images_gz2",
        "source.json",
    ]
    # what fetch wrote is what join reads
    joined = build_catalogue(source, params.join).joined
    assert len(joined) > 0 and all(Path(p).is_file() for p in joined["image_path"])

    before = len(zoo.requests)
    again, _ = fetch_data(cfg, progress=False)
    assert len(zoo.requests) == before and again == source

    fetch_data(cfg, force=True, progress=False)
    assert {p for p, _ in zoo.requests[before:]} == {T2, MAP, ZIP, API}


def test_interrupted_fetch_resumes_the_zip_and_keeps_the_rest(params, zoo, tmp_path):
    raw = tmp_path / "raw"
    zoo.drops[ZIP] = [1000]
    with pytest.raises(UserError, match="images_gz2.zip"):
        fetch_data(zoo_config(params, zoo, raw, retries=0), progress=False)
    assert not (raw / "source.json").exists() and (raw / "images_gz2.zip.part").stat().st_size == 1000
    before = len(zoo.requests)
    fetch_data(zoo_config(params, zoo, raw), progress=False)
    paths = [p for p, _ in zoo.requests[before:]]
    assert paths == [API, ZIP] and zoo.requests_for(ZIP)[-1]["Range"] == "bytes=1000-"
    assert len(list((raw / "images_gz2" / "images").glob("*.jpg"))) == zoo.n_images


def test_bad_zenodo_checksum_names_the_file_and_leaves_nothing(params, zoo, tmp_path):
    raw = tmp_path / "raw"
    record = json.loads(zoo.files[API])
    record["files"][1]["checksum"] = "md5:" + "f" * 32
    zoo.files[API] = json.dumps(record).encode()
    with pytest.raises(
        UserError, match=rf"images_gz2.zip: checksum mismatch: expected md5 {'f' * 32}, got {md5(zoo.files[ZIP])}"
    ):
        fetch_data(zoo_config(params, zoo, raw), progress=False)
    assert not (raw / "images_gz2.zip").exists() and not (raw / "images_gz2.zip.part").exists()
    assert not (raw / "images_gz2").exists() and not (raw / "source.json").exists()


def test_bad_table2_md5_param(params, zoo, tmp_path):
    with pytest.raises(UserError, match="GalaxyZoo1_DR_table2.csv.gz: checksum mismatch"):
        fetch_data(zoo_config(params, zoo, tmp_path / "raw", table2_md5="0" * 32), progress=False)
    assert not (tmp_path / "raw" / "GalaxyZoo1_DR_table2.csv.gz").exists()


def test_checksums_skipped_without_a_record(params, zoo, tmp_path):
    source, _ = fetch_data(
        zoo_config(params, zoo, tmp_path / "raw", zenodo_api_url=None, table2_md5=None), progress=False
    )
    assert API not in [p for p, _ in zoo.requests] and source["md5"]["mapping"] == md5(zoo.files[MAP])


def test_setting_table2_md5_later_checks_the_file_already_there(params, zoo, tmp_path):
    raw = tmp_path / "raw"
    fetch_data(zoo_config(params, zoo, raw, table2_md5=None), progress=False)
    before = len(zoo.requests)
    fetch_data(zoo_config(params, zoo, raw), progress=False)  # the right md5: nothing to do
    assert len(zoo.requests) == before
    with pytest.raises(UserError, match="GalaxyZoo1_DR_table2.csv.gz: checksum mismatch"):
        fetch_data(zoo_config(params, zoo, raw, table2_md5="1" * 32), progress=False)
    assert [p for p, _ in zoo.requests[before:]] == [T2]


def test_unreachable_url_is_a_user_error(params, zoo, tmp_path):
    cfg = zoo_config(params, zoo, tmp_path / "raw", table2_url=closed_port_url())
    with pytest.raises(UserError, match=r"nothing.zip: download failed after 3 attempt\(s\)"):
        fetch_data(cfg, progress=False)


@pytest.mark.parametrize(
    "entries, links",
    [
        ({"images/../../evil.jpg": b"x"}, ()),
        ({"/tmp/evil.jpg": b"x"}, ()),
        ({"images/1.jpg": b"x"}, ("images/ln.jpg",)),
    ],
)
def test_zip_slip_is_refused(params, zoo, tmp_path, entries, links):
    zoo.files[ZIP] = make_zip({"images/0.jpg": jpeg(0), **entries}, links)
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match="unsafe entry .* not unpacking"):
        fetch_data(zoo_config(params, zoo, raw, zenodo_api_url=None), progress=False)
    assert not (tmp_path / "evil.jpg").exists() and not (raw / "images_gz2").exists()
    assert not (raw / ".images_gz2.unpacking").exists()


@pytest.mark.parametrize("prefix", ["", "images/", "images_gz2/images/"])
def test_unpack_accepts_the_layouts_of_the_zip(tmp_path, prefix):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({f"{prefix}7.jpg": jpeg(7), f"{prefix}8.jpg": jpeg(8)}))
    assert unpack_images(archive, tmp_path / "images_gz2", marker={"url": "u", "md5": "m"}, progress=False) == 2
    assert (tmp_path / "images_gz2" / "images" / "7.jpg").read_bytes() == jpeg(7)


def test_corrupt_zip_is_deleted_with_a_clear_error(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="a.zip: not a valid zip"):
        unpack_images(archive, tmp_path / "images_gz2", marker={}, progress=False)
    assert not archive.exists() and not (tmp_path / "images_gz2").exists()


# ------------------------------------------------------------------------------------------- local, manifest


def official_files(folder: Path, table2_name: str = "GalaxyZoo1_DR_table2.csv") -> Path:
    table2, mapping = generate_catalogues(10, 0.8, seed=1)
    folder.mkdir(parents=True)
    text = table2.to_csv(index=False).encode()
    (folder / table2_name).write_bytes(gzip.compress(text) if table2_name.endswith(".gz") else text)
    mapping.to_csv(folder / "gz2_filename_mapping.csv", index=False)
    (folder / "images_gz2" / "images").mkdir(parents=True)
    for a in mapping["asset_id"]:
        (folder / "images_gz2" / "images" / f"{a}.jpg").write_bytes(jpeg(a))
    return folder


def local_config(params: Params, folder: Path, raw: Path) -> DataConfig:
    return dataclasses.replace(
        params.data, source="local", raw_dir=str(raw), local=dataclasses.replace(params.data.local, dir=str(folder))
    )


@pytest.mark.parametrize("table2_name", ["GalaxyZoo1_DR_table2.csv", "GalaxyZoo1_DR_table2.csv.gz"])
def test_local_points_at_the_files_and_copies_nothing(params, tmp_path, table2_name):
    folder = official_files(tmp_path / "gz", table2_name)
    raw = tmp_path / "raw"
    source, _ = fetch_data(local_config(params, folder, raw), progress=False)
    assert sorted(p.name for p in raw.iterdir()) == [".owned.json", "images.md5", "source.json"]
    assert source["table2"] == str(folder / table2_name)
    assert source["images_dir"] == str(folder / "images_gz2" / "images")
    assert source["md5"]["mapping"] == md5((folder / "gz2_filename_mapping.csv").read_bytes())
    assert len(build_catalogue(source, params.join).joined) > 0


@pytest.mark.parametrize(
    "remove, message",
    [
        ("gz2_filename_mapping.csv", r"gz/gz2_filename_mapping.csv: not found \(data.local.dir must hold"),
        ("GalaxyZoo1_DR_table2.csv", r"gz/GalaxyZoo1_DR_table2.csv: not found, nor GalaxyZoo1_DR_table2.csv.gz"),
        ("images_gz2", r"gz/images_gz2/images: image folder not found"),
    ],
)
def test_local_missing_file_is_named(params, tmp_path, remove, message):
    folder = official_files(tmp_path / "gz")
    target = folder / remove
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(UserError, match=message):
        fetch_data(local_config(params, folder, tmp_path / "raw"), progress=False)


def test_local_rejects_both_table2_files_and_a_dir_inside_raw_dir(params, tmp_path):
    folder = official_files(tmp_path / "gz")
    (folder / "GalaxyZoo1_DR_table2.csv.gz").write_bytes(b"")
    with pytest.raises(UserError, match="holds both GalaxyZoo1_DR_table2.csv and GalaxyZoo1_DR_table2.csv.gz"):
        fetch_data(local_config(params, folder, tmp_path / "raw"), progress=False)
    inside = official_files(tmp_path / "raw" / "mine")
    with pytest.raises(UserError, match="data.local.dir .* is inside data.raw_dir"):
        fetch_data(local_config(params, inside, tmp_path / "raw"), progress=False)
    assert (inside / "gz2_filename_mapping.csv").exists()


def manifest_config(params: Params, raw: Path, **changes) -> DataConfig:
    return dataclasses.replace(
        params.data, source="manifest", raw_dir=str(raw), manifest=dataclasses.replace(params.data.manifest, **changes)
    )


def tiny_manifest(folder: Path) -> Path:
    (folder / "imgs").mkdir(parents=True)
    (folder / "labels.csv").write_text(
        "filename,label,p_sp,p_el\nimgs/a.jpg,spiral,0.9,0.1\nimgs/b.jpg,elliptical,0.2,0.8\n"
    )
    for name in ("a", "b"):
        (folder / "imgs" / f"{name}.jpg").write_bytes(jpeg(1))
    return folder / "labels.csv"


def test_manifest_relative_to_the_project_root(params, tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    csv = tiny_manifest(tmp_path)
    cfg = manifest_config(
        params, Path("data/raw"), path="labels.csv", vote_columns={"spiral": "p_sp", "elliptical": "p_el"}
    )
    source, _ = fetch_data(cfg, progress=False)
    assert source == {
        "source": "manifest",
        "kind": "manifest",
        "path": "labels.csv",
        "image_root": ".",
        "path_column": "filename",
        "id_column": None,
        "label_column": "label",
        "label_map": {"spiral": "spiral", "elliptical": "elliptical"},
        "vote_columns": {"spiral": "p_sp", "elliptical": "p_el"},
        "vote_threshold": 0.8,
        "md5": {"manifest": md5(csv.read_bytes())},
        "image_hashes": {
            "images_hashed": 2,
            "images_not_found": 0,
            "images_md5": md5(Path("data/raw/images.md5").read_bytes()),
        },
    }
    assert json.loads(Path("data/raw/source.json").read_text()) == source
    joined = build_catalogue(source, params.join).joined
    assert joined["image_path"].tolist() == ["imgs/a.jpg", "imgs/b.jpg"]


def test_the_pixels_of_images_outside_raw_dir_are_pinned(params, tmp_path):
    """local and manifest images stay where they are: their md5s in raw_dir (DVC's output) pin them in dvc.lock,
    so a replaced image changes what the commit records; a listed file that is missing is counted."""
    csv = tiny_manifest(tmp_path)
    with csv.open("a") as f:
        f.write("imgs/gone.jpg,spiral,0.9,0.1\n")
    raw = tmp_path / "raw"
    cfg = manifest_config(params, raw, path=str(csv))
    source, _ = fetch_data(cfg, progress=False)
    listed = (raw / "images.md5").read_text().splitlines()
    assert listed == [f"{md5((tmp_path / 'imgs' / n).read_bytes())}  imgs/{n}" for n in ("a.jpg", "b.jpg")]
    assert source["image_hashes"]["images_hashed"] == 2 and source["image_hashes"]["images_not_found"] == 1
    check = subprocess.run(["md5sum", "-c", "--quiet", str(raw / "images.md5")], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stdout
    (tmp_path / "imgs" / "b.jpg").write_bytes(jpeg(2))  # the same name, other pixels
    again, _ = fetch_data(cfg, progress=False)
    assert again["image_hashes"]["images_md5"] != source["image_hashes"]["images_md5"]
    assert (raw / "images.md5").read_text().splitlines()[0] == listed[0]


def test_fetch_watches_data_external_so_a_replaced_image_reruns_it():
    """Images under data/external/ (data.local.dir's default, or a manifest's folder put there) are a DVC
    dependency of fetch: replacing one reruns fetch, whose images.md5 then reruns join and what follows."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "data/external" in stages["fetch"]["deps"]
    tracked = subprocess.run(["git", "ls-files", "data/external"], cwd=REPO, capture_output=True, text=True).stdout
    assert tracked.split(), "data/external/ must exist in a fresh clone, or DVC refuses the missing dependency"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"path_column": "file"}, r"labels.csv: missing column\(s\) file \(found 'filename': renamed\?\)"),
        ({"vote_columns": {"spiral": "p_sp", "elliptical": "votes_el"}}, r"missing column\(s\) votes_el"),
        ({"label_column": None, "vote_columns": None}, "set label_column or vote_columns"),
        ({"image_root": "/no/such/folder"}, "/no/such/folder: data.manifest.image_root is not a folder"),
    ],
)
def test_manifest_errors_name_the_problem(params, tmp_path, changes, message):
    csv = tiny_manifest(tmp_path)
    with pytest.raises(UserError, match=message):
        fetch_data(manifest_config(params, tmp_path / "raw", path=str(csv), **changes), progress=False)


@pytest.mark.parametrize("previous", ["synthetic", "galaxyzoo"])
def test_switching_source_removes_the_other_sources_files_only(params, tmp_path, previous):
    """raw_dir as a fetch of `previous` left it before the ownership record existed: its source.json shows
    what that fetch wrote (a galaxyzoo fetch writes the zip, a synthetic one does not)."""
    raw = tmp_path / "raw"
    official = official_files(raw)
    (raw / "source.json").write_text(json.dumps({"source": previous}))
    (raw / "images_gz2.zip.part").write_bytes(b"partial")
    (raw / "notes.txt").write_text("the user's own file: not fetch's to remove")
    csv = tiny_manifest(tmp_path / "m")
    _, removed = fetch_data(manifest_config(params, raw, path=str(csv)), progress=False)
    zip_part = ["images_gz2.zip.part"] if previous == "galaxyzoo" else []
    assert removed == ["GalaxyZoo1_DR_table2.csv", "gz2_filename_mapping.csv", "images_gz2", *zip_part]
    kept = [".owned.json", "images.md5", *({"images_gz2.zip.part"} - set(zip_part)), "notes.txt", "source.json"]
    assert sorted(p.name for p in official.iterdir()) == kept
    assert json.loads((raw / ".owned.json").read_text())["names"] == ["images.md5", "source.json"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def synthetic_config(params: Params, raw: Path) -> DataConfig:
    small = dataclasses.replace(params.data.synthetic, n_galaxies=12, image_size=64)
    return dataclasses.replace(params.data, source="synthetic", raw_dir=str(raw), synthetic=small)


def test_fetch_never_replaces_files_it_did_not_write(params, tmp_path):
    """data.raw_dir pointed at a user's own download (the official files, no source.json): fetch stops with
    one line naming the folder and the files, and deletes nothing; --force takes them over."""
    raw = official_files(tmp_path / "mine")
    (raw / "images_gz2.zip.part").write_bytes(b"the user's browser download")
    before = tree(raw)
    with pytest.raises(UserError) as err:
        fetch_data(synthetic_config(params, raw), progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{raw}: holds GalaxyZoo1_DR_table2.csv, ")
    assert "gz2_filename_mapping.csv, images_gz2, which fetch did not write" in message and "--force" in message
    assert tree(raw) == before
    # a source that writes none of those names leaves them alone, and does not claim them
    csv = tiny_manifest(tmp_path / "m")
    fetch_data(manifest_config(params, raw, path=str(csv)), progress=False)
    assert {k: v for k, v in tree(raw).items() if k not in ("source.json", ".owned.json", "images.md5")} == before
    assert json.loads((raw / ".owned.json").read_text())["names"] == ["images.md5", "source.json"]
    with pytest.raises(UserError, match="holds GalaxyZoo1_DR_table2.csv"):
        fetch_data(synthetic_config(params, raw), progress=False)

    source, removed = fetch_data(synthetic_config(params, raw), force=True, progress=False)
    assert source["source"] == "synthetic" and removed == [
        "GalaxyZoo1_DR_table2.csv",
        "gz2_filename_mapping.csv",
        "images.md5",  # the manifest's, which fetch wrote
        "images_gz2",
    ]
    assert (raw / "images_gz2.zip.part").read_bytes() == b"the user's browser download"  # not synthetic's name
    owned = json.loads((raw / ".owned.json").read_text())["names"]
    assert owned == ["GalaxyZoo1_DR_table2.csv", "gz2_filename_mapping.csv", "images_gz2", "source.json"]


def test_ownership_is_per_file(params, zoo, tmp_path):
    """After a synthetic fetch, a file the user adds under one of fetch's names is still theirs."""
    raw = tmp_path / "raw"
    fetch_data(synthetic_config(params, raw), progress=False)
    (raw / "images_gz2.zip").write_bytes(b"the user's copy")
    with pytest.raises(UserError, match=rf"^{raw}: holds images_gz2.zip, which fetch did not write"):
        fetch_data(zoo_config(params, zoo, raw), progress=False)
    assert (raw / "images_gz2.zip").read_bytes() == b"the user's copy" and zoo.requests == []
    assert read_source(raw)["source"] == "synthetic"  # the refusal came before anything was touched


def test_a_killed_fetch_leaves_its_files_claimed(params, zoo, tmp_path):
    """The record is written before anything else, so what an interrupted run left is fetch's to resume."""
    raw = tmp_path / "raw"
    zoo.drops[ZIP] = [1000]
    with pytest.raises(UserError, match="images_gz2.zip"):
        fetch_data(zoo_config(params, zoo, raw, retries=0), progress=False)
    assert "images_gz2.zip" in json.loads((raw / ".owned.json").read_text())["names"]
    source, _ = fetch_data(zoo_config(params, zoo, raw), progress=False)
    assert source["source"] == "galaxyzoo" and zoo.requests_for(ZIP)[-1]["Range"] == "bytes=1000-"


def test_a_failed_check_leaves_the_previous_fetch_alone(params, tmp_path):
    raw = tmp_path / "raw"
    csv = tiny_manifest(tmp_path / "m")
    fetch_data(manifest_config(params, raw, path=str(csv)), progress=False)
    with pytest.raises(UserError):
        fetch_data(local_config(params, tmp_path / "nowhere", raw), progress=False)
    assert read_source(raw)["source"] == "manifest"


@pytest.mark.realdata
def test_manifest_on_the_real_labels(params, tmp_path, real_galaxyzoo):
    labels = real_galaxyzoo / "labels.csv"
    source, _ = fetch_data(manifest_config(params, tmp_path / "raw", path=str(labels)), progress=False)
    assert source["path"] == labels.as_posix() and source["image_root"] == real_galaxyzoo.as_posix()
    assert source["md5"] == {"manifest": md5(labels.read_bytes())}
    first = labels.read_text().splitlines()[1].split(",")[0]
    assert (Path(source["image_root"]) / first).is_file()


@pytest.mark.realdata
def test_repo_params_manifest_path_resolves_to_the_shared_labels(params, tmp_path, real_galaxyzoo, monkeypatch):
    """params.yaml's manifest path is relative to the repo root, where DVC runs the stage."""
    monkeypatch.chdir(REPO)
    source, _ = fetch_data(manifest_config(params, tmp_path / "raw"), progress=False)
    assert source["path"] == (real_galaxyzoo / "labels.csv").as_posix()


# -------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_generates_once_and_regenerates_when_settings_change(params, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    small = dataclasses.replace(params.data.synthetic, n_galaxies=12, image_size=64)
    cfg = dataclasses.replace(params.data, source="synthetic", raw_dir=str(raw), synthetic=small)
    source, _ = fetch_data(cfg, progress=False)
    assert source["source"] == "synthetic" and source["settings"]["n_galaxies"] == 12
    assert source["md5"]["table2"] == md5((raw / "GalaxyZoo1_DR_table2.csv").read_bytes())
    assert len(list((raw / "images_gz2" / "images").glob("*.jpg"))) > 0
    assert len(build_catalogue(source, params.join).joined) > 0
    assert (raw / "images_gz2" / "images" / "1.jpg").is_file()

    calls = []  # the generator ran above; from here on only whether fetch calls it matters

    def fake_generate(cfg, out, **kwargs):
        calls.append(cfg)
        (Path(out) / "images_gz2" / "images").mkdir(parents=True, exist_ok=True)
        for name in ("GalaxyZoo1_DR_table2.csv", "gz2_filename_mapping.csv"):
            (Path(out) / name).write_text(f"{name} {cfg.seed}")
        return {"images_written": 0}

    monkeypatch.setattr(synthetic, "generate", fake_generate)
    assert fetch_data(cfg, progress=False)[0] == source and calls == []  # unchanged: kept
    fetch_data(cfg, force=True, progress=False)
    assert len(calls) == 1
    assert not (raw / "images_gz2" / "images" / "1.jpg").exists()  # --force started from an empty raw_dir
    fetch_data(dataclasses.replace(cfg, synthetic=dataclasses.replace(small, seed=5)), progress=False)
    assert [c.seed for c in calls] == [0, 5]


# ------------------------------------------------------------------------------------------------------ CLI


def run_cli(*sets: str) -> int:
    argv = ["--params", str(REPO / "params.yaml")] + [a for s in sets for a in ("-S", s)] + ["fetch"]
    return main(argv)


def test_cli_bad_source_dir_is_one_line_and_exit_1(tmp_path, capsys):
    rc = run_cli("data.source=local", f"data.local.dir={tmp_path / 'nowhere'}", f"data.raw_dir={tmp_path / 'raw'}")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("galmorph fetch: error: ") and "nowhere: data.local.dir is not a folder" in err


def test_cli_refuses_a_users_folder_in_one_line(tmp_path, capsys):
    raw = official_files(tmp_path / "mine")
    rc = run_cli("data.source=synthetic", f"data.raw_dir={raw}")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"galmorph fetch: error: {raw}: holds GalaxyZoo1_DR_table2.csv")
    assert (raw / "gz2_filename_mapping.csv").is_file() and not (raw / "source.json").exists()


def test_cli_manifest(tmp_path, capsys):
    csv = tiny_manifest(tmp_path)
    assert run_cli("data.source=manifest", f"data.manifest.path={csv}", f"data.raw_dir={tmp_path / 'raw'}") == 0
    assert "fetch (manifest): manifest " in capsys.readouterr().out
    assert rawdir.read_previous(tmp_path / "raw")["path"] == str(csv)
