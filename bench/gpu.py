"""tokens/s and MFU of the contrastive objective on one GPU: a ~1.1B Llama-shaped model (TinyLlama's
shape, random weights), bf16, ZeRO-3 at world 1, SDPA (flash-attention 2 when `flash_attn` is
installed), through the real cdb.strategy.Strategy (forward once, backward, optimizer step).

    python bench/gpu.py                 # one H200 (or any CUDA GPU); a few minutes, under 8
    python bench/gpu.py --dry-run       # CPU, tiny sizes, fp32: checks the script end to end

MFU = tokens/s x cdb.perf.flops_per_token(config, mean row length) / peak, against the measured
bf16 matmul peak of the device (cdb.perf.measure_matmul_peak, 8192^3) and against the data-sheet
peak (cdb.perf.PEAK_FLOPS); tokens are the non-pad tokens of the micro-batches. Also printed: the
same with only the scored share of the LM head counted (what cdb really computes), the peak GPU
memory, and cdb.memory's figure for the same configuration.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import _common

DRY = "--dry-run" in sys.argv
_common.setup_env(cpu=DRY)

# TinyLlama-1.1B's shape: 1,100,048,384 parameters.
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


def synthetic_sources(n: int, positives: int, negatives: int, source_len: int, target_len: int, vocab: int, seed: int):
    """Sources shaped like cdb's rows (BOS + source + candidate + EOS, labels on the candidate,
    ~5% entity tokens, a toxic negative in every other source), random token ids."""
    import torch

    from cdb.data.batch import IGNORE, TOXIC, Row, SourceRows

    g = torch.Generator().manual_seed(seed)
    sources = []
    for i in range(n):
        src = torch.randint(3, vocab, (source_len,), generator=g).tolist()
        rows = []
        for j in range(positives + negatives):
            length = int(target_len * (0.6 + 0.4 * torch.rand((), generator=g).item()))
            cand = torch.randint(3, vocab, (length - 1,), generator=g).tolist() + [2]
            prefix = 1 + len(src)
            entity = (torch.rand(length, generator=g) < 0.05).tolist()
            positive = j < positives
            neg_type = -1 if positive else (TOXIC if (i % 2 == 0 and j == positives) else 1)
            rows.append(Row(input_ids=tuple([1] + src + cand), labels=tuple([IGNORE] * prefix + cand),
                            entity=tuple([False] * prefix + entity), positive=positive, neg_type=neg_type))
        sources.append(SourceRows(f"syn-{i}", tuple(rows)))
    return sources


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model and batch, fp32 (a test runs this)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 10; dry run 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; dry run 1)")
    p.add_argument("--micro-batch", type=int, default=None, help="sources per micro-batch (default 8; dry run 2)")
    args = p.parse_args()
    dry = args.dry_run
    steps = args.steps or (2 if dry else 10)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    micro = args.micro_batch or (2 if dry else 8)
    positives, negatives = 3, 3
    source_len, target_len = (32, 16) if dry else (384, 128)

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import cdb.strategy
    from cdb.data.batch import collate
    from cdb.model import TINY as TINY_SOURCE
    from cdb.model import load_tokenizer
    from cdb.loop import micro_step
    from cdb.methods import METHODS
    from cdb.objective import score_positions
    from cdb.perf import PEAK_FLOPS, device_peak_flops, flops_per_token, measure_matmul_peak, mfu, peak_memory_bytes
    from cdb.memory import GiB, estimate_memory, shape_from_config

    if not dry and not torch.cuda.is_available():
        _common.summary("gpu", "not run: no CUDA device (use --dry-run on CPU)", "report tokens/s and MFU")
        return
    shape = TINY if dry else LLAMA_1B
    attn = "flash_attention_2" if (not dry and importlib.util.find_spec("flash_attn")) else "sdpa"
    precision = "fp32" if dry else "bf16"
    model_config = LlamaConfig(**shape)
    model_config._attn_implementation = attn

    # Strategy builds the LM with cdb.model.build_lm; here it is the random-weight 1B model, built
    # the same way (from_config, inside zero.Init while the HfDeepSpeedConfig is alive).
    def build_lm(source, dtype, attn_implementation, vocab_size, trust_remote_code=False):
        return AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype, attn_implementation=attn_implementation)

    cdb.strategy.build_lm = build_lm
    _common.init_single_process("gloo" if dry else "nccl")
    with tempfile.TemporaryDirectory(prefix="cdb-gpu-") as work:
        config = _common.scale_config(
            "tiny", 1, "contrastive", work, **{
                "scale.precision": precision, "scale.gpus_per_worker": 0 if dry else 1, "scale.micro_batch": micro,
                "scale.ds_config": "zero3_cpu_fp32.json" if dry else "zero3_bf16_small.json",
                "scale.attn_implementation": attn, "scale.max_source_tokens": source_len,
                "scale.max_target_tokens": target_len, "eval.suite": "off", "optim.lr": 1e-4})
        tokenizer = load_tokenizer(TINY_SOURCE)  # only its length and export use it; ids are synthetic
        spec = METHODS["contrastive"]
        strategy = cdb.strategy.Strategy(config, "synthetic-llama", tokenizer, 1, 0, 10_000, spec)
        local, total = strategy.param_counts()
        sources = synthetic_sources((steps + warmup) * micro, positives, negatives, source_len, target_len,
                                    shape["vocab_size"], seed=0)
        batches = [collate(sources[i * micro:(i + 1) * micro], 0) for i in range(steps + warmup)]
        device = strategy.device
        sync = torch.cuda.synchronize if not dry else (lambda: None)
        times, tokens, scored, rows_len = [], [], [], []
        for index, batch in enumerate(batches):
            sync()
            start = time.perf_counter()
            metrics, applied = micro_step(strategy, spec, config.objective, batch)
            sync()
            elapsed = time.perf_counter() - start
            if not applied:  # a skipped backward would flatter tokens/s
                raise RuntimeError(f"step {index + 1}: non-finite loss, backward skipped; the figures would be wrong")
            if index >= warmup:
                times.append(elapsed)
                tokens.append(int(batch["attention_mask"].sum()))
                mask, _ = score_positions(batch["labels"], spec.scored_rows(batch["positive"]))
                scored.append(int(mask.sum()))
                rows_len.append(float(batch["attention_mask"].sum(1).float().mean()))
            print(f"  step {index + 1}/{len(batches)}{' (warm-up)' if index < warmup else ''}: "
                  f"{tuple(batch['input_ids'].shape)} {elapsed:.3f}s loss {float(metrics['loss']):.4f}", flush=True)
        strategy.close()

    tokens_per_s = sum(tokens) / sum(times)
    seq = sum(rows_len) / len(rows_len)
    fpt = flops_per_token(model_config, round(seq))
    fpt_scored = flops_per_token(model_config, round(seq), lm_head_fraction=sum(scored) / sum(tokens))
    device_name = "cpu" if dry else torch.cuda.get_device_name(0)
    dtype = "fp32" if dry else "bf16"
    measured_peak = measure_matmul_peak(dtype, size=512 if dry else 8192, repeats=5 if dry else 20,
                                        device="cpu" if dry else "cuda")
    sheet_peak = device_peak_flops(device_name, dtype) if not dry else None
    mem = peak_memory_bytes(device)
    plan_config = config
    planned = estimate_memory(plan_config, 1, None if dry else int(torch.cuda.get_device_properties(0).total_memory),
                   micro_batch=micro, seq_len=1 + source_len + target_len, rows_per_source=positives + negatives,
                   suggest=False, shape=shape_from_config("llama-1b" if not dry else "tiny", LlamaConfig(**shape)))
    print(f"[gpu] {device_name}, {attn}, {precision}, ZeRO-3 world 1: {total:,} parameters ({local:,} local); "
          f"micro-batch {micro} sources x {positives + negatives} rows, mean row {seq:.0f} tokens", flush=True)
    print(f"[gpu] tokens/s {tokens_per_s:,.0f} (median step {_common.median(times):.3f}s over {len(times)} steps); "
          f"FLOPs/token {fpt:.3e} (scored-head {fpt_scored:.3e})", flush=True)
    value = mfu(tokens_per_s, fpt, measured_peak)
    print(f"[gpu] measured {dtype} matmul peak {measured_peak / 1e12:.3g} TFLOP/s -> MFU {value:.3f} "
          f"(scored-head {mfu(tokens_per_s, fpt_scored, measured_peak):.3f})", flush=True)
    if sheet_peak:
        print(f"[gpu] data-sheet peak {sheet_peak / 1e12:.0f} TFLOP/s (PEAK_FLOPS: {list(PEAK_FLOPS)}) -> MFU "
              f"{mfu(tokens_per_s, fpt, sheet_peak):.3f}", flush=True)
    print(f"[gpu] peak memory {mem / GiB:.2f} GiB ({'RSS' if dry else 'max_memory_allocated'}); cdb.memory: "
          f"{planned.total_bytes / GiB:.2f} GiB incl. {planned.reserve_bytes / GiB:.2f} reserve", flush=True)
    _common.summary("gpu" + (" (dry run, CPU)" if dry else ""),
                    f"{tokens_per_s:,.0f} tokens/s, MFU {value:.3f} vs measured {dtype} peak", "report; no fixed target")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
