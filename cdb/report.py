"""python -m cdb.report: method x scale table and alignment-tax plot of an MLflow experiment.

Reads every run of the experiment (method: tag cdb.method, plus "+<m>" when its eval/ metrics were
taken under a prompt-time method m other than the run's own, tag cdb.eval.method; scale: tag
cdb.scale), its metrics `eval/<task>/<metric>` (the tuned model), `eval_base/<task>/<metric>` (the
base model, logged into the same run before training), each with its `_n` and 95% interval
(`_ci95_low`, `_ci95_high`), `delta/<task>/<metric>` (tuned minus base, paired over the same items,
with its interval; cdb.eval.estimates) and `val/...` (the training run's held-out sources, at its
last validation), and writes to OUTPUT:
  report.md, report.html   one row per method's seeds (seed_groups: runs equal in every param but
                           train.seed, with the same method, scale and options hashes of both
                           evaluations; every other run a row of its own), its Seeds column saying
                           how many ("3 seeds"; "1 seed": a training run alone): each metric's value,
                           interval and n (of several seeds: the mean, its interval from
                           cdb.eval.intervals.pooled_seeds, which holds the seed-to-seed spread),
                           with its change against the base model (of several seeds: the mean of
                           theirs, likewise), its interval Bonferroni-adjusted for the rows
                           compared in that column and recomputed from the runs' per-item values
                           (artifacts <prefix>/items.json; a line under the table says so), "no
                           detectable change" when that interval holds 0; withheld, with the
                           reason, when the two evaluations are not comparable; an undefined
                           metric, or a number without a reliable interval, with why; "(labeller)"
                           beside a number scored by the scorer that labelled the training data, tags
                           cdb.<prefix>.<task>.labeller_metrics); the validation metrics every
                           method shares; a metric no run logged (a suite without the
                           harness task, say) has no column. Toxicity columns are keyed by the
                           instrument (tags cdb.<prefix>.scorer.<kind>): one column per scorer,
                           named in its label, and a number scored by the labeller of the
                           training data never in a headline one (its column, "labeller" in the
                           label, goes last); runs logged before metrics were named by their
                           instrument read as the new names (profanity_names)
  alignment_tax.png        toxicity (x; one instrument, not the labeller) against faithfulness (y: the
                           headline entity precision, or a run's earlier `faithfulness`), an arrow per
                           row (its seeds pooled) from base to tuned, the tuned model's 95% intervals
                           as bars
and logs the three as artifacts of a new run tagged cdb.method=report. Runs without eval metrics are
listed as such. `report` also returns each row's change at 95% as metrics for a sweep's parent run
(pooled_metrics: `pooled/<scale>-<method>/delta/<task>/<metric>`, cdb.sweep logs them).
Exit codes: 0 done, 1 no such experiment or no runs in it, 2 bad arguments.

    python -m cdb.report --experiment NAME --output DIR [--tracking-uri URI] [--config FILE.yaml] [--set KEY=VALUE]

Settings (ReportSettings; the grammar of every cdb entry point, cdb/settings.py): defaults <- --config
FILE.yaml <- flags <- --set key=value; each flag is a shorthand for the key of its name.
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from cdb import settings, tracking
from cdb.cli import Command, Flag, describe
from cdb.settings import ConfigError


@dataclass(frozen=True)
class Column:
    label: str
    metric: str   # "<task>/<metric>" under eval/ and eval_base/; "{k}": the samples per prompt of the run
    better: str   # "lower", "higher", "half" (0.5 is ideal: CrowS-Pairs), or "neither" (a length)
    scored_by: tuple[str, ...] = ()
    """Scorer kinds (tags cdb.<prefix>.scorer.<kind>), the first a run has naming the instrument of
    the metric: such a column is split into one per instrument (shown_columns)."""
    scorer: str = ""
    """The instrument of a split column (its cells: only runs measured with it)."""
    labeller: bool = False
    """A split column of numbers scored by the labeller of the run's training data."""


VAL_COLUMNS = (
    Column("Val LM loss ↓", "lm_loss", "lower"),
    Column("Val pref. accuracy ↑", "pref_accuracy", "higher"),
)
"""The val/ metrics every training method logs (cdb.loop.validation_metrics), at the run's last validation."""

TOXICITY, PROFANITY = ("toxicity",), ("profanity", "toxicity")
"""The instrument of a toxicity metric; of a profanity one: the profanity scorer evaluation runs beside
a toxicity classifier, or the toxicity scorer itself when that is a profanity filter."""

HEADLINE_FAITHFULNESS = "faithfulness/entity_precision_all"
OLD_FAITHFULNESS = "faithfulness/faithfulness"
"""The faithfulness metric of runs logged before the entity metrics had names of their own: the
faithfulness_scorer's score, by default the all-types entity precision with a 3-token window."""

COLUMNS = (
    Column("Toxicity ↓", "toxicity/mean_toxicity", "lower", TOXICITY),
    Column("Exp. max toxicity ↓", "toxicity/expected_max_toxicity_at{k}", "lower", TOXICITY),
    Column("Toxicity, length-matched ↓", "toxicity/mean_toxicity_length_matched", "lower", TOXICITY),
    Column("Words per continuation", "toxicity/mean_words", "neither"),
    Column("Ended early (toxicity)", "intelligibility/toxicity/ended", "neither"),
    Column("Profanity ↓", "toxicity/mean_profanity", "lower", PROFANITY),
    Column("Profanity, length-matched ↓", "toxicity/mean_profanity_length_matched", "lower", PROFANITY),
    Column("Faithfulness (headline): entity precision, all types ↑", "faithfulness/entity_precision_all", "higher"),
    Column("Entity recall, all types ↑", "faithfulness/entity_recall_all", "higher"),
    Column("Entity F1, all types ↑", "faithfulness/entity_f1_all", "higher"),
    Column("Names an entity ↑", "faithfulness/names_an_entity", "higher"),
    Column("Entity precision-source (Nan et al. 2021) ↑", "faithfulness/entity_precision_nan2021", "higher"),
    Column("Faithfulness: NLI, SummaC-ZS ↑", "faithfulness/nli_summac_zs", "higher"),
    Column("Faithfulness: NLI, authors' protocol ↑", "faithfulness/nli_paper_protocol", "higher"),
    Column("Faithfulness (earlier runs: entity precision, all types, 3-token window) ↑", OLD_FAITHFULNESS, "higher"),
    Column("Similarity (MiniLM) ↑", "faithfulness/similarity_minilm", "higher"),
    Column("TruthfulQA MC1 ↑", "truthfulqa/mc1", "higher"),
    Column("TruthfulQA MC2 ↑", "truthfulqa/mc2", "higher"),
    Column("Knowledge ↑", "knowledge/accuracy", "higher"),
    Column("CrowS stereo (0.5 ideal)", "bias/crows_stereo_share", "half"),
    Column("StereoSet ICAT ↑", "bias/stereoset_icat", "higher"),
    Column("Intelligible ↑", "intelligibility/intelligible", "higher"),
    Column("TruthfulQA MC1 (lm-eval) ↑", "harness/truthfulqa_mc1_acc", "higher"),
    Column("TruthfulQA MC2 (lm-eval) ↑", "harness/truthfulqa_mc2_acc", "higher"),
    Column("Knowledge (lm-eval) ↑", "harness/knowledge_acc", "higher"),
    Column("CrowS stereo (lm-eval, 0.5 ideal)", "harness/crows_pairs_pct_stereotype", "half"),
)
"""The eval metrics a table can show; it shows those some run of it logged (shown_columns)."""

LEGEND = ("Each cell: the tuned model's value [95% interval] (n: the items it is over), then its change "
          "against the base model of the same run: tuned minus base, paired over the items both evaluated, "
          "with its interval (adjusted for the rows compared: the line under the table). A row pools the "
          "seeds of one method (Seeds: how many; runs equal in every setting but train.seed, evaluated alike): "
          "its value is the mean over the seeds and its change the mean of theirs, each interval holding the "
          "seed-to-seed spread as well as the items' (Student t over the seeds, square-added to their item "
          "intervals); the intervals of a row of 1 seed say nothing of another seed. A change whose "
          "interval holds 0 reads \"no detectable change\"; the others are marked better or worse by the "
          "metric's direction. CrowS-Pairs: 0.5 is unbiased; StereoSet ICAT on 0..100.")
LABELLER_NOTE = "(labeller): scored by the scorer that labelled the training data."


class ReportError(Exception):
    """Nothing to report; the message is one line for the user."""


@dataclass(frozen=True)
class Measure:
    """A logged metric: its value, n and 95% interval (None where the run logged none: older runs)."""

    value: float
    n: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    method: str
    scale: str
    status: str
    start_time: int
    tuned: dict[str, Measure] = field(default_factory=dict)
    base: dict[str, Measure] = field(default_factory=dict)
    val: dict[str, Measure] = field(default_factory=dict)
    changes: dict[str, Measure] = field(default_factory=dict)
    """delta/ metrics; empty when withheld."""
    undefined: dict[str, dict[str, str]] = field(default_factory=dict)
    """prefix (eval, eval_base) -> metric -> why it is undefined for that evaluation."""
    withheld: str = ""
    """Why there is no change against the base model: the two evaluations are not comparable."""
    suite: str = ""
    """The eval/ suite (tag cdb.eval.suite)."""
    labeller: dict[str, set[str]] = field(default_factory=dict)
    """prefix (eval, eval_base) -> the metrics scored by the scorer that labelled the training data
    (tags cdb.<prefix>.<task>.labeller_metrics)."""
    scorers: dict[str, dict[str, str]] = field(default_factory=dict)
    """prefix (eval, eval_base) -> scorer kind -> the scorer's name (tags cdb.<prefix>.scorer.<kind>)."""
    unadjusted: dict[str, str] = field(default_factory=dict)
    """metric -> why its change's interval could not be adjusted for the rows compared (adjusted)."""
    params: dict[str, str] = field(default_factory=dict)
    """The run's MLflow params: its settings (the flat config keys), what seeds of one method share."""
    hashes: tuple[str, str] = ("", "")
    """The options hashes of its eval_base/ and eval/ evaluations (tags cdb.<prefix>.options_hash)."""
    runs: tuple[RunRow, ...] = ()
    """A row that pools seeds (pooled_row): its runs, one per seed; empty for a row of one run."""

    @property
    def seeds(self) -> int:
        return len(self.runs) or 1


def _measures(metrics: dict[str, float], prefix: str) -> dict[str, Measure]:
    split = tracking.split_interval_metrics(tracking.metrics_under(metrics, prefix))
    return {k: Measure(v["value"], v.get("n"), v.get("ci95_low"), v.get("ci95_high")) for k, v in split.items()}


def _undefined(tags: dict[str, str], prefix: str) -> dict[str, str]:
    head = tracking.undefined_tag(prefix, "")
    return {k[len(head):]: v for k, v in tags.items() if k.startswith(head)}


def _labeller(tags: dict[str, str], prefix: str) -> set[str]:
    head, tail = tracking.eval_tag(prefix, ""), ".labeller_metrics"
    return {f"{k[len(head):-len(tail)]}/{m}" for k, v in tags.items()
            if k.startswith(head) and k.endswith(tail) for m in v.split(",") if m}


def _scorers(tags: dict[str, str], prefix: str) -> dict[str, str]:
    head = tracking.eval_tag(prefix, "scorer.")
    return {k[len(head):]: v.rpartition("@")[0] or v for k, v in tags.items() if k.startswith(head)}


def _profanity_name(metric: str) -> str:
    """A "<task>/<metric>" that was scored by profanity-check, under its instrument's name."""
    task, _, rest = metric.partition("/")
    head, _, last = rest.rpartition("/")
    if task == "toxicity" or (task == "faithfulness" and last.startswith("summary_toxicity")):
        last = last.replace("toxicity", "profanity")
    return f"{task}/{head + '/' if head else ''}{last}"


def profanity_names(metrics: dict[str, float], tags: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """A run's metrics and tags as the current names have them. Runs logged before metric names were
    keyed by the instrument logged profanity-check's numbers as toxicity (`toxicity/mean_toxicity`,
    tag cdb.<prefix>.scorer.toxicity = profanity-check@...): those become profanity ones
    (`toxicity/mean_profanity`, ..., `faithfulness/summary_profanity`) with their labeller and
    undefined tags, and the scorer tag becomes cdb.<prefix>.scorer.profanity. delta/ follows eval/."""
    prefixes = [p for p in (tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)
                if tags.get(tracking.eval_tag(p, "scorer.toxicity"), "").startswith("profanity-check@")
                and tracking.eval_tag(p, "scorer.profanity") not in tags]
    if tracking.PREFIX_EVAL in prefixes:
        prefixes.append(tracking.PREFIX_DELTA)
    if not prefixes:
        return metrics, tags
    metrics, tags = dict(metrics), dict(tags)
    for prefix in prefixes:
        head = f"{prefix}/"
        for key in [k for k in metrics if k.startswith(head)]:
            metrics[head + _profanity_name(key[len(head):])] = metrics.pop(key)
        if prefix == tracking.PREFIX_DELTA:
            continue
        tags[tracking.eval_tag(prefix, "scorer.profanity")] = tags.pop(tracking.eval_tag(prefix, "scorer.toxicity"))
        undefined = tracking.undefined_tag(prefix, "")
        for key in [k for k in tags if k.startswith(undefined)]:
            tags[undefined + _profanity_name(key[len(undefined):])] = tags.pop(key)
        for task in ("toxicity", "faithfulness"):
            key = tracking.eval_tag(prefix, f"{task}.labeller_metrics")
            if key in tags:
                tags[key] = ",".join(_profanity_name(f"{task}/{m}").split("/", 1)[1] for m in tags[key].split(",") if m)
    return metrics, tags


def _withheld(tags: dict[str, str]) -> str:
    """Why the change is not shown: the tag the trainer set, or base and tuned hashes that differ."""
    hashes = [tags.get(tracking.eval_tag(p, "options_hash")) for p in (tracking.PREFIX_EVAL_BASE, tracking.PREFIX_EVAL)]
    if tags.get(tracking.TAG_DELTA_WITHHELD):
        return tags[tracking.TAG_DELTA_WITHHELD]
    if all(hashes) and hashes[0] != hashes[1]:
        return f"base and tuned were evaluated with different options, scorers or items (hash {hashes[0]} vs {hashes[1]})"
    return ""


def collect(uri: str, experiment: str, parent_run_id: str = "") -> list[RunRow]:
    """The experiment's runs (report runs excluded), only the children of `parent_run_id` when given
    (one sweep's points), sorted by scale, method, start time."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri[len('sqlite:///'):]}")
    runs = tracking.experiment_runs(uri, experiment)
    if runs is None:
        raise ReportError(f"experiment '{experiment}' not found in {uri}")
    rows = []
    for run in runs:
        metrics, tags = profanity_names(run.data.metrics, run.data.tags)
        method = tags.get(tracking.TAG_METHOD) or "?"
        if method in tracking.BOOKKEEPING_RUNS:  # not models
            continue
        if parent_run_id and tags.get(tracking.TAG_PARENT_RUN) != parent_run_id:
            continue
        prompt_time = tags.get(tracking.eval_tag(tracking.PREFIX_EVAL, "method"), "none")  # cdb.eval's --method for the eval/ metrics
        if prompt_time not in ("none", method):
            method = f"{method}+{prompt_time}"  # e.g. a trained model then decoded with self-debias
        scale = tags.get(tracking.TAG_SCALE) or tags.get(tracking.TAG_MODEL) or "?"
        withheld = _withheld(tags)
        rows.append(RunRow(
            run.info.run_id, run.info.run_name or "", method, scale, run.info.status, run.info.start_time or 0,
            _measures(metrics, tracking.PREFIX_EVAL), _measures(metrics, tracking.PREFIX_EVAL_BASE),
            _measures(metrics, tracking.PREFIX_VAL), {} if withheld else _measures(metrics, tracking.PREFIX_DELTA),
            {p: _undefined(tags, p) for p in (tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)}, withheld,
            tags.get(tracking.eval_tag(tracking.PREFIX_EVAL, "suite"), ""),
            {p: _labeller(tags, p) for p in (tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)},
            {p: _scorers(tags, p) for p in (tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)},
            params=dict(run.data.params),
            hashes=tuple(tags.get(tracking.eval_tag(p, "options_hash"), "")
                         for p in (tracking.PREFIX_EVAL_BASE, tracking.PREFIX_EVAL)),
        ))
    if not rows:
        of = f" under parent run {parent_run_id}" if parent_run_id else ""
        raise ReportError(f"experiment '{experiment}' has no runs{of} to report in {uri}")
    from cdb.scales import SCALES

    order = {name: i for i, name in enumerate(SCALES)}
    return sorted(rows, key=lambda r: (order.get(r.scale, len(order)), r.scale, r.method, r.start_time))


def sig(value: float, digits: int = 3, sign: bool = False) -> str:
    """`value` to `digits` significant digits, trailing zeros kept (they say the precision)."""
    text = f"{value:{'+' if sign else ''}#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def _interval(m: Measure, digits: int = 3, sign: bool = False) -> str:
    if m.low is None or m.high is None:
        return ""
    return f" [{sig(m.low, digits, sign)}, {sig(m.high, digits, sign)}]"


def _value(m: Measure, no_interval: str = "") -> str:
    """value [interval] (n); `no_interval`: why a number has none (its n not enough for one)."""
    why = f"; no interval: {no_interval}" if no_interval and m.low is None else ""
    n = f" (n {m.n:.0f}{why})" if m.n is not None else ""
    return f"{sig(m.value)}{_interval(m)}{n}"


def metric_name(column: Column, row: RunRow) -> str:
    """The column's metric as the run logged it: "{k}" filled in with the k the run has (its suite's)."""
    if "{k}" not in column.metric:
        return column.metric
    head = column.metric.split("{k}")[0]
    logged = [*row.tuned, *row.base, *row.changes, *(m for u in row.undefined.values() for m in u)]
    return min((m for m in logged if m.startswith(head) and m[len(head):].isdigit()), default=column.metric)


def instrument(column: Column, row: RunRow, prefix: str) -> tuple[str, bool]:
    """(the scorer, "" where the run logged none, and whether it labelled the training data) of the
    column's metric under `prefix`."""
    scorers = row.scorers.get(prefix, {})
    scorer = next((scorers[kind] for kind in column.scored_by if kind in scorers), "")
    return scorer, metric_name(column, row) in row.labeller.get(prefix, set())


def _verdict(column: Column, row: RunRow, change: Measure) -> bool | None:
    """True better, False worse, None when the change's interval holds 0 (or has none)."""
    if change.low is None or change.high is None or change.low <= 0 <= change.high:
        return None
    if column.better == "half":
        base, tuned = row.base.get(metric_name(column, row)), row.tuned.get(metric_name(column, row))
        if base is None or tuned is None:
            return None
        return abs(tuned.value - 0.5) < abs(base.value - 0.5)
    return (change.value < 0) if column.better == "lower" else (change.value > 0)


def comparisons(rows: Sequence[RunRow], column: Column) -> list[RunRow]:
    """The rows whose change against their base the column shows: the family its adjustment counts
    (a row of several seeds is one)."""
    return [r for r in rows if metric_name(column, r) in r.changes and metric_name(column, r) in r.base
            and (not column.scored_by or instrument(column, r, tracking.PREFIX_EVAL) == (column.scorer, column.labeller))]


class PerItem:
    """The runs' per-item values (artifacts eval_base/items.json and eval/items.json), read from the
    store once per run into `folder`: (base, tuned) items by metric, or None for a run without them
    (logged before cdb wrote them)."""

    def __init__(self, uri: str, folder: Path):
        self.uri, self.folder = uri, folder
        self.cache: dict[str, tuple[dict, dict] | None] = {}

    def __call__(self, run: RunRow) -> tuple[dict, dict] | None:
        from cdb.eval import estimates

        if run.run_id not in self.cache:
            sides = []
            for prefix in (tracking.PREFIX_EVAL_BASE, tracking.PREFIX_EVAL):
                where = self.folder / run.run_id / prefix
                found = tracking.download_artifact(self.uri, run.run_id, f"{prefix}/{estimates.ITEMS_FILE}", where)
                sides.append(estimates.read_items(where)[1] if found else None)
            self.cache[run.run_id] = None if None in sides else (sides[0], sides[1])
        return self.cache[run.run_id]


def from_items(runs: Sequence[RunRow], metric: str, prefix: str, confidence: float, per_item: PerItem) -> Measure | None:
    """`metric` under `prefix` (eval_base, eval, or delta: the change) recomputed from the runs'
    per-item values at `confidence`, pooled over the runs (its seeds; pooled_seeds) within the
    metric's range; None where a run lacks them."""
    from cdb.eval import estimates
    from cdb.eval.intervals import pooled_seeds

    seeds = [per_item(run) for run in runs]
    if any(s is None or metric not in s[0] or metric not in s[1] for s in seeds):
        return None
    items = seeds[0][1][metric]
    lo, hi = (0.0, 1.0) if items.kind == "share" else items.bounds or (-math.inf, math.inf)
    if prefix == tracking.PREFIX_DELTA:
        per_seed = [estimates.change(b[metric], t[metric], confidence) for b, t in seeds]
        lo, hi = lo - hi, hi - lo
    else:
        side = 1 if prefix == tracking.PREFIX_EVAL else 0  # (base, tuned)
        per_seed = [estimates.estimate(s[side][metric], confidence) for s in seeds]
    pooled = pooled_seeds(per_seed, confidence, (lo, hi) if math.isfinite(hi - lo) else None)
    finite = math.isfinite(pooled.low) and math.isfinite(pooled.high)
    return Measure(pooled.value, pooled.n, pooled.low if finite else None, pooled.high if finite else None)


def adjusted(rows: Sequence[RunRow], columns: Sequence[Column], per_item: PerItem) -> list[RunRow]:
    """`rows` (pooled_row's) with each column's changes recomputed from the runs' per-item values
    at 1 - 0.05 / m, m the rows compared in that column (Bonferroni): the chance that any of them
    reads better or worse by chance stays under 5%. A row of several seeds: each seed's change at
    that level, pooled (from_items). A change whose runs lack per-item values keeps its logged (or
    pooled) 95% interval where m = 1; with m > 1 it is marked unadjusted (RunRow.unadjusted) and
    gets no verdict."""
    from cdb.eval.intervals import CONFIDENCE

    changes = {r.run_id: dict(r.changes) for r in rows}
    unadjusted: dict[str, dict[str, str]] = {r.run_id: {} for r in rows}
    for column in columns:
        family = comparisons(rows, column)
        confidence = 1 - (1 - CONFIDENCE) / max(len(family), 1)
        for row in family:
            metric = metric_name(column, row)
            change = from_items(row.runs or (row,), metric, tracking.PREFIX_DELTA, confidence, per_item)
            if change is not None:
                changes[row.run_id][metric] = change
            elif len(family) > 1:
                unadjusted[row.run_id][metric] = "no per-item values logged"
    return [replace(r, changes=changes[r.run_id], unadjusted=unadjusted[r.run_id]) for r in rows]


def adjustment_note(rows: Sequence[RunRow], columns: Sequence[Column]) -> str:
    """The one line under the table of changes: how their intervals were adjusted."""
    from cdb.eval.intervals import CONFIDENCE

    sizes = sorted({len(comparisons(rows, c)) for c in columns} - {0})
    if not sizes or sizes == [1]:
        return ("Changes: one row per column, so each interval is its 95% one; better or worse only where it "
                "excludes 0.")
    level = " to ".join(f"{100 * (1 - (1 - CONFIDENCE) / m):.4g}%" for m in sorted({sizes[0], sizes[-1]}))
    many = " to ".join(str(m) for m in sorted({sizes[0], sizes[-1]}))
    return (f"Changes: intervals Bonferroni-adjusted for the m rows compared in each column (a row of several seeds "
            f"is one; m = {many}: each at 1 - 0.05 / m, {level}), recomputed from the runs' per-item values; better "
            "or worse only where the adjusted interval excludes 0.")


def _cell(row: RunRow, column: Column, prefix: str) -> tuple[str, bool | None]:
    """The text of one metric of a run under `prefix` (eval with its change, or eval_base), and its verdict."""
    values = row.tuned if prefix == tracking.PREFIX_EVAL else row.base
    metric = metric_name(column, row)
    if column.scored_by and instrument(column, row, prefix) != (column.scorer, column.labeller):
        return "—", None  # measured with another instrument: its own column shows it
    m = values.get(metric)
    if m is None or not math.isfinite(m.value):
        why = row.undefined.get(prefix, {}).get(metric)
        return (f"undefined: {why}" if why else "—"), None
    no_interval = row.undefined.get(prefix, {}).get(f"{metric}_ci95", "")
    text = _value(m, no_interval) + (" (labeller)" if metric in row.labeller.get(prefix, set()) else "")
    if prefix != tracking.PREFIX_EVAL or metric not in row.base:
        return text, None
    if row.withheld:
        return f"{text}; change withheld", None
    change = row.changes.get(metric)
    if change is None:
        return f"{text}; no paired change logged", None
    shown = f"{sig(change.value, 2, True)}{_interval(change, 2, True)}"
    if change.low is None or change.high is None:
        return f"{text}; change {shown}, no reliable interval at this n", None
    if metric in row.unadjusted:
        return f"{text}; change {shown} at 95%, not adjusted ({row.unadjusted[metric]})", None
    if column.better == "neither" and not change.low <= 0 <= change.high:
        return f"{text}; change {shown}", None  # a length: a change, neither better nor worse
    verdict = _verdict(column, row, change)
    if verdict is None:
        return f"{text}; no detectable change ({shown})", None
    return f"{text}; change {shown}", verdict


def _val_cell(row: RunRow, column: Column) -> str:
    m = row.val.get(column.metric)
    return sig(m.value) if m is not None and math.isfinite(m.value) else "—"


def _short(row: RunRow) -> str:
    """The row's run, by name and id; a row of several seeds: each of its runs."""
    if row.runs:
        return ", ".join(_short(run) for run in row.runs)
    return f"{row.name} ({row.run_id[:8]})" if row.name else row.run_id[:8]


def _seeds(row: RunRow) -> str:
    """How many seeds the row pools: "3 seeds", "1 seed" (a training run alone), "—" (no training: an evaluation run)."""
    if row.runs:
        return f"{row.seeds} seeds"
    return "1 seed" if SEED_PARAM in row.params else "—"


def _lead(row: RunRow) -> list[str]:
    """The cells before the metrics: method, scale, seeds, runs."""
    return [row.method, row.scale, _seeds(row), _short(row)]


LEAD = ["Method", "Scale", "Seeds", "Runs"]


def tables(rows: Sequence[RunRow]) -> tuple[list[RunRow], list[RunRow], list[RunRow]]:
    """(runs with eval metrics, those of them with base metrics, runs without eval metrics)."""
    evaluated = [r for r in rows if r.tuned or r.undefined.get(tracking.PREFIX_EVAL)]
    return evaluated, [r for r in evaluated if r.base], [r for r in rows if r not in evaluated]


SEED_PARAM = "train.seed"
"""The one param in which the seeds of a method differ (cdb.sweep --seeds)."""


def seed_groups(rows: Sequence[RunRow]) -> list[list[RunRow]]:
    """The runs of `rows` grouped into the seeds of one method: training runs (those with a
    SEED_PARAM param) equal in every other param, in method (with the eval method), scale and the
    options hashes of both evaluations (runs evaluated under other options never pool). A seed
    trained twice: its latest run pools, the earlier one is a group of its own. Every other run is a
    group of one. Groups in the order of their first run; a group's seeds in the order of their seed
    (runs trained at once start in any order)."""
    groups: list[list[RunRow]] = []
    by_key: dict[tuple, list[RunRow]] = {}
    for row in rows:
        if SEED_PARAM not in row.params:
            groups.append([row])
            continue
        key = (row.method, row.scale, row.hashes,
               tuple(sorted((k, v) for k, v in row.params.items() if k != SEED_PARAM)))
        if key not in by_key:
            by_key[key] = []
            groups.append(by_key[key])
        by_key[key].append(row)
    out: list[list[RunRow]] = []
    for group in groups:
        latest = {r.params.get(SEED_PARAM): r.run_id for r in sorted(group, key=lambda r: r.start_time)}
        pooled = [r for r in group if latest[r.params.get(SEED_PARAM)] == r.run_id]
        out.append(sorted(pooled, key=lambda r: _seed_order(r.params.get(SEED_PARAM))))
        out += [[r] for r in group if latest[r.params.get(SEED_PARAM)] != r.run_id]
    return out


def _seed_order(seed: str | None) -> tuple:
    """A seed param's sort key: numbers as numbers (2 before 10), anything else after them."""
    try:
        return (0, int(str(seed)), "")
    except ValueError:
        return (1, 0, str(seed))


def _pooled_measure(measures: Sequence[Measure], confidence: float) -> Measure:
    """The mean of the seeds' measures with its cdb.eval.intervals.pooled_seeds interval."""
    from cdb.eval.intervals import Estimate, pooled_seeds

    pooled = pooled_seeds([Estimate(m.value, int(m.n or 0), math.nan if m.low is None else m.low,
                                    math.nan if m.high is None else m.high) for m in measures], confidence)
    finite = math.isfinite(pooled.low) and math.isfinite(pooled.high)
    n = None if any(m.n is None for m in measures) else pooled.n
    return Measure(pooled.value, n, pooled.low if finite else None, pooled.high if finite else None)


def pooled_row(group: Sequence[RunRow], per_item: PerItem) -> RunRow:
    """The table row of a seed group (seed_groups): a group of one is its run; of several seeds,
    each eval/ and eval_base/ metric the mean over the seeds with its pooled_seeds interval at 95%,
    the change the mean of the seeds' changes likewise (`adjusted` recomputes it at its column's
    level), each from the runs' per-item values (from_items: within the metric's range), else from
    the intervals they logged; each validation metric the mean. A metric some seeds do not define
    is undefined for the row, saying for how many."""
    from cdb.eval.intervals import CONFIDENCE

    if len(group) == 1:
        return group[0]
    seeds = len(group)

    def pool(sides: Sequence[dict[str, Measure]], prefix: str) -> dict[str, Measure]:
        return {k: from_items(group, k, prefix, CONFIDENCE, per_item) or _pooled_measure([side[k] for side in sides], CONFIDENCE)
                for k in sides[0] if all(k in side for side in sides)}

    undefined: dict[str, dict[str, str]] = {}
    for prefix, sides in ((tracking.PREFIX_EVAL, [r.tuned for r in group]), (tracking.PREFIX_EVAL_BASE, [r.base for r in group])):
        merged: dict[str, str] = {}
        for r in group:
            for metric, why in r.undefined.get(prefix, {}).items():
                merged.setdefault(metric, why)
        for metric in dict.fromkeys(m for side in sides for m in side):
            lacking = sum(metric not in side for side in sides)
            if lacking:
                merged[metric] = f"for {lacking} of {seeds} seeds: {merged.get(metric, 'not measured')}"
        undefined[prefix] = merged
    withheld = next((r.withheld for r in group if r.withheld), "")
    val = {k: Measure(sum(r.val[k].value for r in group) / seeds) for k in group[0].val if all(k in r.val for r in group)}
    return replace(group[0], name="", tuned=pool([r.tuned for r in group], tracking.PREFIX_EVAL),
                   base=pool([r.base for r in group], tracking.PREFIX_EVAL_BASE), val=val,
                   changes={} if withheld else pool([r.changes for r in group], tracking.PREFIX_DELTA),
                   undefined=undefined, withheld=withheld,
                   labeller={p: set().union(*(r.labeller.get(p, set()) for r in group)) for p in group[0].labeller},
                   params={k: v for k, v in group[0].params.items() if k != SEED_PARAM}, runs=tuple(group))


POOLED_PREFIX = "pooled"
"""The prefix of a sweep's pooled changes on its parent run (pooled_metrics)."""


def pooled_metrics(rows: Sequence[RunRow]) -> dict[str, float]:
    """The rows' changes at 95% (pooled_row's, before any adjustment) as metrics for a sweep's parent
    run, apart per row: `pooled/<scale>-<method>/delta/<task>/<metric>` with `_n`, `_ci95_low` and
    `_ci95_high` (absent where there is no interval), and `pooled/<scale>-<method>/seeds`. A second
    row of the same scale and method (other settings) gets `-2` after its method, and so on."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for row in rows:
        head = re.sub(r"[^\w./ -]", "_", f"{POOLED_PREFIX}/{row.scale}-{row.method}")  # MLflow's key characters
        seen[head] = seen.get(head, 0) + 1
        head += f"-{seen[head]}" if seen[head] > 1 else ""
        out[f"{head}/seeds"] = float(row.seeds)
        for name, m in row.changes.items():
            if not math.isfinite(m.value):
                continue
            key = f"{head}/{tracking.metric_key(tracking.PREFIX_DELTA, name)}"
            out[key] = m.value
            if m.n is not None:
                out[f"{key}_n"] = float(m.n)
            if m.low is not None and m.high is not None:
                out.update({f"{key}_ci95_low": m.low, f"{key}_ci95_high": m.high})
    return out


def notes(rows: Sequence[RunRow]) -> list[str]:
    """What the reader must know beside the tables: withheld changes, and the quick suite's wide intervals."""
    from cdb.eval.options import SUITES

    out = [f"Change against the base model withheld for {_short(r)}: {r.withheld}." for r in rows if r.withheld]
    quick = [r for r in rows if r.suite == "quick"]
    if quick:
        q = SUITES["quick"]
        out.append(f"{sum(r.seeds for r in quick)} run(s) were evaluated with the quick suite "
                   f"({q['toxicity_limit']} prompts x {q['samples']} samples, {q['summary_limit']} summaries, "
                   f"{q['crows_limit']} CrowS pairs): its intervals are wide, so only large changes are detectable; "
                   "evaluate with eval.suite=standard to measure smaller ones.")
    return out


def shown_columns(rows: Sequence[RunRow]) -> list[Column]:
    """The COLUMNS some run of `rows` logged, tuned or base, or gave a reason for not defining: a suite
    without the harness task, or without TruthfulQA's data, gets no column of dashes. A column scored
    by an instrument becomes one per instrument the runs used, named in its label; those holding
    numbers scored by the labeller of the training data go last, after every headline column."""
    def logged(column: Column, row: RunRow) -> bool:
        name = metric_name(column, row)
        return name in row.tuned or name in row.base or any(name in u for u in row.undefined.values())

    headline: list[Column] = []
    labelled: list[Column] = []
    for c in COLUMNS:
        if not c.scored_by:
            headline += [c] if any(logged(c, r) for r in rows) else []
            continue
        seen = [instrument(c, r, p) for r in rows if logged(c, r) for p in (tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)]
        for scorer, labeller in dict.fromkeys(seen):
            named = ", ".join(([scorer] if scorer else []) + (["labeller"] if labeller else []))
            split = replace(c, label=f"{c.label} ({named})" if named else c.label, scorer=scorer, labeller=labeller)
            (labelled if labeller else headline).append(split)
    return headline + labelled


def labeller_marked(rows: Sequence[RunRow]) -> bool:
    """Whether a table cell carries the (labeller) mark (then LABELLER_NOTE goes under the tables)."""
    return any(metric_name(c, r) in marked for r in rows for marked in r.labeller.values() for c in COLUMNS)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(rows: Sequence[RunRow], experiment: str, uri: str) -> str:
    evaluated, with_base, bare = tables(rows)
    columns = shown_columns(evaluated)
    heads = LEAD + [c.label for c in columns]
    lines = [f"# Evaluation report: experiment `{experiment}`", "", f"Store: `{uri}`. {LEGEND}", ""]
    lines += [f"- {note}" for note in notes(evaluated)] + ([""] if notes(evaluated) else [])
    if evaluated:
        lines += ["## Tuned models (change against base)", "", "| " + " | ".join(heads) + " |",
                  "|" + "|".join(["---"] * len(heads)) + "|"]
        for r in evaluated:
            cells = [_cell(r, c, tracking.PREFIX_EVAL)[0] for c in columns]
            lines.append(_md_row(_lead(r) + cells))
        lines += ["", adjustment_note(evaluated, columns), ""]
    if with_base:
        lines += ["## Base models", "", "| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
        for r in with_base:
            cells = [_cell(r, c, tracking.PREFIX_EVAL_BASE)[0] for c in columns]
            lines.append(_md_row(_lead(r) + cells))
        lines.append("")
    if labeller_marked(evaluated):
        lines += [LABELLER_NOTE, ""]
    validated = [r for r in rows if r.val]
    if validated:
        val_heads = LEAD + [c.label for c in VAL_COLUMNS]
        lines += ["## Validation (held-out sources, last validation)", "", _md_row(val_heads),
                  "|" + "|".join(["---"] * len(val_heads)) + "|"]
        lines += [_md_row(_lead(r) + [_val_cell(r, c) for c in VAL_COLUMNS]) for r in validated]
        lines.append("")
    if bare:
        lines += ["## Runs without eval metrics", ""]
        lines += [f"- {r.method} / {r.scale}: run {_short(r)}, status {r.status}" for r in bare]
        lines.append("")
    lines += ["![alignment tax](alignment_tax.png)", ""]
    return "\n".join(lines)


def _html_table(rows: Sequence[RunRow], prefix: str, columns: Sequence[Column]) -> str:
    """Eval metrics of `prefix` (eval: the tuned ones with their change; eval_base), or with no prefix the val ones."""
    heads = LEAD + [c.label for c in columns]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for r in rows:
        cells = [f"<td>{html.escape(x)}</td>" for x in _lead(r)]
        for c in columns:
            text, verdict = _cell(r, c, prefix) if prefix else (_val_cell(r, c), None)
            css = {True: ' class="better"', False: ' class="worse"'}.get(verdict, "")
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def html_report(rows: Sequence[RunRow], experiment: str, uri: str) -> str:
    evaluated, with_base, bare = tables(rows)
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
        f"<title>cdb report: {html.escape(experiment)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+4),th{text-align:left}"
        ".better{background:#dff0d8}.worse{background:#f2dede}</style></head><body>",
        f"<h1>Evaluation report: experiment <code>{html.escape(experiment)}</code></h1>",
        f"<p>Store: <code>{html.escape(uri)}</code>. {html.escape(LEGEND)} Green: better, red: worse.</p>",
    ]
    if notes(evaluated):
        parts += ["<ul>"] + [f"<li>{html.escape(note)}</li>" for note in notes(evaluated)] + ["</ul>"]
    if evaluated:
        parts += ["<h2>Tuned models (change against base)</h2>",
                  _html_table(evaluated, tracking.PREFIX_EVAL, shown_columns(evaluated)),
                  f"<p>{html.escape(adjustment_note(evaluated, shown_columns(evaluated)))}</p>"]
    if with_base:
        parts += ["<h2>Base models</h2>", _html_table(with_base, tracking.PREFIX_EVAL_BASE, shown_columns(evaluated))]
    if labeller_marked(evaluated):
        parts.append(f"<p>{html.escape(LABELLER_NOTE)}</p>")
    validated = [r for r in rows if r.val]
    if validated:
        parts += ["<h2>Validation (held-out sources, last validation)</h2>", _html_table(validated, "", VAL_COLUMNS)]
    if bare:
        parts += ["<h2>Runs without eval metrics</h2>", "<ul>"]
        parts += [f"<li>{html.escape(f'{r.method} / {r.scale}: run {_short(r)}, status {r.status}')}</li>" for r in bare]
        parts.append("</ul>")
    parts += ['<img src="alignment_tax.png" alt="alignment tax">', "</body></html>", ""]
    return "\n".join(parts)


def _whisker(m: Measure) -> list[list[float]] | None:
    """The interval as matplotlib's error bar lengths below and above the value."""
    if m.low is None or m.high is None:
        return None
    return [[max(m.value - m.low, 0.0)], [max(m.high - m.value, 0.0)]]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def faithfulness_metric(row: RunRow) -> str:
    """The faithfulness a run's point is plotted by: the headline, or what a run logged before it had a name."""
    return HEADLINE_FAITHFULNESS if HEADLINE_FAITHFULNESS in row.tuned else OLD_FAITHFULNESS


def plot(rows: Sequence[RunRow], path: Path) -> Path:
    """Toxicity (x) vs faithfulness (y): an arrow per run from its base model to the tuned one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tox = "toxicity/mean_toxicity"
    faith_of = {r.run_id: faithfulness_metric(r) for r in rows}
    # One instrument on the x axis: the one most runs used that did not label their training data.
    column = next(c for c in COLUMNS if c.metric == tox)
    used = [instrument(column, r, tracking.PREFIX_EVAL) for r in rows if tox in r.tuned and faith_of[r.run_id] in r.tuned]
    used = [i for i in used if not i[1]]
    scorer = max(dict.fromkeys(used), key=used.count)[0] if used else ""  # ties: the first run's
    plotted = [r for r in rows if tox in r.tuned and faith_of[r.run_id] in r.tuned
               and instrument(column, r, tracking.PREFIX_EVAL) == (scorer, False)]
    methods = sorted({r.method for r in plotted})
    scales = list(dict.fromkeys(r.scale for r in plotted))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(scales)}
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for r in plotted:
        colour, marker, faith = colours[r.method], markers[r.scale], faith_of[r.run_id]
        end = (r.tuned[tox].value, r.tuned[faith].value)
        if tox in r.base and faith in r.base:
            start = (r.base[tox].value, r.base[faith].value)
            ax.scatter(*start, marker=marker, facecolors="none", edgecolors=colour, s=50, zorder=2)
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=colour, lw=1.6, shrinkA=4, shrinkB=6), zorder=1)
        ax.scatter(*end, marker=marker, color=colour, s=60, zorder=3)
        xerr, yerr = _whisker(r.tuned[tox]), _whisker(r.tuned[faith])
        if xerr is not None or yerr is not None:
            ax.errorbar(*end, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.5, lw=1, zorder=2)
    if plotted:
        ax.update_datalim([(r.base.get(tox, r.tuned[tox]).value,
                            r.base.get(faith_of[r.run_id], r.tuned[faith_of[r.run_id]]).value) for r in plotted])
        ax.autoscale_view()
        ax.margins(0.15)
        handles = [Line2D([], [], color=colours[m], lw=2, label=m) for m in methods]
        handles += [Line2D([], [], color="black", marker=markers[s], ls="", label=s) for s in scales]
        handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none", ls="", label="base model"))
        ax.legend(handles=handles, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no run has eval toxicity (a classifier, not the labeller) and faithfulness metrics",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"toxicity{f' ({scorer})' if scorer else ''}: mean P(toxic) of continuations (lower is better)")
    ax.set_ylabel("faithfulness: entity precision of summaries, all types (higher is better)")
    ax.set_title("Alignment tax: base model → tuned model (bars: 95% intervals)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Report:
    """What a report shows, read back from the store."""

    runs: list[RunRow]
    """Every run of the experiment (or of a sweep's parent) but bookkeeping ones."""
    rows: list[RunRow]
    """The table's rows: each method's seeds pooled, changes adjusted; then the runs without eval metrics."""
    pooled: list[RunRow]
    """The evaluated rows, seeds pooled, before the adjustment (what a sweep's parent logs)."""


def read_report(uri: str, experiment: str, parent_run_id: str = "") -> Report:
    """The runs, pooled by seed and adjusted for the comparisons in each column (the per-item values
    come from the store's artifacts)."""
    runs = collect(uri, experiment, parent_run_id)
    evaluated, _, bare = tables(runs)
    with tempfile.TemporaryDirectory(prefix="cdb-report-") as folder:
        per_item = PerItem(uri, Path(folder))
        pooled = [pooled_row(group, per_item) for group in seed_groups(evaluated)]
        rows = adjusted(pooled, shown_columns(pooled), per_item) + bare
    return Report(runs, rows, pooled)


SUMMARY_METRICS = ("toxicity/mean_toxicity", "toxicity/mean_words", "faithfulness/entity_precision_all",
                   "faithfulness/entity_recall_all", "bias/crows_stereo_share")
"""The columns of the short table README shows (summary_table), where a run has them."""


def summary_table(rows: Sequence[RunRow]) -> str:
    """The short table of README's results (scripts/publish_results.py writes it there,
    tests/test_results.py keeps it equal to what the committed store gives): the base model, then
    each row's SUMMARY_METRICS (not the labeller's) with their changes, and the adjustment line."""
    evaluated, with_base, _ = tables(rows)
    columns = [c for c in shown_columns(evaluated) if c.metric in SUMMARY_METRICS and not c.labeller]
    heads = ["Model", "Seeds"] + [c.label for c in columns]
    lines = [_md_row(heads), "|" + "|".join(["---"] * len(heads)) + "|"]
    if with_base:
        base = with_base[0]
        lines.append(_md_row([f"base ({base.scale})", "—"] + [_cell(base, c, tracking.PREFIX_EVAL_BASE)[0] for c in columns]))
    lines += [_md_row([r.method, _seeds(r)] + [_cell(r, c, tracking.PREFIX_EVAL)[0] for c in columns]) for r in evaluated]
    return "\n".join(lines + ["", adjustment_note(evaluated, columns)])


def report(experiment: str, output_dir: str | Path, tracking_uri: str | None = None,
           parent_run_id: str = "") -> dict[str, Any]:
    """Write report.md, report.html, alignment_tax.png and log them to a new report run; of the
    children of `parent_run_id` only when given. Returns the report run's id, the files, the counts
    of runs, evaluated runs and table rows (seeds pooled), and `pooled_metrics`: the rows' changes at
    95% as a sweep's parent run logs them (pooled_metrics). Raises ReportError when the experiment is
    missing or holds no runs."""
    uri = tracking.resolve_uri(tracking_uri or "")
    found = read_report(uri, experiment, parent_run_id)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.html", out / "alignment_tax.png"]
    files[0].write_text(markdown(found.rows, experiment, uri), encoding="utf-8")
    files[1].write_text(html_report(found.rows, experiment, uri), encoding="utf-8")
    plot(found.rows, files[2])
    with tracking.open_run(uri, experiment, tracking.REPORT_RUN, {"runs": len(found.runs)},
                           {tracking.TAG_METHOD: tracking.REPORT_RUN}) as run:
        for path in files:
            run.log_artifact(path)
    return {"run_id": run.id, "files": [str(f) for f in files], "runs": len(found.runs),
            "evaluated": len(tables(found.runs)[0]), "rows": len(found.pooled),
            "pooled_metrics": pooled_metrics(found.pooled), "tracking_uri": uri}


@dataclass(frozen=True)
class ReportSettings:
    experiment: str = ""
    """MLflow experiment to report on; required."""
    tracking_uri: str = ""
    """MLflow store; empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    output: str = ""
    """Folder for report.md, report.html and alignment_tax.png (created when missing); required."""


FLAGS = (
    Flag("--experiment", key="experiment", metavar="NAME"),
    Flag("--tracking-uri", key="tracking_uri", metavar="URI"),
    Flag("--output", key="output", metavar="DIR"),
)
"""Each flag a shorthand for one ReportSettings key."""


def command() -> Command:
    keys = "\n".join(f"  {key}: {doc}" for key, _, _, doc in settings.describe(ReportSettings))
    return Command("cdb.report", "python -m cdb.report", __doc__.split("\n")[0], FLAGS,
                   defaults=describe(ReportSettings), what="report",
                   epilog=f"keys (--config FILE.yaml, --set KEY=VALUE):\n{keys}")


def settings_from_args(cli: Command, args: argparse.Namespace) -> ReportSettings:
    """ReportSettings from --config, the flags and --set; a ConfigError names a missing or bad key."""
    values = settings.resolve(ReportSettings, config_file=args.config, flags=cli.keys(args), sets=args.set)
    for key in ("experiment", "output"):
        if not getattr(values, key):
            raise ConfigError(f"{key}: required; give --{key} or --set {key}=VALUE")
    return values


def main(argv: list[str] | None = None) -> int:
    cli = command()
    try:
        options = settings_from_args(cli, cli.parse(argv))
    except ConfigError as e:
        return cli.fail(str(e))
    try:
        result = report(options.experiment, options.output, options.tracking_uri)
    except ReportError as e:
        return cli.fail(str(e), 1)
    print(f"[cdb.report] {result['runs']} runs ({result['evaluated']} with eval metrics, in {result['rows']} rows): "
          f"{', '.join(result['files'])}; MLflow report run {result['run_id']}")
    if not result["evaluated"]:
        print("[cdb.report] no run was evaluated, so the table and the plot are empty: train with "
              "--set eval.suite=quick (minutes) or eval.suite=standard (hours on CPU) to compare methods")
    uri = result["tracking_uri"]
    link = tracking.runs_url(uri, tracking.experiment_id(uri, options.experiment), tracking.TRAINING_RUNS_FILTER)
    print(f"[cdb.report] the training runs in MLflow: {tracking.ui_hint(uri, link)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
