"""Per-rank model-state bytes (parameters + gradients + optimizer states) of `smol-135m` on 2 ranks
over 1 rank, read from the DeepSpeed engine after real steps (bench/_zero3_worker.py under torchrun:
the ds_tensor partitions and persistent parameters, the gradient partition buffer, the optimizer's
fp32 partitions and Adam's state tensors).

    python bench/zero3_memory.py [--scale smol-135m] [--steps 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import _common

_common.setup_env(cpu=True)


def run_ranks(scale: str, world: int, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="cdb-zero3-") as work:
        out = os.path.join(work, "result.json")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-addr", "127.0.0.1",
               "--master-port", str(_common.free_port()), str(_common.REPO / "bench" / "_zero3_worker.py"), scale,
               str(steps), out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun {world} ranks failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        with open(out) as handle:
            return json.load(handle)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", default="smol-135m")
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    per_rank = {}
    for world in (1, 2):
        ranks = run_ranks(args.scale, world, args.steps)
        per_rank[world] = max(r["states"]["total"] for r in ranks)
        for r in ranks:
            s = r["states"]
            print(f"[zero3_memory] {args.scale} world {world} rank {r['rank']}: params {s['params'] / 2**20:.1f} MiB "
                  f"(+ persistent {s['persistent'] / 2**20:.2f}), grads {s['grads'] / 2**20:.1f}, fp32 master "
                  f"{s['optimizer_master'] / 2**20:.1f}, Adam states {s['optimizer_states'] / 2**20:.1f} = "
                  f"{s['total'] / 2**20:.1f} MiB; {r['params_local']:,} of {r['params_total']:,} parameters local; "
                  f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB", flush=True)
    ratio = per_rank[2] / per_rank[1]
    _common.summary("zero3_memory", f"{ratio:.4f} (per-rank model states, 2 ranks / 1 rank, {args.scale}: "
                    f"{per_rank[2] / 2**20:.1f} / {per_rank[1] / 2**20:.1f} MiB)", "<= 0.55")


if __name__ == "__main__":
    main()
