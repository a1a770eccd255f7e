"""What every evaluation task shares: results, scorers, the Task interface, and data errors (the
options are cdb.eval.options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Protocol

from cdb.eval.options import EvalOptions

if TYPE_CHECKING:
    from cdb.eval.lm import EvalLM
    from cdb.scoring import FaithfulnessScorer, ToxicityScorer
    from cdb.scoring.entities import EntityConsistency


class EvalDataError(ValueError):
    """A given data file is malformed; the message names the file, line and field."""


def resolve_device(device: str) -> str:
    """`auto`: cuda where this process sees a GPU (a Ray task sees only the GPUs it was given), else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Unavailable(Exception):
    """A task's data cannot be had here and was not given. The preflight (cdb.eval.missing) finds it
    before anything is trained or loaded; raised while a suite runs, it fails the evaluation."""


KINDS = ("mean", "share", "icat")


@dataclass(frozen=True)
class Items:
    """One metric's value per item, keyed by a stable item id (a prompt, source, pair, question,
    text): what the metric's n and 95% interval are computed from (cdb.eval.estimates), and what a
    change against the base model pairs."""

    values: dict[str, Any]
    """Item id -> its value; NaN where the metric is undefined for the item (left out of n). For
    kind icat, a [lms, ss] pair per StereoSet target."""
    kind: Literal["mean", "share", "icat"] = "mean"
    """mean: the mean over items; share: a share of 0/1 items; icat: StereoSet's ICAT of the
    targets' mean lms and ss. Each kind has its own interval (cdb.eval.intervals)."""
    undefined: str = ""
    """Why the metric has no value when no item defines it (said beside the missing number)."""
    stderr: float | None = None
    """The metric's standard error as the harness that computed it states it (lm-eval's, for the
    harness task): where the normal approximation holds (cdb.eval.intervals.LARGE_N items, enough
    of them off the median) the 95% interval is value +- 1.96 stderr, else one over the values
    (which always give n and the paired change). None: the interval comes from the values."""
    bounds: tuple[float, float] | None = (0.0, 1.0)
    """The range every item's value lies in (kind icat: each column's), which the interval of a
    mean over a few items relies on (cdb.eval.intervals.mean_interval); None: unbounded (no interval
    below LARGE_N items). A value outside it is an error. Shares are 0/1 whatever this says."""


def per_item(task: str, ids: Iterable[str], values: Iterable[float | None], kind: str = "mean",
             undefined: str = "", stderr: float | None = None,
             bounds: tuple[float, float] | None = (0.0, 1.0)) -> Items:
    """Items from parallel ids and values (None: undefined for that item); an id may occur once."""
    table: dict[str, Any] = {}
    for item, value in zip(ids, values):
        if item in table:
            raise EvalDataError(f"{task}: item id {item!r} occurs twice; ids must be unique to pair items")
        table[item] = math.nan if value is None else value
    return Items(table, kind, undefined, stderr, bounds)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskResult:
    """A task's metrics (name -> value, without the task prefix), each metric's per-item values
    (`items`, the same names: every metric has them), one dict per scored item, and tags: what its
    numbers were measured on or with (name -> text; e.g. prompt_set, and labeller_metrics: the
    comma-separated metrics scored by the scorer the training data was labelled with)."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    items: dict[str, Items] = field(default_factory=dict)
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
    _profanity: "ToxicityScorer | None" = None
    _entities: "EntityConsistency | None" = None

    @property
    def device(self) -> str:
        """Where the scorers run: the evaluation's device, `auto` resolved."""
        return resolve_device(self.options.device)

    @property
    def toxicity(self) -> "ToxicityScorer":
        if self._toxicity is None:
            from cdb.scoring import toxicity_scorer

            self._toxicity = toxicity_scorer(self.options.toxicity_scorer, device=self.device)
        return self._toxicity

    @property
    def faithfulness(self) -> "FaithfulnessScorer":
        if self._faithfulness is None:
            from cdb.scoring import faithfulness_scorer

            self._faithfulness = faithfulness_scorer(self.options.faithfulness_scorer, device=self.device)
        return self._faithfulness

    @property
    def similarity(self) -> "FaithfulnessScorer":
        """all-MiniLM-L6-v2 cosine: the embedded dataset's labelling rule, reported beside faithfulness."""
        if self._similarity is None:
            from cdb.scoring import faithfulness_scorer

            self._similarity = faithfulness_scorer("embedding", device=self.device)
        return self._similarity

    @property
    def profanity(self) -> "ToxicityScorer":
        """profanity-check: the embedded dataset's toxicity labeller, reported beside toxicity as profanity."""
        if self._profanity is None:
            from cdb.scoring import toxicity_scorer

            self._profanity = toxicity_scorer("profanity-check", device=self.device)
        return self._profanity

    @property
    def entities(self) -> "EntityConsistency":
        """The entity-level instruments (cdb.scoring.entities), run on every summary whatever
        faithfulness_scorer adds beside them."""
        if self._entities is None:
            from cdb.scoring import faithfulness_scorer

            self._entities = faithfulness_scorer("entity", device=self.device)
        return self._entities

    def scorer_versions(self) -> dict[str, str]:
        built = {"toxicity": self._toxicity, "faithfulness": self._faithfulness, "similarity": self._similarity,
                 "profanity": self._profanity, "entities": self._entities}
        return {k: f"{s.name}@{s.version}" for k, s in built.items() if s is not None}


class Task(Protocol):
    """One evaluation task. `missing` says, before any model loads, what of its data and instruments
    cannot be had here (each with how to get it); `run` raises Unavailable when its data cannot be had."""

    name: str

    def missing(self, options: EvalOptions) -> list[str]: ...

    def run(self, lm: "EvalLM", options: EvalOptions, resources: Resources) -> TaskResult: ...


def scorers_missing(options: EvalOptions, *kinds: str) -> list[str]:
    """What of the scorers a task uses cannot be built here: "toxicity" (options.toxicity_scorer and
    profanity-check beside it), "faithfulness" (options.faithfulness_scorer, the entity instruments
    and MiniLM's similarity)."""
    from cdb.scoring import missing

    specs = []
    if "toxicity" in kinds:
        specs += [("toxicity", options.toxicity_scorer), ("toxicity", "profanity-check")]
    if "faithfulness" in kinds:
        specs += [("faithfulness", "entity"), ("faithfulness", options.faithfulness_scorer), ("faithfulness", "embedding")]
    problems = [missing(kind, spec) for kind, spec in dict.fromkeys(specs)]
    return [p for p in problems if p]


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
