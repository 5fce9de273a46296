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
SHARED=$(cd "$REPO/../shared" && pwd)
SCRATCH=${SCRATCH:-/tmp/galmorph-runs}
EPOCHS=${EPOCHS:-4}
SEEDS=${SEEDS:-0}
if [ "${REUSE:-0}" != 1 ]; then
  [ -e "$SCRATCH" ] && { echo "$SCRATCH exists: remove it, set SCRATCH, or REUSE=1" >&2; exit 2; }
  mkdir -p "$SCRATCH"
  (cd "$REPO" && tar --exclude=./.venv --exclude=./data --exclude=./mlruns --exclude=./models --exclude=./reports \
    --exclude=./runs --exclude=./.dvc/cache --exclude=./.dvc/tmp -cf - .) | tar -C "$SCRATCH" -xf -
fi
mkdir -p "$SCRATCH/data" "$SCRATCH/runs"
cd "$SCRATCH"
export PATH="$REPO/.venv/bin:$PATH" PYTHONPATH="$SCRATCH/src"
S=(-S data.source=manifest -S "data.manifest.path=$SHARED/galaxyzoo/labels.csv"
  -S 'data.manifest.vote_columns={spiral: gz2_t01_smooth_or_features_a02_features_or_disk_debiased, elliptical: gz2_t01_smooth_or_features_a01_smooth_debiased}'
  -S train.mode=finetune -S model.arch=resnet18 -S preprocess.crop=192 -S "train.epochs=$EPOCHS" -S train.batch_size=64
  -S train.lr=0.001 -S train.weight_decay=0.05 -S train.layer_decay=1.0 -S train.label_smoothing=0.05
  -S train.early_stopping_patience=0 -S tune.n_trials=0 -S "evaluate.stability=$([ "${STABILITY:-0}" = 1 ] && echo true || echo false)"
  -S "evaluate.ood_manifest=$SHARED/ood-dev/labels.csv")
if [ ! -f data/processed/splits.parquet ]; then
  for stage in fetch join select split; do galmorph "${S[@]}" "$stage"; done
fi
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
