"""galmorph.io's atomic writes: durable (the file and then its folder synced around the rename), and what a
killed write leaves behind is swept by the next write of the same file and ignored by DVC."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galmorph import io
from galmorph.io import atomic_path, write_json

from .conftest import REPO

HOUR = 3600.0  # older than io.SWEEP_AFTER_S


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.json"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    write_json(target, {"a": 1})
    assert synced == [("file", False), ("folder", True)]
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_a_failed_write_leaves_neither_target_nor_temporary_file(tmp_path):
    target = tmp_path / "t.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_killed_writes_leftover_is_swept_and_a_live_one_kept(tmp_path):
    """A writer killed (SIGKILL) in the middle of atomic_path leaves its temporary file; while it lived, the
    next write of the same target left it alone; once it is dead, that write removes it."""
    target = tmp_path / "model.json"
    script = (
        "import sys, time\n"
        "from galmorph.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(120)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        leftover = Path(writer.stdout.readline().strip())
        assert leftover.name.startswith(".model.json.") and leftover.name.endswith(".tmp")
        _age(leftover, HOUR)
        fresh = tmp_path / ".model.json.fresh.tmp"  # an instant ago: maybe a writer that has not locked it yet
        fresh.write_text("")
        other = tmp_path / ".other.json.dead.tmp"  # another target's: its own next write sweeps it
        other.write_text("")
        _age(other, HOUR)

        write_json(target, {"v": 1})
        assert leftover.exists()  # its writer still runs and holds it
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    write_json(target, {"v": 2})
    assert not leftover.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.json.fresh.tmp", ".other.json.dead.tmp", "model.json"]


@pytest.mark.skipif(shutil.which("dvc", path=str(Path(sys.executable).parent)) is None, reason="dvc not installed")
def test_dvc_ignores_temporary_files():
    dvc = str(Path(sys.executable).parent / "dvc")
    leftovers = ["data/raw/.source.json.k2x9_q.tmp", "data/processed/.splits.parquet.a1b2c3.tmp"]
    done = subprocess.run([dvc, "check-ignore", *leftovers], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == leftovers
    kept = subprocess.run([dvc, "check-ignore", "data/raw/source.json"], cwd=REPO, capture_output=True, text=True)
    assert kept.returncode == 1


def test_palette_png_is_a_256_colour_png_a_fraction_of_the_rgba_bytes_and_the_same_every_time():
    """The one encoder of the PNGs kept in git (evaluation's image grids, the study's comparison plots)."""
    import io as stdio

    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    def figure() -> Figure:
        fig = Figure(figsize=(4, 3))
        ax = fig.add_subplot()
        ax.imshow(np.random.default_rng(0).random((48, 64, 3)))  # many colours: the quantiser has work to do
        ax.plot([0, 63], [0, 47], color="tab:red")
        return fig

    data = io.palette_png(figure(), dpi=80)
    rgba = stdio.BytesIO()
    figure().savefig(rgba, format="png", dpi=80)
    with Image.open(stdio.BytesIO(data)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "P", (320, 240))
        assert len(im.getcolors(maxcolors=256)) <= 256
        assert not {k for k in im.info if k.lower() in {"software", "creation time"}}  # no metadata: stable bytes
    assert len(data) < 0.6 * len(rgba.getvalue())
    assert io.palette_png(figure(), dpi=80) == data
    tight = io.palette_png(figure(), dpi=80, bbox_inches="tight")  # savefig's options pass through
    with Image.open(stdio.BytesIO(tight)) as im:
        assert im.size != (320, 240)
