"""train.keep_freed_memory (training/memory.py): glibc keeps freed blocks for reuse instead of unmapping them,
and fit() asks for it exactly when the parameter says so."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import galmorph.training.loop as loop
from tests.training_utils import make_catalogue, one_thread, tiny_params

_one_thread = pytest.fixture(autouse=True)(one_thread)

# rounds of allocating, touching (torch.ones; numpy would ask for huge pages) and freeing 64 MiB: over glibc's
# largest dynamic mmap threshold (32 MiB), so by default every round maps it afresh and takes a page fault per 4 KiB
# page (16,384 a round). With the thresholds raised the heap grows over the first rounds (7 here), then is reused:
# the faults of the last 10 of 30 rounds are counted, the steady state of a training loop
FAULTS = """
import resource, sys
import torch
from galmorph.training.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(20):
    torch.ones(1 << 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(1 << 24)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, kept_faults = _faults("keep")
    _, default_faults = _faults("default")
    assert kept == "True"
    assert default_faults >= 10 * 16_000  # every round maps its 64 MiB afresh
    assert kept_faults < 16_000  # not one round's worth: the pages are reused (0 here)


@pytest.mark.parametrize("keep", [True, False])
def test_fit_keeps_freed_memory_only_when_asked(keep, params, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)
    cat = make_catalogue(tmp_path / "images", n=16)
    loop.fit(cat, tiny_params(params, tmp_path, epochs=1, keep_freed_memory=keep), progress=False)
    assert calls == ([1] if keep else [])
