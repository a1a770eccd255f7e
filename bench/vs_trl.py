"""cdb `--method dpo` against TRL's DPOTrainer on the same pairs, then cdb `contrastive` against the
same TRL runs: smol-135m, fp32, CPU, one process, one thread, no activation checkpointing.

Same pairs, same tokens, same batch: cdb's micro-batch is one source (smol-135m's micro_batch 1)
with all its rows, and its DPO loss is the mean over every (positive, negative) pair of the source.
TRL gets exactly those pairs, as token ids taken from cdb's rows (prompt = BOS + source,
chosen/rejected = the candidate's ids with EOS), one source's pairs per TRL step
(per_device_train_batch_size = pairs per source; only sources with 3 positives and 3 negatives, so
9 pairs), in order. Both use AdamW, lr 2e-5, beta 0.1, grad clip 1.0, a frozen reference copy.

Interleaved in one run: a TRL callback times each TRL step (on_step_begin -> on_step_end: forward,
backward, optimizer step) and, after it, runs cdb's dpo and contrastive micro-steps on the same
source. Throughput credits both sides with the same work, the pairs' tokens (TRL's input: prompt +
chosen and prompt + rejected for each pair), so the ratio is t_TRL / t_cdb per source; the median
over sources after one warm-up. CPU time (process_time) is the headline; wall time is printed too.
cdb does less work for the same pairs by design: each row is encoded once per step however many
pairs it is in, and logits are computed only at the scored positions.

    python bench/vs_trl.py [--sources 4]     # needs `pip install trl` (1.16.0 used)
"""

import argparse
import tempfile
import time

import _common

_common.setup_env(cpu=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sources", type=int, default=4, help="measured sources (steps) after one warm-up")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    try:
        import trl
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        _common.summary("vs_trl", "not run: trl is not installed (pip install trl)", ">= 1.0")
        return
    import transformers
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, TrainerCallback

    from cdb.data.batch import IGNORE, collate, special_ids
    from cdb.strategy import Strategy
    from cdb.loop import micro_step
    from cdb.methods import METHODS

    _common.init_single_process()
    configs = {m: _common.scale_config("smol-135m", 1, m) for m in ("dpo", "contrastive")}
    source, tokenizer = _common.model_source_and_tokenizer(configs["dpo"])
    sources = _common.load_sources(configs["dpo"], tokenizer)
    shape = lambda s: (sum(r.positive for r in s.rows), sum(not r.positive for r in s.rows))  # noqa: E731
    chosen_sources = [s for s in sources if shape(s) == (3, 3)][: args.sources + 1]
    _, _, pad = special_ids(tokenizer)
    batches = [collate([s], pad) for s in chosen_sources]

    examples, pair_tokens, row_tokens = [], [], []
    for s in chosen_sources:
        def split(row):
            prefix = next(i for i, label in enumerate(row.labels) if label != IGNORE)
            return list(row.input_ids[:prefix]), list(row.input_ids[prefix:])
        tokens = 0
        for pos in (r for r in s.rows if r.positive):
            for neg in (r for r in s.rows if not r.positive):
                prompt, chosen = split(pos)
                prompt_neg, rejected = split(neg)
                assert prompt == prompt_neg
                examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
                tokens += 2 * len(prompt) + len(chosen) + len(rejected)
        pair_tokens.append(tokens)
        row_tokens.append(sum(len(r.input_ids) for r in s.rows))
    pairs_per_source = len(examples) // len(chosen_sources)

    strategies = {m: Strategy(c, source, tokenizer, 1, 0, 10_000, METHODS[m]) for m, c in configs.items()}
    # The engines are built: let go of their HfDeepSpeedConfig, or transformers would build TRL's
    # models inside zero.Init too (partitioned, empty) and the Trainer would think ZeRO-3 is on.
    import gc

    from transformers.integrations import is_deepspeed_zero3_enabled

    for strategy in strategies.values():
        strategy._hf_ds_config = None
    gc.collect()
    assert not is_deepspeed_zero3_enabled()
    timings = {"trl": [], "dpo": [], "contrastive": []}

    class Interleave(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            torch.set_num_threads(args.threads)  # the same for TRL and cdb, whatever a library set
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args_, state, control, **kwargs):
            timings["trl"].append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))
            index = state.global_step - 1
            for method in ("dpo", "contrastive"):
                start = (time.perf_counter(), time.process_time())
                micro_step(strategies[method], METHODS[method], configs[method].objective, batches[index])
                timings[method].append((time.perf_counter() - start[0], time.process_time() - start[1]))
            print(f"  source {index}: wall/cpu s  TRL {timings['trl'][-1][0]:.2f}/{timings['trl'][-1][1]:.2f}  "
                  f"cdb dpo {timings['dpo'][-1][0]:.2f}/{timings['dpo'][-1][1]:.2f}  cdb contrastive "
                  f"{timings['contrastive'][-1][0]:.2f}/{timings['contrastive'][-1][1]:.2f}", flush=True)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory(prefix="cdb-trl-") as work:
        trl_args = DPOConfig(
            output_dir=work, per_device_train_batch_size=pairs_per_source, max_steps=len(batches),
            learning_rate=2e-5, beta=0.1, max_length=None, max_grad_norm=1.0, gradient_checkpointing=False,
            bf16=False, fp16=False, use_cpu=True, report_to="none", logging_steps=10 ** 6, save_strategy="no",
            dataloader_num_workers=0, seed=0, lr_scheduler_type="linear", warmup_steps=0,
        )
        placeholder = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}] * 2)
        trainer = DPOTrainer(model=model, ref_model=reference, args=trl_args, train_dataset=placeholder,
                             processing_class=tokenizer, callbacks=[Interleave()])
        # Exactly cdb's token ids, one source's pairs per step, in order.
        trainer.train_dataset = Dataset.from_list(examples)
        trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)
        trainer.train()
    for strategy in strategies.values():
        strategy.close()

    measured = range(1, len(batches))
    report = {}
    for method in ("dpo", "contrastive"):
        for kind, slot in (("cpu", 1), ("wall", 0)):
            ratios = [timings["trl"][i][slot] / timings[method][i][slot] for i in measured]
            report[(method, kind)] = _common.median(ratios)
    for name in ("trl", "dpo", "contrastive"):
        cpu_tps = _common.median([pair_tokens[i] / timings[name][i][1] for i in measured])
        wall_tps = _common.median([pair_tokens[i] / timings[name][i][0] for i in measured])
        print(f"[vs_trl] {name}: pair tokens/s median {cpu_tps:.1f} per CPU-second, {wall_tps:.1f} per wall-second",
              flush=True)
    print(f"[vs_trl] trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
          f"torch threads {torch.get_num_threads()}; {len(measured)} sources x {pairs_per_source} pairs; pair tokens per source "
          f"{[pair_tokens[i] for i in measured]}, cdb row tokens per source {[row_tokens[i] for i in measured]}", flush=True)
    print(f"[vs_trl] cdb dpo / TRL DPO tokens/s: CPU time {report[('dpo', 'cpu')]:.3f}, wall {report[('dpo', 'wall')]:.3f}; "
          f"cdb contrastive / TRL DPO: CPU time {report[('contrastive', 'cpu')]:.3f}, wall {report[('contrastive', 'wall')]:.3f}",
          flush=True)
    _common.summary("vs_trl", f"{report[('dpo', 'cpu')]:.3f} (cdb dpo / TRL {trl.__version__} DPOTrainer tokens/s, "
                    f"same pairs, CPU time; contrastive / TRL DPO {report[('contrastive', 'cpu')]:.3f})", ">= 1.0")


if __name__ == "__main__":
    main()
