#!/usr/bin/env bash
# The README's framing comparison: the same short recipe trained and evaluated with the fixed 256-px crop, the
# fixed 192-px crop and adaptive framing, on ../shared/galaxyzoo (per source) and ../shared/ood-dev, in a scratch
# copy of this checkout (its data/, models/, reports/ and mlruns/ are never touched), then the table.
#
#   bash benchmarks/framing_runs.sh                       # 4 epochs each, seed 0: ~5-17 min a run on 2 cores
#   EPOCHS=25 SEEDS="0 1" bash benchmarks/framing_runs.sh # the full-length check before changing the default
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "$REPO/../shared" && pwd)
SCRATCH=${SCRATCH:-/tmp/galmorph-framing}
EPOCHS=${EPOCHS:-4}
SEEDS=${SEEDS:-0}
[ -e "$SCRATCH" ] && { echo "$SCRATCH exists: remove it or set SCRATCH" >&2; exit 2; }
mkdir -p "$SCRATCH"
(cd "$REPO" && tar --exclude=./.venv --exclude=./data --exclude=./mlruns --exclude=./models --exclude=./reports \
  --exclude=./runs --exclude=./.dvc/cache --exclude=./.dvc/tmp -cf - .) | tar -C "$SCRATCH" -xf -
mkdir -p "$SCRATCH/data"
cd "$SCRATCH"
export PATH="$REPO/.venv/bin:$PATH" PYTHONPATH="$SCRATCH/src"
S=(-S data.source=manifest -S "data.manifest.path=$SHARED/galaxyzoo/labels.csv"
  -S 'data.manifest.vote_columns={spiral: gz2_t01_smooth_or_features_a02_features_or_disk_debiased, elliptical: gz2_t01_smooth_or_features_a01_smooth_debiased}'
  -S train.mode=finetune -S model.arch=resnet18 -S "train.epochs=$EPOCHS" -S train.batch_size=64 -S train.lr=0.001
  -S train.weight_decay=0.05 -S train.layer_decay=1.0 -S train.label_smoothing=0.05 -S train.early_stopping_patience=0
  -S tune.n_trials=0 -S evaluate.stability=false -S "evaluate.ood_manifest=$SHARED/ood-dev/labels.csv")
for stage in fetch join select split; do galmorph "${S[@]}" "$stage"; done
declare -A FRAMING=(
  [fixed256]="-S preprocess.crop=256"
  [fixed192]="-S preprocess.crop=192"
  [adaptive]="-S preprocess.framing=adaptive -S preprocess.frame_scale=2.5 -S preprocess.frame_min=48"
)
args=()
for seed in $SEEDS; do
  for name in fixed256 fixed192 adaptive; do
    run="$name-seed$seed"
    start=$(date +%s)
    # shellcheck disable=SC2086  # FRAMING holds several words on purpose
    galmorph "${S[@]}" ${FRAMING[$name]} -S "train.seed=$seed" train > "$run.train.log" 2>&1
    galmorph "${S[@]}" ${FRAMING[$name]} -S "train.seed=$seed" evaluate > "$run.evaluate.log" 2>&1
    mkdir -p runs && cp -r reports/eval "runs/$run"
    echo "$run: $(( $(date +%s) - start )) s (train + evaluate)"
    args+=("$run=runs/$run")
  done
done
python "$REPO/benchmarks/framing_table.py" "${args[@]}"
