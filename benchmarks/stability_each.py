"""The stability refits (evaluate.stability) one repeated split at a time, each saved as soon as it is done.

On 2 CPU cores one refit of `make real` takes 25-70 minutes, so K = 3 inside the evaluate stage is all or
nothing: an interrupted evaluate keeps none of the refits it finished. This runs the same code
(galmorph.evaluation.stability.run_stability, i.e. training's fit() on split_k, scored on split_k's test rows)
for one column at a time and writes OUT/<column>.json when it is done; a column already written is skipped, so
a rerun goes on where the last one stopped. At the end it prints each split and the mean ± std of the ones done,
as evaluate's stability section does.

Run it in the project (or real_runs.sh's scratch copy) whose params.yaml and splits it should use, with the
recipe's overrides after `--`, as `galmorph -S ...` takes them:

    .venv/bin/python benchmarks/stability_each.py split_1 split_2 split_3 --out runs/stability -- \\
        -S data.source=manifest -S train.mode=finetune ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from galmorph.cli import resolve_params
from galmorph.data.dataset import read_splits
from galmorph.evaluation.stability import repeated_split_columns, run_stability, summarize


def main() -> None:
    argv = sys.argv[1:]
    ours, sets = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("columns", nargs="+", help="repeated split columns, e.g. split_1 split_2 split_3")
    parser.add_argument("--out", default="runs/stability", help="one <column>.json per finished refit")
    args = parser.parse_args(ours)
    params = resolve_params(None, [s for s in sets if s != "-S"])
    splits = read_splits(params.split.out)
    known = repeated_split_columns(splits)
    unknown = [c for c in args.columns if c not in known]
    if unknown:
        raise SystemExit(f"{params.split.out}: no column {', '.join(unknown)} (it has {', '.join(known)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for column in args.columns:
        path = out / f"{column}.json"
        if path.is_file():
            print(f"{column}: done before ({path})")
            continue
        start = time.perf_counter()
        row = run_stability(splits.drop(columns=[c for c in known if c != column]), params).iloc[0].to_dict()
        row["train_and_score_s"] = round(time.perf_counter() - start)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(row, default=float, indent=1))
        tmp.replace(path)
        print(
            f"{column}: accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f} in {row['train_and_score_s']} s"
        )
    done = [json.loads((out / f"{c}.json").read_text()) for c in args.columns if (out / f"{c}.json").is_file()]
    summary = summarize(pd.DataFrame(done))
    print(
        f"{summary['n_splits']} splits: accuracy {summary['accuracy_mean']:.4f} ± {summary['accuracy_std']:.4f}, "
        f"macro F1 {summary['macro_f1_mean']:.4f} ± {summary['macro_f1_std']:.4f}"
    )


if __name__ == "__main__":
    main()
