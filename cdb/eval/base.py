"""What every evaluation task shares: results, scorers, the Task interface, and data errors (the
options are cdb.eval.options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cdb.eval.options import EvalOptions

if TYPE_CHECKING:
    from cdb.eval.lm import EvalLM
    from cdb.scoring import FaithfulnessScorer, ToxicityScorer


class EvalDataError(ValueError):
    """A given data file is malformed; the message names the file, line and field."""


class Unavailable(Exception):
    """A task's data cannot be had offline and was not given: the task is skipped with this note."""


@dataclass(frozen=True)
class TaskResult:
    """A task's metrics (name -> value, without the task prefix), one dict per scored item, and tags:
    what its numbers were measured on or with (name -> text; e.g. prompt_set, and labeller_metrics:
    the comma-separated metrics scored by the scorer the training data was labelled with)."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Resources:
    """Shared by the tasks of one suite run: scorers built once, on first use, and earlier results
    (intelligibility reads the generations of the tasks before it)."""

    options: EvalOptions
    results: dict[str, TaskResult] = field(default_factory=dict)
    _toxicity: "ToxicityScorer | None" = None
    _faithfulness: "FaithfulnessScorer | None" = None
    _similarity: "FaithfulnessScorer | None" = None

    @property
    def toxicity(self) -> "ToxicityScorer":
        if self._toxicity is None:
            from cdb.scoring import toxicity_scorer

            self._toxicity = toxicity_scorer(self.options.toxicity_scorer, device=self.options.device)
        return self._toxicity

    @property
    def faithfulness(self) -> "FaithfulnessScorer":
        if self._faithfulness is None:
            from cdb.scoring import faithfulness_scorer

            self._faithfulness = faithfulness_scorer(self.options.faithfulness_scorer, device=self.options.device)
        return self._faithfulness

    @property
    def similarity(self) -> "FaithfulnessScorer":
        """all-MiniLM-L6-v2 cosine: the embedded dataset's labelling rule, reported beside faithfulness."""
        if self._similarity is None:
            from cdb.scoring import faithfulness_scorer

            self._similarity = faithfulness_scorer("embedding", device=self.options.device)
        return self._similarity

    def scorer_versions(self) -> dict[str, str]:
        built = {"toxicity": self._toxicity, "faithfulness": self._faithfulness, "similarity": self._similarity}
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
