#!/usr/bin/env bash
# Train + evaluate named recipes on ../shared/galaxyzoo (scored per source, and on ../shared/ood-dev) in a scratch
# copy of this checkout (its data/, models/, reports/ and mlruns/ are never touched), then the paired table
# (benchmarks/framing_table.py: accuracy per source with 95% intervals, differences from the first recipe).
# Every recipe starts from the same short base recipe (ResNet-18, finetune, 64 px); each argument adds -S flags:
#
#   EPOCHS=4 bash benchmarks/real_runs.sh base="" fast="-S train.loader=cache -S preprocess.decode=draft"
#
# EPOCHS (default 4), SEEDS (default 0), SCRATCH (default /tmp/galmorph-runs; an existing one is reused, with its
# prepared split, when REUSE=1). Each run's minutes go to SCRATCH/runs/NAME/minutes.txt. STABILITY=1 also refits
# each recipe on the repeated splits split_1..split_3 in its evaluate (the stability KPI: 3 more trainings).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SEEDS=${SEEDS:-0}
# shellcheck source=benchmarks/real_env.sh
source "$REPO/benchmarks/real_env.sh"
# tune.n_trials=0 writes reports/best_params.yaml with no tuned values: train then uses exactly the -S flags
# (a copy that carries the checkout's reports/ would otherwise apply the synthetic set's tuned values)
galmorph "${S[@]}" tune > /dev/null
args=()
for seed in $SEEDS; do
  for spec in "$@"; do
    name=${spec%%=*}
    extra=${spec#*=}
    run="$name-seed$seed"
    start=$(date +%s)
    # shellcheck disable=SC2086  # extra holds several words on purpose
    galmorph "${S[@]}" $extra -S "train.seed=$seed" train > "runs/$run.train.log" 2>&1
    mid=$(date +%s)
    # shellcheck disable=SC2086
    galmorph "${S[@]}" $extra -S "train.seed=$seed" evaluate > "runs/$run.evaluate.log" 2>&1
    rm -rf "runs/$run" && cp -r reports/eval "runs/$run" && cp models/model.pt "runs/$run/" && cp reports/train/metrics.json "runs/$run/train_metrics.json"
    echo "recipe: $extra; epochs $EPOCHS; train_s=$((mid - start)) evaluate_s=$(($(date +%s) - mid))" \
      > "runs/$run/minutes.txt"
    echo "$run: train $((mid - start)) s, evaluate $(($(date +%s) - mid)) s"
    args+=("$run=runs/$run")
  done
done
python "$REPO/benchmarks/framing_table.py" "${args[@]}"
