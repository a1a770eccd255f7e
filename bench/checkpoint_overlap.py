"""Step time with a checkpoint every N steps over step time with none, through the real CLI:

    python -m cdb.train --scale S --max-steps K --set train.checkpoint_every=N   (vs =K+1: none but the last)
        [--storage-path URI: checkpoints to an object store instead of the run folder]

Each rank writes its shard to a local staging folder (DeepSpeed's save), then Ray Train uploads it to
the storage in the background (asynchronous report) while the next steps train: the ratio shows what
checkpointing still costs the training loop, the local save plus whatever the upload takes from the
same cores. Both runs see the same data order (same seed), so step i carries the same tokens in both.
A step's time is the gap between the timestamps rank 0 logs its `train/` metrics with, at the end of
step i-1 and of step i: it holds the checkpoint written after step i-1. The window is whole periods
of N steps after a warm-up (steps every+2 .. every+1+periods x every), so it holds one checkpoint per
N steps; the headline is the mean step time with checkpoints over the mean without, over all rounds
(the median of the paired per-step ratios beside it). Runs alternate none, every, every, none, ...
Two runs one after the other on a shared machine see different loads, which moves every step of one
run against the other's; so each run with checkpoints also gives the ratio within itself: its mean
step over its mean step without a checkpoint in it (the steps right after one), immune to that.

    python bench/checkpoint_overlap.py [--scale tiny] [--steps 32] [--every 10] [--rounds 1]
        [--storage-path s3://BUCKET/PREFIX?endpoint_override=HOST:PORT&scheme=http]

With an S3 storage path, each run gets its own prefix under it, and the bucket is created when missing
(credentials from the environment, as for cdb.train).
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


def under(uri: str, name: str) -> str:
    """`name` as a folder under the storage `uri` (an object store's query options kept at the end)."""
    path, query = (uri.split("?", 1) + [""])[:2]
    return f"{path.rstrip('/')}/{name}" + (f"?{query}" if query else "")


def ensure_bucket(uri: str) -> None:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    if isinstance(fs, pyarrow.fs.S3FileSystem):
        path_uri, _, query = uri.partition("?")
        options = dict(item.split("=", 1) for item in query.split("&") if item)
        s3 = pyarrow.fs.S3FileSystem(endpoint_override=options.get("endpoint_override"), scheme=options.get("scheme", "https"),
                                     region=options.get("region", "us-east-1"), allow_bucket_creation=True)
        s3.create_dir(path.split("/")[0])


def train(scale: str, every: int, steps: int, work: str, uri: str, name: str, storage: str | None) -> float:
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "cdb.train", "--scale", scale, "--max-steps", str(steps), "--num-workers", "1",
           "--output-dir", os.path.join(work, name), "--tracking-uri", uri, "--run-name", name,
           "--set", "eval.suite=off", "--set", "train.log_every=1", "--set", f"train.eval_every={steps}",
           "--set", f"train.checkpoint_every={every}"]
    if storage:
        cmd += ["--storage-path", under(storage, name)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def step_seconds(uri: str, name: str) -> dict[int, float]:
    """step -> seconds since the previous step's metrics were logged (rank 0's timestamps)."""
    from cdb import tracking

    run = tracking.find_run(uri, "cdb", name)
    logged = tracking.metric_timestamps(uri, run.id, "train/tokens_per_s")
    return {step: (logged[step] - logged[step - 1]) / 1000 for step in logged if step - 1 in logged}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", default="tiny")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--every", type=int, default=10, help="steps between checkpoints in the measured run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--storage-path", help="object store for the checkpoints (default: each run's folder)")
    args = p.parse_args()
    periods = (args.steps - args.every - 2) // args.every
    if periods < 1:
        raise SystemExit(f"--steps {args.steps}: at least every + 2 + every steps, for one whole period after the warm-up")
    window = range(args.every + 2, args.every + 2 + periods * args.every)
    if args.storage_path:
        ensure_bucket(args.storage_path)
    where = args.storage_path.split("?")[0] if args.storage_path else "the run folder"
    means, ratios, within = {"none": [], "every": []}, [], []
    with tempfile.TemporaryDirectory(prefix="cdb-ckpt-bench-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        for round_ in range(args.rounds):
            measured = {}
            for kind in (("none", "every") if round_ % 2 == 0 else ("every", "none")):
                name = f"ckpt-{kind}-r{round_}"
                every = args.every if kind == "every" else args.steps + 1
                wall = train(args.scale, every, args.steps, work, uri, name, args.storage_path)
                measured[kind] = step_seconds(uri, name)
                values = [measured[kind][s] for s in window]
                means[kind] += values
                line = (f"[checkpoint_overlap] {args.scale} {kind} (checkpoints to {where}): mean step {statistics.mean(values):.3f} s "
                        f"over steps {window.start}-{window.stop - 1}, {wall:.0f} s wall")
                if kind == "every":  # the steps holding a checkpoint (written after the step before) against the rest
                    holding = [s for s in window if (s - 1) % args.every == 0]
                    rest = statistics.mean(measured[kind][s] for s in window if s not in holding)
                    within.append(statistics.mean(values) / rest)
                    line += (f"; steps after a checkpoint {statistics.mean(measured[kind][s] for s in holding):.3f} s, others "
                             f"{rest:.3f} s: {within[-1]:.3f} x within the run")
                print(line, flush=True)
            ratios += [measured["every"][s] / measured["none"][s] for s in window]
    print(f"[checkpoint_overlap] {args.scale}, a checkpoint every {args.every} steps to {where}: mean step time "
          f"{statistics.mean(means['every']) / statistics.mean(means['none']):.3f} x none "
          f"(median paired step ratio {statistics.median(ratios):.3f}, max {max(ratios):.3f}; {len(ratios)} steps, "
          f"{periods * args.rounds} checkpoints); within the runs with checkpoints "
          f"{', '.join(f'{w:.3f}' for w in within)} x their steps without one")


if __name__ == "__main__":
    main()
