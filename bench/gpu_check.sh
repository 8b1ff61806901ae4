#!/usr/bin/env bash
# One prepared GPU check of the real path: set up Python, then run bench/gpu_check.py (what it measures).
#
#   bash bench/gpu_check.sh [--cpu-dry] [--parts env,build,train,joint,probe,packing]
#
# Writes ONE results file, $OUT/gpu_check.json when $OUT is set (else bench/gpu_check.json), and its log
# beside it (gpu_check.log). At most ~8 minutes: each pip call times out after 90 s, the Python part gets
# GPU_CHECK_TIMEOUT seconds (default 420; its parts skip themselves before that) and is killed after it.
#
# Python, the first that works: $PYTHON; .venv/bin/python if it imports torch and (unless --cpu-dry) sees
# CUDA; else a venv at $GPU_CHECK_VENV (default /tmp/fvlm-gpu-venv) over the system's packages
# (--system-site-packages: a CUDA image's preinstalled torch is used as it is). In it, `pip install -e .`
# when the system has no torch; with a system torch the package goes in with --no-deps (pyproject pins
# torch==2.13.0, for which pip would replace the CUDA build, or fail offline) and only the missing
# dependencies are installed. When pip cannot reach an index (an offline GPU machine) the repo goes on
# PYTHONPATH over the system's packages, and a part that needs a missing package (diffusers, ray) records the
# import error. Wheels in .whl/ (pip download ...) are installed first, with --no-index. A torch without CUDA
# (the pin resolves to a CPU build from a CPU index) is reported as "CUDA not usable" with the build found
# (exit code 3).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for a in "$@"; do [ "$a" = "--cpu-dry" ] && DRY=1; done
DEST="${OUT:-bench}"
mkdir -p "$DEST"
RESULT="$DEST/gpu_check.json"
LOG="$DEST/gpu_check.log"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false
unset RAY_ADDRESS

usable() { # $1: a python that imports torch, and sees CUDA unless --cpu-dry
  command -v "$1" >/dev/null 2>&1 || return 1
  if [ "$DRY" = 1 ]; then
    timeout 120 "$1" -c "import torch" 2>/dev/null
  else
    timeout 120 "$1" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
  fi
}

missing_deps() { # the project's dependencies $1 cannot import, as pip requirements (torch excluded)
  timeout 120 "$1" - <<'EOF'
import importlib.util
need = {"ray": "ray[tune]>=2.60,<2.61", "optuna": "optuna>=4.0", "transformers": "transformers>=5.0",
        "diffusers": "diffusers>=0.30", "tokenizers": "tokenizers>=0.20", "pyarrow": "pyarrow>=15",
        "pandas": "pandas>=2.2", "scipy": "scipy>=1.13", "seaborn": "seaborn>=0.13", "yaml": "pyyaml>=6",
        "safetensors": "safetensors"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
EOF
}

setup() {
  SETUP=""
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fvlm-site \
      .whl/*.whl && export PYTHONPATH="/tmp/fvlm-site:${PYTHONPATH:-}" && SETUP="wheels from .whl/; "
  fi
  if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
    SETUP+="PYTHON=$PYTHON"
    return
  fi
  if usable .venv/bin/python; then
    PY=.venv/bin/python
    SETUP+=".venv"
    return
  fi
  local base
  base="$(command -v python3)"
  local venv="${GPU_CHECK_VENV:-/tmp/fvlm-gpu-venv}"
  [ -x "$venv/bin/python" ] || timeout 120 "$base" -m venv --system-site-packages "$venv"
  PY="$venv/bin/python"
  local pip=("$PY" -m pip install -q --retries 0 --timeout 15 --disable-pip-version-check)
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if timeout 90 "${pip[@]}" -e .; then SETUP+="$venv: pip install -e ."; return; fi
    SETUP+="$venv: pip install -e . failed; "
  elif timeout 60 "${pip[@]}" --no-deps --no-build-isolation -e . 2>/dev/null; then
    SETUP+="$venv over the system torch: pip install --no-deps -e .; "
    local missing
    missing="$(missing_deps "$PY")"
    if [ -z "$missing" ]; then SETUP+="no dependency missing"; return; fi
    # shellcheck disable=SC2086 # one requirement per word
    if timeout 90 "${pip[@]}" $missing; then SETUP+="installed $missing"; return; fi
    SETUP+="could not install $missing; "
  fi
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
  SETUP+="repo on PYTHONPATH over the system packages (missing: $(missing_deps "$PY"))"
}

main() {
  rm -f "$RESULT"
  echo "gpu_check: $(date -u +%FT%TZ) on $(hostname); results -> $RESULT"
  command -v nvidia-smi >/dev/null 2>&1 &&
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
  setup
  echo "python: $PY ($SETUP)"
  timeout -k 20 "${GPU_CHECK_TIMEOUT:-420}" "$PY" bench/gpu_check.py --out "$RESULT" --setup "$SETUP" \
    --budget-s "$(( ${GPU_CHECK_TIMEOUT:-420} - 20 ))" "$@"
  local rc=$?
  if [ ! -s "$RESULT" ]; then # nothing written (the interpreter itself failed): one JSON that says so
    local why="gpu_check.py exited $rc before writing results (see gpu_check.log)"
    printf '{"check": "fvlm bench/gpu_check.py", "ok": false, "setup": "%s", "error": "%s"}\n' \
      "${SETUP//\"/\'}" "$why" >"$RESULT"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    "$PY" - "$RESULT" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1])); r["ok"] = False; r["killed"] = "past GPU_CHECK_TIMEOUT"
json.dump(r, open(sys.argv[1], "w"), indent=1)
EOF
  fi
  echo "gpu_check: exit $rc; $RESULT"
  return "$rc"
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
