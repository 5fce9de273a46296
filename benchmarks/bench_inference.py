"""ResNet-50 inference throughput on CPU: the baseline (fp32, NCHW, eager) beside the faster variants.

All variants run in one process, interleaved round by round (so a busy neighbour slows them alike), on
the same random batch; each prints its median images/s, the ratio to the baseline's median, and its
largest deviation from the baseline's logits (exact variants differ by rounding only).
The variant marked "default" is what galmorph.models.inference.predict_logits runs.

    .venv/bin/python benchmarks/bench_inference.py                      # 64 px (params.yaml's image_size)
    .venv/bin/python benchmarks/bench_inference.py --image-size 224 --batch-size 32
    .venv/bin/python benchmarks/bench_inference.py --compile            # also torch.compile (slow to compile)
    .venv/bin/python benchmarks/bench_inference.py --images 256         # + end to end on real JPEGs
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from galmorph.config import ModelConfig, PreprocessConfig
from galmorph.models.inference import amp_dtype_for, cpu_has_fast_bf16, predict_logits, prepare_for_inference
from galmorph.models.resnet import build_model

REPO = Path(__file__).resolve().parents[1]


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, weights="none", head="mlp", hidden=1024, dropout=0.2))
    model.train()
    with torch.no_grad():  # realistic BatchNorm statistics, so folding them is not a no-op
        for _ in range(2):
            model(torch.randn(16, 3, 64, 64))
    return model.eval()


def variants(model: torch.nn.Module, x: torch.Tensor, with_compile: bool) -> dict[str, Callable[[], torch.Tensor]]:
    cpu = torch.device("cpu")
    cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = prepare_for_inference(model, cpu)  # folded + channels_last: the default
    import copy

    plain_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(m: torch.nn.Module, inp: torch.Tensor, mode: str = "inference", bf16: bool = False):
        def f() -> torch.Tensor:
            ctx = torch.inference_mode() if mode == "inference" else torch.no_grad()
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx, amp:
                return m(inp).float()

        return f

    out = {
        "fp32 NCHW eager, no_grad (baseline)": run(model, x, "no_grad"),
        "fp32 NCHW eager, inference_mode": run(model, x),
        "fp32 channels_last": run(plain_cl, cl),
        "bf16 autocast, channels_last": run(plain_cl, cl, bf16=True),
        "BN folded + channels_last (default)": run(model_cl, cl, bf16=amp_dtype_for(cpu, "auto") is not None),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; measured here for comparison only
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(plain_cl, cl)))
    out["torch.jit trace + freeze, channels_last"] = run(frozen, cl)
    if with_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold weights, prepack convolutions for oneDNN
        compiled = torch.compile(model_cl)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(cl)
        print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s", file=sys.stderr)
        out["torch.compile (inductor, freezing) + folded + channels_last"] = run(compiled, cl)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=2, help="batches per variant per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes to compile)")
    ap.add_argument("--images", type=int, default=0, help="also time predict_logits end to end on N real JPEGs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = _model(args.arch)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    runs = variants(model, x, args.compile)
    reference = runs["fp32 NCHW eager, no_grad (baseline)"]()
    deviation = {name: float((f() - reference).abs().max()) for name, f in runs.items()}  # also warms up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, f in runs.items():
            start = time.perf_counter()
            for _ in range(args.batches):
                f()
            rates[name].append(args.batches * args.batch_size / (time.perf_counter() - start))

    base = statistics.median(rates["fp32 NCHW eager, no_grad (baseline)"])
    print(
        f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds x {args.batches} batches; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_fast_bf16()}"
    )
    print("| variant | median img/s | min | max | vs baseline | max abs logit diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"| {name} | {med:.1f} | {min(r):.1f} | {max(r):.1f} | {med / base:.2f}x | {deviation[name]:.1e} |")

    if args.images:
        images = sorted((REPO.parent / "shared" / "galaxyzoo" / "images" / "gz1").glob("*.jpeg"))[: args.images]
        if not images:
            print("no real images found for the end-to-end figure", file=sys.stderr)
            return
        pre = PreprocessConfig(resize=424, crop=256, image_size=args.image_size)
        e2e = {}
        for name, kwargs in (
            ("predict_logits default (2 decode workers)", {}),
            ("same loader, baseline model", {"baseline": True}),
        ):
            start = time.perf_counter()
            if kwargs:
                _baseline_predict(model, images, pre, args.batch_size)
            else:
                predict_logits(model, images, pre, batch_size=args.batch_size, num_workers=2, device="cpu")
            e2e[name] = len(images) / (time.perf_counter() - start)
        for name, rate in e2e.items():
            print(f"end to end, {len(images)} real 423 px JPEGs: {name}: {rate:.1f} img/s")


def _baseline_predict(model: torch.nn.Module, images: list[Path], pre: PreprocessConfig, batch_size: int) -> None:
    from torch.utils.data import DataLoader

    from galmorph.data.dataset import ImageDataset
    from galmorph.data.transforms import EvalPreset

    loader = DataLoader(ImageDataset(images, EvalPreset(pre)), batch_size=batch_size, num_workers=2)
    with torch.no_grad():
        for x, *_ in loader:
            model(x)


if __name__ == "__main__":
    main()
