"""fit() under torchrun: 2 CPU processes with the gloo backend, both training modes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from galmorph.training.checkpoint import CHECKPOINT_NAME
from tests.training_utils import REPO, make_catalogue, tiny_params

TIMING = ("images_per_s", "epoch_time_s")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import pandas as pd, torch
    from galmorph.config import load_params
    from galmorph.training.distributed import env_context
    from galmorph.training.loop import fit

    torch.set_num_threads(1)
    params_path, splits, out = sys.argv[1:4]
    params = load_params(params_path)
    ctx = env_context()
    result = fit(pd.read_parquet(splits), params, checkpoint_dir=os.path.join(out, "ck"), progress=False)
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{ctx.rank}.pt"))
    with open(os.path.join(out, f"rank{ctx.rank}.json"), "w") as fh:
        json.dump({"world": ctx.world_size, "history": result.history,
                   "val_logits": result.val_logits.tolist()}, fh)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_two_process_gloo_training(params, tmp_path, mode):
    catalogue = make_catalogue(tmp_path, n=40)
    catalogue.to_parquet(tmp_path / "splits.parquet")
    p = tiny_params(params, tmp_path, mode=mode, epochs=2, batch_size=4, lr=0.003)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "worker.py"]
    cmd += [str(tmp_path / "params.yaml"), str(tmp_path / "splits.parquet"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["world"] == 2
    # metrics are reduced over both processes, so every rank sees (and early-stops on) the same numbers;
    # only the timings are each process's own
    histories = [[{k: v for k, v in row.items() if k not in TIMING} for row in r["history"]] for r in runs]
    assert len(histories[0]) == 2 and histories[0] == histories[1]
    assert len(runs[0]["val_logits"]) == 8  # validation shards gathered back into one set
    # DDP keeps the replicas identical
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    ckpt = torch.load(tmp_path / "ck" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
