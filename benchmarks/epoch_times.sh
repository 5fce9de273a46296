#!/usr/bin/env bash
# Seconds per training epoch of named recipes on ../shared/galaxyzoo, measured one after another in one scratch copy,
# with the first recipe run again at the end: this machine's speed drifts (the same recipe has taken 35 s and 57 s
# an epoch on different days), so recipes are compared only within one run, and the repeat shows the drift.
# Trains only (no evaluate); each recipe's -S flags go on the base of benchmarks/real_env.sh, as in real_runs.sh:
#
#   EPOCHS=3 bash benchmarks/epoch_times.sh fast="$FAST" scale="$FAST -S augment.scale=[0.7,1.4]"
#
# Prints each run's epoch times, their median and its ratio to the first recipe's median (both of its runs pooled).
# EPOCHS (default 3), SEED (default 1), SCRATCH and REUSE as in real_runs.sh.
set -euo pipefail
for spec in "$@"; do
  [[ $spec == *=* ]] || { echo "epoch_times.sh: $spec: expected NAME=\"-S flags\" (NAME= for the base recipe)" >&2; exit 2; }
done
[ $# -ge 1 ] || { echo "epoch_times.sh: expected at least one NAME=\"-S flags\" recipe (the first is the baseline)" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
EPOCHS=${EPOCHS:-3}
SEED=${SEED:-1}
# shellcheck source=benchmarks/real_env.sh
source "$REPO/benchmarks/real_env.sh"
galmorph "${S[@]}" tune > /dev/null
specs=("$@" "$1")
for i in "${!specs[@]}"; do
  spec=${specs[$i]}
  name=${spec%%=*}
  extra=${spec#*=}
  # shellcheck disable=SC2086  # extra holds several words on purpose
  galmorph "${S[@]}" $extra -S "train.seed=$SEED" train > "runs/epochs-$i-$name.log" 2>&1
  cp reports/train/curves.csv "runs/epochs-$i-$name.csv"
done
python - "${specs[@]}" <<'PY'
import statistics
import sys

import pandas as pd

names = [spec.split("=", 1)[0] for spec in sys.argv[1:]]
times = [pd.read_csv(f"runs/epochs-{i}-{name}.csv")["epoch_time_s"].tolist() for i, name in enumerate(names)]
base = statistics.median(times[0] + times[-1])
print(f"{'run':<24} {'epoch seconds':<32} {'median':>7} {'ratio':>6}")
for i, (name, t) in enumerate(zip(names, times)):
    label = f"{name} (repeat)" if i == len(names) - 1 else name
    median = statistics.median(t)
    print(f"{label:<24} {', '.join(f'{s:.1f}' for s in t):<32} {median:7.1f} {median / base:6.2f}")
PY
