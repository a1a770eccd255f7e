"""tokens/s of `smol-135m` with 2 Ray workers over 1 worker on this machine, through the real CLI:

    python -m cdb.train --scale smol-135m --max-steps K --num-workers N --set eval.suite=off ...

reading `train/tokens_per_s` (non-pad tokens of all ranks per second, logged every step) from
MLflow: the median of the steps after the warm-up. Runs alternate 1, 2, 2, 1, ... workers.

    python bench/scaling.py [--steps 8] [--warmup 3] [--rounds 1]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import _common

_common.setup_env(cpu=True)


def train(workers: int, steps: int, work: str, uri: str, name: str) -> float:
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    out = os.path.join(work, name)
    cmd = [sys.executable, "-m", "cdb.train", "--scale", "smol-135m", "--max-steps", str(steps), "--num-workers",
           str(workers), "--output-dir", out, "--tracking-uri", uri, "--run-name", name, "--set", "eval.suite=off",
           "--set", f"train.checkpoint_every={steps}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def tokens_per_s(uri: str, name: str, warmup: int) -> list[float]:
    from cdb import tracking

    run = tracking.find_run(uri, "cdb", name)
    history = tracking.metric_history(uri, run.id, "train/tokens_per_s")
    return [value for step, value in sorted(history.items()) if step > warmup]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    medians = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="cdb-scaling-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        for round_ in range(args.rounds):
            for workers in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                name = f"scaling-w{workers}-r{round_}"
                wall = train(workers, args.steps, work, uri, name)
                values = tokens_per_s(uri, name, args.warmup)
                medians[workers].append(_common.median(values))
                print(f"[scaling] {workers} worker(s), round {round_}: tokens/s per step after warm-up "
                      f"{[round(v, 1) for v in values]}, median {medians[workers][-1]:.1f}; run took {wall:.0f}s",
                      flush=True)
    ratios = [two / one for one, two in zip(medians[1], medians[2])]
    _common.summary("scaling", f"{_common.median(ratios):.3f} (median tokens/s, 2 workers / 1 worker, smol-135m, "
                    f"{os.cpu_count()} cores)", ">= 1.5")


if __name__ == "__main__":
    main()
