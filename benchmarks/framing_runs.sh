#!/usr/bin/env bash
# The README's framing comparison: the same short recipe trained and evaluated with the fixed 256-px crop, the
# fixed 192-px crop and adaptive framing, on ../shared/galaxyzoo (per source) and ../shared/ood-dev, through
# benchmarks/real_runs.sh (a scratch copy of this checkout), then the table.
#
#   bash benchmarks/framing_runs.sh                       # 4 epochs each, seed 0: ~5-17 min a run on 2 cores
#   EPOCHS=25 SEEDS="0 1" bash benchmarks/framing_runs.sh # the full-length check before changing the default
set -euo pipefail
export SCRATCH=${SCRATCH:-/tmp/galmorph-framing}
exec bash "$(dirname "$0")/real_runs.sh" fixed256="-S preprocess.crop=256" fixed192="-S preprocess.crop=192" \
  adaptive="-S preprocess.framing=adaptive -S preprocess.frame_scale=2.5 -S preprocess.frame_min=48"
