"""Where a 64-px training step's time goes on these CPUs, and what the fused optimizer saves (issue 9).

The cache loader left the training step itself as the cost of finetuning (BENCHMARKS.md "loader"), and ResNet-50
stayed at 1.48x the old path against a 2x target. This times one step on a batch already in memory, as `fit()`
runs it (the product's model and `build_optimizer`, bf16 autocast where the CPU has native bf16, channels_last),
split into forward, backward and optimizer, for four arms in alternating rounds of the same run:

  * `foreach`: `build_optimizer(..., fused=False)`, AdamW as `fit()` built it before (torch's default multi-tensor
    update), the baseline;
  * `fused`: `build_optimizer`, what `fit()` builds now (one fused AdamW kernel);
  * `fused, layer4 frozen`: the same with layer4's weights frozen, so its weight gradients and updates are not
    computed: the difference to `fused` is what those cost (layer4 holds 15 M of ResNet-50's 23.5 M weights and
    works on 2x2 maps at 64 px, so its weight gradients are large GEMMs over few pixels);
  * `fused, batch 2x`: twice the batch, the per-image cost when those weight gradients are shared by more images.

    .venv/bin/python benchmarks/bench_step.py --arch resnet50 --rounds 3 --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from galmorph.config import load_params, replace
from galmorph.models.inference import amp_dtype_for, autocast
from galmorph.models.resnet import FEATURE_DIMS, build_model
from galmorph.paths import repo_root
from galmorph.training.loop import build_optimizer

ARMS = ("foreach", "fused", "fused, layer4 frozen", "fused, batch 2x")


@dataclasses.dataclass
class Step:
    """One arm: its own model, optimizer and fixed batch; a call is one training step, returning its forward,
    backward and optimizer seconds and the batch's images."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    amp: torch.dtype | None

    def __call__(self) -> tuple[float, float, float, int]:
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), self.amp):
            loss = torch.nn.functional.cross_entropy(self.model(self.x).float(), self.y)
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, len(self.y)


def make_step(arm: str, arch: str, side: int, batch: int, amp: torch.dtype | None) -> Step:
    """The arm's training step (the product's model and optimizer, or the baseline's) on a fixed random batch."""
    params = load_params(repo_root() / "params.yaml")
    torch.manual_seed(0)
    model = build_model(replace(params.model, arch=arch, weights="")).to(memory_format=torch.channels_last).train()
    if arm == "fused, layer4 frozen":
        model.freeze(("layer4",))
    tcfg = replace(params.train, optimizer="adamw", lr=1e-4, weight_decay=0.01, layer_decay=1.0)
    opt = build_optimizer(model, tcfg, fused=arm != "foreach")
    n = batch * 2 if arm == "fused, batch 2x" else batch
    x = torch.randn(n, 3, side, side).contiguous(memory_format=torch.channels_last)
    return Step(model, opt, x, torch.randint(0, 2, (n,)), amp)


def at_least_one(text: str) -> int:
    """argparse type: a whole number >= 1 (a bad one is argparse's one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def step_arguments(doc: str | None, *, arch: str, steps: int) -> argparse.Namespace:
    """The command line of the step benchmarks (this one and bench_compile): network, input side, batch, rounds and
    steps a round, each size a whole number >= 1."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--arch", default=arch, choices=sorted(FEATURE_DIMS))
    ap.add_argument("--side", type=at_least_one, default=64)
    ap.add_argument("--batch", type=at_least_one, default=64)
    ap.add_argument("--rounds", type=at_least_one, default=3)
    ap.add_argument("--steps", type=at_least_one, default=steps)
    return ap.parse_args()


def main() -> None:
    args = step_arguments(__doc__, arch="resnet50", steps=4)
    amp = amp_dtype_for(torch.device("cpu"), "auto")
    steps = {arm: make_step(arm, args.arch, args.side, args.batch, amp) for arm in ARMS}
    for step in steps.values():  # warm-up: oneDNN picks its kernels, glibc maps the activations
        step()
        step()
    times: dict[str, list[tuple[float, float, float, int]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm, step in steps.items():
            times[arm].extend(step() for _ in range(args.steps))
    print(
        f"{args.arch}, {args.side} px, batch {args.batch}, autocast {amp}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps per arm (medians)"
    )
    print("| arm | forward s | backward s | optimizer s | step s | images/s | x foreach |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for arm, rows in times.items():
        fwd, bwd, opt = (statistics.median(r[i] for r in rows) for i in range(3))
        total = statistics.median(sum(r[:3]) for r in rows)
        rate = rows[0][3] / total
        base = base or rate
        print(f"| {arm} | {fwd:.3f} | {bwd:.3f} | {opt:.3f} | {total:.3f} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
