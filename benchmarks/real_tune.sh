#!/usr/bin/env bash
# An Optuna study on ../shared/galaxyzoo (`galmorph tune`, every trial a nested MLflow run) from real_runs.sh's base
# recipe plus the given -S flags, in the same scratch copy; then its best trials and the -S flags of the best one,
# ready to train at full length with real_runs.sh. The study's plots and best_params.yaml go to SCRATCH/runs/NAME.
#
#   TRIALS=12 TUNE_EPOCHS=8 SCRATCH=/tmp/real REUSE=1 bash benchmarks/real_tune.sh tune-real="<make real's -S flags>"
#
# TRIALS (default 12), TUNE_EPOCHS (epochs per trial, default 8; the median pruner stops unpromising trials after
# 2), SPACE (a YAML flow mapping merged into params.yaml's tune.space, as `dvc exp run -S` merges it: the keys it
# names get these ranges, the others keep theirs; default: lr 2e-4..4e-3 and weight decay 1e-6..0.1, both log).
# A rerun with the same flags resumes the study (minutes.txt's tune_s counts only the last invocation; every trial's
# minutes are in MLflow); trials are ranked by validation macro F1, never by the test split or ood-dev.
set -euo pipefail
[[ $# = 1 && $1 == ?*=* ]] || { echo "usage: real_tune.sh NAME=\"<-S flags>\" (one study, named)" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/real_env.sh
source "$REPO/benchmarks/real_env.sh"
SPACE=${SPACE:-'{train.lr: {type: float, low: 0.0002, high: 0.004, log: true}, train.weight_decay: {type: float, low: 0.000001, high: 0.1, log: true}}'}
name=${1%%=*}
extra=${1#*=}
T=(-S "tune.n_trials=${TRIALS:-12}" -S "tune.epochs=${TUNE_EPOCHS:-8}" -S "tune.space=$SPACE" -S "tune.study_name=$name")
start=$(date +%s)
# shellcheck disable=SC2086  # extra holds several words on purpose
galmorph "${S[@]}" $extra "${T[@]}" tune 2>&1 | tee "runs/$name.tune.log"
rm -rf "runs/$name" && mkdir -p "runs/$name" && cp -r reports/tune reports/best_params.yaml "runs/$name/"
echo "recipe: $extra; tune: ${TRIALS:-12} trials x ${TUNE_EPOCHS:-8} epochs; tune_s=$(($(date +%s) - start))" \
  > "runs/$name/minutes.txt"
# shellcheck disable=SC2086
galmorph "${S[@]}" $extra "${T[@]}" tune --show
python - "runs/$name/best_params.yaml" <<'PY'
import sys

import yaml

best = (yaml.safe_load(open(sys.argv[1])) or {}).get("params") or {}
print("the best trial's flags:", " ".join(f"-S {k}={v}" for k, v in sorted(best.items())))
PY
