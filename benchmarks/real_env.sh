# Sourced by real_runs.sh and real_tune.sh: the scratch copy of this checkout (its data/, models/, reports/ and
# mlruns/ are never touched), the base recipe's -S flags in the array S, and the prepared split.
# In: REPO, SCRATCH (default /tmp/galmorph-runs), EPOCHS (default 4), REUSE, STABILITY. Leaves the shell in SCRATCH.
SHARED=$(cd "$REPO/../shared" && pwd)
SCRATCH=${SCRATCH:-/tmp/galmorph-runs}
EPOCHS=${EPOCHS:-4}
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
