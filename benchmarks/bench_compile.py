"""Does torch.compile speed up the finetune training step on these CPUs? (issue 9: training throughput ≥ 2x).

The ResNet step itself is what is left after the cache loader (BENCHMARKS.md "loader"), so this times only the
step: forward, backward and AdamW on one batch already in memory, as `fit()` runs it (bf16 autocast where the
CPU has native bf16, channels_last), eager against `torch.compile` (inductor) of the same model, in alternating
rounds of the same run. The one-off compile time is printed apart.

    .venv/bin/python benchmarks/bench_compile.py --arch resnet18 --side 64 --batch 64 --rounds 3 --steps 5
"""

from __future__ import annotations

import statistics
import time

import torch

from bench_step import step_arguments
from galmorph.config import load_params, replace
from galmorph.models.inference import amp_dtype_for, autocast
from galmorph.models.resnet import build_model
from galmorph.paths import repo_root


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None):
    """One training step of `model` (AdamW, cross-entropy) on the batch (x, y)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(torch.device("cpu"), amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, steps: int) -> float:
    """Mean seconds per call of `step` over `steps` calls."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = step_arguments(__doc__, arch="resnet18", steps=5)
    torch.manual_seed(0)
    params = load_params(repo_root() / "params.yaml")
    amp = amp_dtype_for(torch.device("cpu"), "auto")
    x = torch.randn(args.batch, 3, args.side, args.side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch,))
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        m = build_model(replace(params.model, arch=args.arch, weights="")).to(memory_format=torch.channels_last)
        models[name] = m.train() if name == "eager" else torch.compile(m.train())
    steps = {name: make_step(m, x, y, amp) for name, m in models.items()}
    start = time.perf_counter()
    steps["compiled"]()  # the one-off compile of forward and backward
    compile_s = time.perf_counter() - start
    steps["eager"]()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.steps))
    print(
        f"{args.arch}, {args.side} px, batch {args.batch}, autocast {amp}, {torch.get_num_threads()} threads; "
        f"compile (first step) {compile_s:.0f} s"
    )
    base = statistics.median(times["eager"])
    print("| step | s per batch (median of rounds) | images/s | x eager |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {med:.3f} | {args.batch / med:.1f} | {base / med:.2f} |")


if __name__ == "__main__":
    main()
