"""Numbers a reader can weigh: each metric's n and 95% interval over its items, whether a base and a
tuned evaluation can be compared, and the paired change between them (docs/METHOD.md, "Evaluation").

    summarise(prefix, metrics, items)   `<prefix>/<task>/<metric>` with `_n`, `_ci95_low`, `_ci95_high`,
                                        and why each undefined metric is absent
    evaluation_hash(options, scorers, items)   what two evaluations must share to be compared
    changes(base_dir, tuned_dir)        `delta/<task>/<metric>` over the items both evaluated, or why withheld
    log_changes(run, output_dir)        the changes into a training run and OUTPUT_DIR/changes.json
    options_changed(folder, options)    what differs from the options a saved evaluation used (--resume)

The statistics are cdb.eval.intervals, one estimator per kind of items (Items.kind, within
Items.bounds), each chosen by its simulated coverage; a change is paired over the same items. A
metric whose harness states its standard error (Items.stderr: lm-eval's, for the harness task)
gets that harness's interval, value +- 1.96 stderr, where the normal approximation holds (its n
still the items'). `estimate` and `change` take the confidence level (the report's adjusted one).
An evaluation folder holds eval.json and ITEMS_FILE (each metric's values per item).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cdb import tracking
from cdb.eval.base import Items
from cdb.eval.bias import icat
from cdb.eval.intervals import CONFIDENCE, Change, Estimate, combined_interval, mean_interval, \
    normal_approximation_holds, paired_binary_change, paired_change, paired_combined_change, share_interval

ITEMS_FILE = "items.json"
"""In an evaluation's folder (and artifact folder): {"options_hash", "metrics": {"task/metric":
{"kind", "undefined", "stderr", "bounds", "values": {item id: value or null}}}}."""
CHANGES_FILE = "changes.json"
"""In a training run's folder: the delta/ metrics with their intervals, or why they were withheld."""
EXECUTION_OPTIONS = ("progress", "threads", "batch_size", "device")
"""Options that decide how an evaluation runs, not what it measures: left out of the comparison."""


def estimate(items: Items, confidence: float = CONFIDENCE) -> Estimate:
    """The metric over its items with its n and interval (NaN items left out)."""
    values = list(items.values.values())
    if items.kind == "icat":
        return combined_interval(_columns(values), icat, items.bounds, confidence)
    finite = np.array([float(v) for v in values if not math.isnan(v)])
    if items.stderr is not None and normal_approximation_holds(finite):
        value = float(np.mean(finite))
        half = statistics.NormalDist().inv_cdf(0.5 + confidence / 2) * items.stderr
        return Estimate(value, len(finite), value - half, value + half)
    if items.kind == "share":
        if any(v not in (0.0, 1.0) for v in finite):
            raise ValueError("a share's items must be 0 or 1")
        return share_interval(int(sum(finite)), len(finite), confidence)
    return mean_interval(finite, items.bounds, confidence)


def change(base: Items, tuned: Items, confidence: float = CONFIDENCE) -> Change:
    """tuned - base over the items both evaluated (and both define), its interval at `confidence`."""
    common = [k for k in tuned.values if k in base.values]
    before, after = [base.values[k] for k in common], [tuned.values[k] for k in common]
    if tuned.kind == "share":
        return paired_binary_change(before, after, confidence)
    if tuned.kind == "icat":
        return paired_combined_change(_columns(before), _columns(after), icat, tuned.bounds, confidence)
    return paired_change(before, after, tuned.bounds, confidence)


def _columns(pairs: list) -> list[list[float]]:
    """[lms, ss] per item -> [lms column, ss column]."""
    return [[p[0] for p in pairs], [p[1] for p in pairs]]


def interval_fields(key: str, result: Estimate) -> dict[str, float]:
    """`key` with its n and interval (tracking.interval_metrics), without the interval where there is none."""
    fields = tracking.interval_metrics(key, result.value, result.n, result.low, result.high)
    if not (math.isfinite(result.low) and math.isfinite(result.high)):
        fields = {k: v for k, v in fields.items() if not k.endswith(("_ci95_low", "_ci95_high"))}
    return fields


def summarise(prefix: str, metrics: Mapping[str, float], items: Mapping[str, Items]) -> tuple[dict[str, float], dict[str, str]]:
    """(flat metrics `<prefix>/<name>` with their n and interval, {full name: why it is undefined}).
    A metric undefined for the evaluation (no item defines it) is absent, its reason given instead;
    a metric with no reliable interval at its n is logged without one, the reason under
    `<full name>_ci95`."""
    fields: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for name, value in metrics.items():
        key = tracking.metric_key(prefix, name)
        if name not in items:
            raise ValueError(f"metric {name}: the task gave no per-item values (TaskResult.items)")
        try:
            result = estimate(items[name])
        except ValueError as e:
            raise ValueError(f"metric {name}: {e}") from None
        if result.n and not math.isclose(result.value, value, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"metric {name}: its items give {result.value!r} but the task says {value!r}")
        if result.n == 0 or not math.isfinite(value):
            undefined[key] = items[name].undefined or "no item defines it"
            continue
        fields.update(interval_fields(key, result))
        if result.note:
            undefined[f"{key}_ci95"] = result.note
    return fields, undefined


def comparable_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that decide what an evaluation measures, as JSON has them (lists, not tuples)."""
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in EXECUTION_OPTIONS}))


def evaluation_hash(options: Mapping[str, Any], scorers: Mapping[str, str], items: Mapping[str, Items]) -> str:
    """A digest of the options, the scorers' versions and the item set of every metric: equal for
    two evaluations that measured the same things the same way."""
    what = {"options": comparable_options(options), "scorers": dict(scorers),
            "items": {name: sorted(i.values) for name, i in items.items()}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def write_items(path: Path, options_hash: str, items: Mapping[str, Items]) -> None:
    metrics = {name: {"kind": i.kind, "undefined": i.undefined, "stderr": i.stderr,
                      "bounds": list(i.bounds) if i.bounds is not None else None,
                      "values": {k: _json_value(v) for k, v in i.values.items()}} for name, i in items.items()}
    path.write_text(json.dumps({"options_hash": options_hash, "metrics": metrics}) + "\n", encoding="utf-8")


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return None if math.isnan(value) else float(value)


def read_items(folder: Path) -> tuple[str, dict[str, Items]]:
    """(options hash, items by "task/metric") of an evaluation folder."""
    path = folder / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-item values (evaluated by an older cdb?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    # written before bounds were: unknown, so unbounded
    items = {name: Items({k: _from_json(v) for k, v in m["values"].items()}, m["kind"], m["undefined"], m.get("stderr"),
                         tuple(m["bounds"]) if m.get("bounds") is not None else None)
             for name, m in data["metrics"].items()}
    return data["options_hash"], items


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return math.nan if value is None else value


def changes(base_dir: Path, tuned_dir: Path) -> dict[str, Any]:
    """The paired change of every metric both evaluations have, as CHANGES_FILE holds it:
    {"withheld": why or None, "base_hash", "tuned_hash", "changes": {"task/metric": {value, n,
    ci95_low, ci95_high (null: no reliable interval, `note` says why), p_value, note}},
    "not_measured": {"task/metric": why}}. Withheld (no changes) when the two were not evaluated
    with the same options, scorers and items."""
    base_hash, base = read_items(base_dir)
    tuned_hash, tuned = read_items(tuned_dir)
    out: dict[str, Any] = {"withheld": None, "base_hash": base_hash, "tuned_hash": tuned_hash,
                           "changes": {}, "not_measured": {}}
    if base_hash != tuned_hash:
        out["withheld"] = (f"base and tuned were evaluated with different options, scorers or items "
                           f"(hash {base_hash} vs {tuned_hash})")
        return out
    for name in dict.fromkeys([*base, *tuned]):
        if name not in base or name not in tuned:
            out["not_measured"][name] = f"measured for the {'tuned' if name in tuned else 'base'} model only"
            continue
        result = change(base[name], tuned[name])
        if result.n == 0:
            side, items = ("base", base[name]) if estimate(base[name]).n == 0 else ("tuned", tuned[name])
            out["not_measured"][name] = f"undefined for the {side} model: {items.undefined or 'no item defines it'}"
            continue
        out["changes"][name] = {"value": result.value, "n": result.n, "ci95_low": _json_value(result.low),
                                "ci95_high": _json_value(result.high), "p_value": result.p_value, "note": result.note}
    return out


def log_changes(run: tracking.Run, output_dir: Path) -> dict[str, Any]:
    """changes() of OUTPUT_DIR's eval_base/ and eval/ into `run` (delta/ metrics with their n and
    interval; tag TAG_DELTA_WITHHELD, empty when comparable) and OUTPUT_DIR/CHANGES_FILE."""
    result = changes(output_dir / tracking.PREFIX_EVAL_BASE, output_dir / tracking.PREFIX_EVAL)
    path = output_dir / CHANGES_FILE
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    metrics: dict[str, float] = {}
    for name, c in result["changes"].items():
        interval = _from_json(c["ci95_low"]), _from_json(c["ci95_high"])
        metrics.update(interval_fields(tracking.metric_key(tracking.PREFIX_DELTA, name),
                                       Estimate(c["value"], c["n"], *interval)))
    run.set_tags({tracking.TAG_DELTA_WITHHELD: result["withheld"] or ""})
    if metrics:
        run.log_metrics(metrics)
    run.log_artifact(path)
    return result


def options_changed(folder: Path, options: Mapping[str, Any]) -> str | None:
    """Why the evaluation saved in `folder` (its eval.json) does not match `options` (EvalOptions
    fields, the suite filled in): missing, or the options that differ; None when it matches."""
    path = folder / "eval.json"
    if not path.is_file():
        return f"{path} not found"
    saved = comparable_options(json.loads(path.read_text(encoding="utf-8")).get("options", {}))
    wanted = comparable_options(options)
    differ = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
    if not differ:
        return None
    return "evaluation options changed: " + ", ".join(f"{k} {saved.get(k)!r} -> {wanted.get(k)!r}" for k in differ)
