"""Evaluation on Ray workers (cdb.eval.remote): the items split over copies of the model give the
numbers one copy gives, sampled generations included, and the evaluating command itself loads no weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdb.eval.remote import split

REPO = Path(__file__).resolve().parent.parent


def test_split_keeps_order_and_balances():
    items = list(range(10))
    parts = split(items, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sum(parts, []) == items
    assert split([1], 3) == [[1], [], []]


def run_eval(tmp_path: Path, name: str, flags: list[str], ray_address: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    out = tmp_path / name
    cmd = [sys.executable, "-m", "cdb.eval", "--model", "builtin:tiny-llama", "--tasks", "bias,toxicity", "--limit", "12",
           "--no-progress", "--output", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "eval.json").read_text())


@pytest.mark.integration
def test_items_split_over_workers_give_the_numbers_of_one(tmp_path, ray_address):
    # Under self-debias each CrowS/StereoSet item is scored under its bias type's prefix: the
    # per-request prefixes must travel with their items to the copy that scores them.
    _, alone = run_eval(tmp_path, "one", ["--decoding", "self-debias"])
    proc, shared = run_eval(tmp_path, "two", ["--decoding", "self-debias", "--num-workers", "2"], ray_address)
    assert "items split over 2 copies of the model" in proc.stdout + proc.stderr
    bias = {k: v for k, v in alone["metrics"].items() if k.startswith("eval/bias/") and v is not None}
    assert bias, alone["metrics"]
    for key, value in bias.items():
        assert shared["metrics"][key] == pytest.approx(value, abs=1e-6), key
    # Sampled continuations (toxicity: 12 prompts x 2 samples) are each prompt's own, wherever it ran:
    # the same texts, so the same per-item values.
    one, two = ([json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
                for name in ("one", "two"))
    assert [s["output"] for s in one if s["task"] == "toxicity"] == [s["output"] for s in two if s["task"] == "toxicity"]
    items = [json.loads((tmp_path / name / "items.json").read_text())["metrics"] for name in ("one", "two")]
    toxicity = [name for name in items[0] if name.startswith("toxicity/")]
    assert toxicity and all(items[0][name]["values"] == items[1][name]["values"] for name in toxicity)
