"""cdb.memory's per-rank total against the peak RSS of a real 2-rank ZeRO-3 run on CPU
(bench/_zero3_worker.py under torchrun: the trainer's data path and Strategy, the rank's largest
micro-batches), for `tiny` and `smol-135m`.

The RSS includes the Python/torch/DeepSpeed runtime, so the worker also records its RSS after the
imports and the data, before the model (the baseline); model-related memory = peak - baseline,
compared with the plan's total without its runtime allowance. The plan is evaluated twice: as the
trainer would call it (the largest rows_per_source of the dataset, the longest possible row) and
with the measured batches' own shape.

    python bench/plan_vs_measured.py [--scales tiny smol-135m] [--steps 3]
"""

import argparse

import _common

_common.setup_env(cpu=True)

from zero3_memory import run_ranks  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", nargs="+", default=["tiny", "smol-135m"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--save", help="write the measured figures to this JSON file")
    p.add_argument("--load", help="reuse measured figures from a --save file instead of running")
    args = p.parse_args()
    import json

    measured = json.load(open(args.load)) if args.load else {}
    from cdb.memory import estimate_memory

    totals, related = {}, {}
    for scale in args.scales:
        ranks = measured[scale] if scale in measured else run_ranks(scale, 2, args.steps)
        measured[scale] = ranks
        if args.save:
            json.dump(measured, open(args.save, "w"), indent=1)
        config = _common.scale_config(scale, 2)
        r = max(ranks, key=lambda x: x["peak_rss"])
        model_related = r["peak_rss"] - r["rss_before_model"]
        default = estimate_memory(config, 2, None, suggest=False)
        rows = max(r["batch_rows"]) // config.scale.micro_batch
        shaped = estimate_memory(config, 2, None, seq_len=max(r["batch_width"]), rows_per_source=rows, suggest=False)
        for name, pl in (("default", default), ("measured shape", shaped)):
            planned = pl.total_bytes - pl.reserve_bytes
            error = planned / model_related - 1
            print(f"[plan_vs_measured] {scale} plan ({name}: rows {pl.rows_per_micro_batch}, seq {pl.seq_len}): "
                  f"model-related {planned / 2**20:.0f} MiB (states {pl.model_states_bytes / 2**20:.0f}, gathered "
                  f"{pl.gathered_bytes / 2**20:.0f}, activations {pl.activations_bytes / 2**20:.0f}, logits+head "
                  f"{pl.logits_bytes / 2**20:.0f}, step {pl.step_transient_bytes / 2**20:.0f}), total with runtime "
                  f"{pl.total_bytes / 2**20:.0f} MiB", flush=True)
            print(f"[plan_vs_measured] {scale} measured (rank {r['rank']}): peak RSS {r['peak_rss'] / 2**20:.0f} MiB, "
                  f"after imports {r['rss_after_imports'] / 2**20:.0f}, before model {r['rss_before_model'] / 2**20:.0f}, "
                  f"after engine build {r['rss_after_build'] / 2**20:.0f}; model-related {model_related / 2**20:.0f} MiB; "
                  f"plan/measured model-related {planned / model_related:.3f}, total {pl.total_bytes / r['peak_rss']:.3f}",
                  flush=True)
            if name == "measured shape":
                totals[scale] = pl.total_bytes / r["peak_rss"]
                related[scale] = planned / model_related
    worst = max(abs(v - 1) for v in totals.values())
    detail = ", ".join(f"{k} total {totals[k]:.3f} / model-related {related[k]:.3f}" for k in totals)
    _common.summary("plan_vs_measured", f"{worst:.3f} (largest |plan total / peak RSS - 1|, measured batch shape; "
                    f"plan/measured {detail})", "<= 0.20")


if __name__ == "__main__":
    main()
