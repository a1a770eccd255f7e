"""Step time (forward + backward + optimizer step) of `--method contrastive` over `--method sft` on
the very same micro-batches, through the real cdb.strategy.Strategy (ZeRO-3, world 1, gloo, CPU).

Both engines live in one process and run each micro-batch in turn, alternating which goes first;
the figure is the median over micro-batches of t_contrastive / t_sft, in process CPU time (one
thread: the work the step does) and in wall time (also printed; on a shared machine it mostly
measures the neighbours). A forward hook on the LM's
base model counts model forward calls per step (the method promises exactly one).

    python bench/objective_overhead.py [--scales tiny smol-135m] [--pairs 24 6] [--threads 1]
"""

import argparse
import time

import _common

_common.setup_env(cpu=True)


def measure(scale: str, pairs: int, warmup: int = 1) -> dict:
    from cdb.data.batch import collate, assign_micro_batches, special_ids
    from cdb.strategy import Strategy
    from cdb.loop import micro_step
    from cdb.methods import METHODS

    configs = {m: _common.scale_config(scale, 1, m) for m in ("contrastive", "sft")}
    source, tokenizer = _common.model_source_and_tokenizer(configs["sft"])
    sources = _common.load_sources(configs["sft"], tokenizer)
    scale_cfg = configs["sft"].scale
    plan = assign_micro_batches(sources, scale_cfg.micro_batch, 0, 0, 0, 1)[: pairs + warmup]
    _, _, pad = special_ids(tokenizer)
    batches = [collate(b, pad) for b in plan]
    strategies = {m: Strategy(c, source, tokenizer, 1, 0, 10_000, METHODS[m]) for m, c in configs.items()}

    calls = {m: 0 for m in strategies}

    def hook_for(method):
        def hook(_module, _inputs, _output):
            calls[method] += 1
        return hook

    for method, strategy in strategies.items():
        strategy.engine.module.lm.base_model.register_forward_hook(hook_for(method))

    times = {m: [] for m in strategies}
    cpu_times = {m: [] for m in strategies}
    forwards = {m: [] for m in strategies}
    for index, batch in enumerate(batches):
        order = ["contrastive", "sft"] if index % 2 == 0 else ["sft", "contrastive"]
        for method in order:
            before = calls[method]
            start, start_cpu = time.perf_counter(), time.process_time()
            micro_step(strategies[method], METHODS[method], configs[method].objective, batch)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            forwards[method].append(calls[method] - before)
            if index >= warmup:
                times[method].append(elapsed)
                cpu_times[method].append(elapsed_cpu)
        if index >= warmup:
            print(f"  {scale} batch {index - warmup + 1}/{pairs}: {tuple(batch['input_ids'].shape)} wall "
                  f"contrastive {times['contrastive'][-1]:.3f}s sft {times['sft'][-1]:.3f}s; cpu "
                  f"contrastive {cpu_times['contrastive'][-1]:.3f}s sft {cpu_times['sft'][-1]:.3f}s", flush=True)
    for strategy in strategies.values():
        strategy.close()
    ratios = [c / s for c, s in zip(times["contrastive"], times["sft"])]
    cpu_ratios = [c / s for c, s in zip(cpu_times["contrastive"], cpu_times["sft"])]
    return {"scale": scale, "pairs": len(ratios), "median_ratio": _common.median(ratios),
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "median_cpu_ratio": _common.median(cpu_ratios), "min_cpu_ratio": min(cpu_ratios),
            "max_cpu_ratio": max(cpu_ratios),
            "median_contrastive_s": _common.median(times["contrastive"]), "median_sft_s": _common.median(times["sft"]),
            "median_contrastive_cpu_s": _common.median(cpu_times["contrastive"]),
            "median_sft_cpu_s": _common.median(cpu_times["sft"]),
            "forwards_per_step": {m: sorted(set(v)) for m, v in forwards.items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scales", nargs="+", default=["tiny", "smol-135m"])
    p.add_argument("--pairs", nargs="+", type=int, default=[24, 6], help="measured micro-batches per scale")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    _common.init_single_process()
    results = []
    for scale, pairs in zip(args.scales, args.pairs + [args.pairs[-1]] * len(args.scales)):
        result = measure(scale, pairs)
        results.append(result)
        print(f"[objective_overhead] {scale}: over {result['pairs']} micro-batches, median contrastive/sft "
              f"CPU time {result['median_cpu_ratio']:.3f} (min {result['min_cpu_ratio']:.3f}, max {result['max_cpu_ratio']:.3f}), "
              f"wall time {result['median_ratio']:.3f} (min {result['min_ratio']:.3f}, max {result['max_ratio']:.3f}); "
              f"median step wall contrastive {result['median_contrastive_s']:.3f}s sft {result['median_sft_s']:.3f}s, "
              f"cpu {result['median_contrastive_cpu_s']:.3f}s / {result['median_sft_cpu_s']:.3f}s; "
              f"LM forwards per step {result['forwards_per_step']}", flush=True)
    # CPU time is the headline: on a shared 2-core machine wall time mostly measures the neighbours.
    worst = max(r["median_cpu_ratio"] for r in results)
    one_forward = all(v == [1] for r in results for v in r["forwards_per_step"].values())
    _common.summary("objective_overhead", f"{worst:.3f} (worst median contrastive/sft CPU-time ratio over "
                    f"{', '.join(r['scale'] for r in results)}; forwards per step: {'1' if one_forward else 'NOT 1'})",
                    "<= 1.05, 1 forward")


if __name__ == "__main__":
    main()
