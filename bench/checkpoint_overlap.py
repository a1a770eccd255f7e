"""Step time with a checkpoint every step over step time with none, through the real CLI:

    python -m cdb.train --scale S --max-steps K --set train.checkpoint_every=1   (vs =K+1: none but the last)

Checkpoints are uploaded by Ray Train in the background (asynchronous report) while the next steps
train, so the ratio shows what checkpointing still costs the training loop: DeepSpeed writing the
shard locally, plus whatever the upload takes from the same cores. Both runs see the same data order
(same seed), so step i carries the same tokens in both: the per-step ratio of `train/tokens_per_s`
(logged every step; the window of step i includes the checkpoint of step i-1) is the ratio of step
times. The headline is the median over the steps after the warm-up, over all rounds. Runs alternate
none, every, every, none, ...

    python bench/checkpoint_overlap.py [--scale tiny] [--steps 30] [--warmup 3] [--rounds 1]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common

_common.setup_env(cpu=True)


def train(scale: str, every: int, steps: int, work: str, uri: str, name: str) -> float:
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "cdb.train", "--scale", scale, "--max-steps", str(steps), "--num-workers", "1",
           "--output-dir", os.path.join(work, name), "--tracking-uri", uri, "--run-name", name,
           "--set", "eval.suite=off", "--set", "train.log_every=1", "--set", f"train.eval_every={steps}",
           "--set", f"train.checkpoint_every={every}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def tokens_per_s(uri: str, name: str) -> dict[int, float]:
    from cdb import tracking

    run = tracking.find_run(uri, "cdb", name)
    return tracking.metric_history(uri, run.id, "train/tokens_per_s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cdb-ckpt-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        for round_ in range(args.rounds):
            measured = {}
            for kind in (("none", "every") if round_ % 2 == 0 else ("every", "none")):
                name = f"ckpt-{kind}-r{round_}"
                every = 1 if kind == "every" else args.steps + 1
                wall = train(args.scale, every, args.steps, work, uri, name)
                measured[kind] = tokens_per_s(uri, name)
                values = [v for s, v in measured[kind].items() if s > args.warmup]
                print(f"[checkpoint_overlap] {args.scale} {kind}: median {statistics.median(values):,.0f} tok/s "
                      f"over {len(values)} steps, {wall:.0f} s wall", flush=True)
            # The last step checkpoints in both runs; the step after a checkpoint is where it shows.
            steps = [s for s in measured["every"] if args.warmup < s < args.steps and s in measured["none"]]
            ratios += [measured["none"][s] / measured["every"][s] for s in steps]
    print(f"[checkpoint_overlap] {args.scale}: step time with a checkpoint every step / none: median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} paired steps")


if __name__ == "__main__":
    main()
