#!/usr/bin/env bash
# The README's MLflow screenshots: a tiny sweep of three methods into a fresh sqlite store, `mlflow ui`
# on it, and headless Chromium's pictures of the runs table (the link cdb.sweep prints) and of the
# Compare view of the sweep's training runs.
#
#   scripts/mlflow_screenshots.sh [OUT_DIR]      (default docs/images; needs Debian's chromium:
#                                                  sudo apt-get install -y chromium)
#
# Writes OUT_DIR/mlflow_runs_table.png and OUT_DIR/mlflow_compare.png (256-colour PNGs). Everything else
# (store, runs, logs) goes to a temporary folder, removed at the end; the mlflow server it starts is
# stopped by its process group id. PYTHON (default .venv/bin/python) runs cdb and mlflow.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
out=$(mkdir -p "${1:-$repo/docs/images}" && cd "${1:-$repo/docs/images}" && pwd)
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || { echo "chromium not found: sudo apt-get install -y chromium" >&2; exit 2; }

work=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ]; then kill -- "-$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

uri="sqlite:///$work/mlflow.db"
echo "[screenshots] sweep: tiny x contrastive, sft, dpo (log: $work/sweep.log)"
(cd "$work" && PYTHONPATH="$repo" "$python" -m cdb.sweep --scales tiny --methods contrastive,sft,dpo \
    --max-steps 12 --set train.eval_every=3 --tracking-uri "$uri" --output-dir "$work/sweep") > "$work/sweep.log" 2>&1 \
    || { tail -40 "$work/sweep.log" >&2; exit 1; }
link=$(grep -o 'then open http://127.0.0.1:5000/#/experiments/[^ ]*' "$work/sweep.log" | tail -1 | cut -d' ' -f3)
[ -n "$link" ] || { echo "cdb.sweep printed no MLflow link" >&2; tail -20 "$work/sweep.log" >&2; exit 1; }

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "[screenshots] mlflow ui on 127.0.0.1:$port"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$(dirname "$python")/mlflow" ui --backend-store-uri "$uri" \
    --host 127.0.0.1 --port "$port" > "$work/mlflow.log" 2>&1 &
server=$!
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$work/mlflow.log" >&2; exit 1; }
    sleep 1
done
base="http://127.0.0.1:$port"

# The Compare view of the training runs, as MLflow's Compare button opens it.
compare=$("$python" - "$work/sweep/sweep.json" "$uri" <<'EOF'
import json, sys
from urllib.parse import quote
from mlflow.tracking import MlflowClient
state = json.load(open(sys.argv[1]))
experiment = MlflowClient(sys.argv[2]).get_experiment_by_name(state["experiment"]).experiment_id
runs = sorted(point["run_id"] for point in state["points"].values())
print(f"/#/compare-runs?runs={quote(json.dumps(runs), safe='')}&experiments={quote(json.dumps([experiment]), safe='')}")
EOF
)

shoot() {  # shoot FILE URL: a 1600x1000 picture once the page has settled, then down to 256 colours
    "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$work/chromium" --hide-scrollbars \
        --window-size=1600,1000 --virtual-time-budget=20000 --screenshot="$1" "$2" > "$work/chromium.log" 2>&1 \
        || { cat "$work/chromium.log" >&2; exit 1; }
    "$python" -c 'import sys; from PIL import Image; Image.open(sys.argv[1]).convert("RGB").quantize(256).save(sys.argv[1], optimize=True)' "$1"
    echo "[screenshots] $1 ($(du -k "$1" | cut -f1) KB): $2"
}
shoot "$out/mlflow_runs_table.png" "$base${link#http://127.0.0.1:5000}"
shoot "$out/mlflow_compare.png" "$base$compare"
