#!/usr/bin/env bash
# The whole study on the embedded default (the synthetic video world), cpu preset unless told otherwise:
#   LR sweep per tier -> scaling grid (IsoFLOP) -> one ablation with a verdict -> scaling-law fits + report.
# Usage:
#   ./speedrun.sh                       # cpu preset (auto: 4090 when CUDA is visible)
#   ./speedrun.sh --smoke-test          # seconds per trial, the same pipeline end to end
#   PRESET=4090 ./speedrun.sh           # extra flags go to every tune/ command
# Every step is idempotent: rerunning skips what is complete (tiers in best_lr.json, cells in the store).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-disabled}
PRESET=${PRESET:-$($PY -c 'import torch; print("4090" if torch.cuda.is_available() else "cpu")')}
SUFFIX=""
for arg in "$@"; do [ "$arg" = "--smoke-test" ] && SUFFIX="-smoke"; done

$PY tune/lr_sweep.py --preset "$PRESET" "$@"
$PY tune/scaling_grid.py --preset "$PRESET" "$@"
$PY tune/ablate.py --param deep_query --preset "$PRESET" "$@"
$PY analysis/fit_laws.py --store "runs/grid-$PRESET$SUFFIX"
