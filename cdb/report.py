"""python -m cdb.report: method x scale table and alignment-tax plot of an MLflow experiment.

Reads every run of the experiment (method: tag cdb.method, plus "+<m>" when its eval/ metrics were
taken under a prompt-time method m other than the run's own, tag cdb.eval.method; scale: tag
cdb.scale), its metrics `eval/<task>/<metric>` (the tuned model), `eval_base/<task>/<metric>` (the
base model, logged into the same run before training) and `val/...` (the training run's held-out
sources, at its last validation), and writes to OUTPUT:
  report.md, report.html   one row per run: each metric with its change against the run's base model;
                           the validation metrics every method shares
  alignment_tax.png        toxicity (x) against faithfulness (y), an arrow per run from base to tuned
and logs the three as artifacts of a new run tagged cdb.method=report. Runs without eval metrics are
listed as such. Exit codes: 0 done, 1 no such experiment or no runs in it, 2 bad arguments.

    python -m cdb.report --experiment NAME --output DIR [--tracking-uri URI] [--config FILE.yaml] [--set KEY=VALUE]

Settings (ReportSettings; the grammar of every cdb entry point, cdb/settings.py): defaults <- --config
FILE.yaml <- flags <- --set key=value; each flag is a shorthand for the key of its name.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cdb import settings, tracking
from cdb.settings import ConfigError


@dataclass(frozen=True)
class Column:
    label: str
    metric: str   # "<task>/<metric>" under eval/ and eval_base/
    better: str   # "lower", "higher", or "half" (0.5 is ideal: CrowS-Pairs)
    digits: int = 4


VAL_COLUMNS = (
    Column("Val LM loss ↓", "lm_loss", "lower"),
    Column("Val pref. accuracy ↑", "pref_accuracy", "higher"),
)
"""The val/ metrics every training method logs (cdb.loop.validation_metrics), at the run's last validation."""

COLUMNS = (
    Column("Toxicity ↓", "toxicity/mean_toxicity", "lower"),
    Column("Exp. max toxicity ↓", "toxicity/expected_max_toxicity", "lower"),
    Column("Faithfulness ↑", "faithfulness/faithfulness", "higher"),
    Column("Similarity (MiniLM) ↑", "faithfulness/similarity_minilm", "higher"),
    Column("TruthfulQA MC1 ↑", "truthfulqa/mc1", "higher"),
    Column("TruthfulQA MC2 ↑", "truthfulqa/mc2", "higher"),
    Column("Knowledge ↑", "knowledge/accuracy", "higher"),
    Column("CrowS stereo (0.5 ideal)", "bias/crows_stereo_share", "half"),
    Column("StereoSet ICAT ↑", "bias/stereoset_icat", "higher", 2),
    Column("Intelligible ↑", "intelligibility/intelligible", "higher"),
)


class ReportError(Exception):
    """Nothing to report; the message is one line for the user."""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    method: str
    scale: str
    status: str
    start_time: int
    tuned: dict[str, float] = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)

    def delta(self, metric: str) -> float | None:
        if metric in self.tuned and metric in self.base:
            return self.tuned[metric] - self.base[metric]
        return None


def collect(uri: str, experiment: str) -> list[RunRow]:
    """The experiment's runs (report runs excluded), sorted by scale, method, start time."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri[len('sqlite:///'):]}")
    runs = tracking.experiment_runs(uri, experiment)
    if runs is None:
        raise ReportError(f"experiment '{experiment}' not found in {uri}")
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        method = tags.get(tracking.TAG_METHOD) or "?"
        if method in tracking.BOOKKEEPING_RUNS:  # not models
            continue
        prompt_time = tags.get(tracking.eval_tag(tracking.PREFIX_EVAL, "method"), "none")  # cdb.eval's --method for the eval/ metrics
        if prompt_time not in ("none", method):
            method = f"{method}+{prompt_time}"  # e.g. a trained model then decoded with self-debias
        scale = tags.get(tracking.TAG_SCALE) or tags.get(tracking.TAG_MODEL) or "?"
        rows.append(RunRow(
            run.info.run_id, run.info.run_name or "", method, scale, run.info.status, run.info.start_time or 0,
            tracking.metrics_under(metrics, tracking.PREFIX_EVAL), tracking.metrics_under(metrics, tracking.PREFIX_EVAL_BASE),
            tracking.metrics_under(metrics, tracking.PREFIX_VAL),
        ))
    if not rows:
        raise ReportError(f"experiment '{experiment}' has no runs to report in {uri}")
    from cdb.scales import SCALES

    order = {name: i for i, name in enumerate(SCALES)}
    return sorted(rows, key=lambda r: (order.get(r.scale, len(order)), r.scale, r.method, r.start_time))


def _improved(column: Column, base: float, tuned: float) -> bool | None:
    if math.isclose(base, tuned, rel_tol=0, abs_tol=1e-12):
        return None
    if column.better == "half":
        return abs(tuned - 0.5) < abs(base - 0.5)
    return (tuned < base) if column.better == "lower" else (tuned > base)


def _cell(row: RunRow, column: Column, values: dict[str, float], with_delta: bool) -> tuple[str, bool | None]:
    value = values.get(column.metric)
    if value is None or not math.isfinite(value):
        return "—", None
    text = f"{value:.{column.digits}f}"
    change = row.delta(column.metric) if with_delta else None
    if change is None:
        return text, None
    return f"{text} ({change:+.{column.digits}f})", _improved(column, row.base[column.metric], value)


def _short(row: RunRow) -> str:
    return f"{row.name} ({row.run_id[:8]})" if row.name else row.run_id[:8]


def tables(rows: Sequence[RunRow]) -> tuple[list[RunRow], list[RunRow], list[RunRow]]:
    """(runs with eval metrics, those of them with base metrics, runs without eval metrics)."""
    evaluated = [r for r in rows if r.tuned]
    return evaluated, [r for r in evaluated if r.base], [r for r in rows if not r.tuned]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(rows: Sequence[RunRow], experiment: str, uri: str) -> str:
    evaluated, with_base, bare = tables(rows)
    heads = ["Method", "Scale", "Run"] + [c.label for c in COLUMNS]
    lines = [f"# Evaluation report: experiment `{experiment}`", "",
             f"Store: `{uri}`. Each cell: the tuned model's `eval/...` metric, in brackets its change against "
             "the base model (`eval_base/...` of the same run). CrowS-Pairs: 0.5 is unbiased; StereoSet ICAT on 0..100.", ""]
    if evaluated:
        lines += ["## Tuned models (change against base)", "", "| " + " | ".join(heads) + " |",
                  "|" + "|".join(["---"] * len(heads)) + "|"]
        for r in evaluated:
            cells = [_cell(r, c, r.tuned, True)[0] for c in COLUMNS]
            lines.append(_md_row([r.method, r.scale, _short(r)] + cells))
        lines.append("")
    if with_base:
        lines += ["## Base models", "", "| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
        for r in with_base:
            cells = [_cell(r, c, r.base, False)[0] for c in COLUMNS]
            lines.append(_md_row([r.method, r.scale, _short(r)] + cells))
        lines.append("")
    validated = [r for r in rows if r.val]
    if validated:
        val_heads = ["Method", "Scale", "Run"] + [c.label for c in VAL_COLUMNS]
        lines += ["## Validation (held-out sources, last validation)", "", _md_row(val_heads),
                  "|" + "|".join(["---"] * len(val_heads)) + "|"]
        lines += [_md_row([r.method, r.scale, _short(r)] + [_cell(r, c, r.val, False)[0] for c in VAL_COLUMNS])
                  for r in validated]
        lines.append("")
    if bare:
        lines += ["## Runs without eval metrics", ""]
        lines += [f"- {r.method} / {r.scale}: run {_short(r)}, status {r.status}" for r in bare]
        lines.append("")
    lines += ["![alignment tax](alignment_tax.png)", ""]
    return "\n".join(lines)


def _html_table(rows: Sequence[RunRow], base: bool, columns: Sequence[Column] = COLUMNS, which: str = "") -> str:
    """Eval metrics (tuned with their change, or `base`), or the RunRow field `which` (e.g. "val") as it is."""
    heads = ["Method", "Scale", "Run"] + [c.label for c in columns]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for r in rows:
        cells = [f"<td>{html.escape(x)}</td>" for x in (r.method, r.scale, _short(r))]
        for c in columns:
            values = getattr(r, which) if which else (r.base if base else r.tuned)
            text, improved = _cell(r, c, values, not base and not which)
            css = {True: ' class="better"', False: ' class="worse"'}.get(improved, "")
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def html_report(rows: Sequence[RunRow], experiment: str, uri: str) -> str:
    evaluated, with_base, bare = tables(rows)
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
        f"<title>cdb report: {html.escape(experiment)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+3),th{text-align:left}"
        ".better{background:#dff0d8}.worse{background:#f2dede}</style></head><body>",
        f"<h1>Evaluation report: experiment <code>{html.escape(experiment)}</code></h1>",
        f"<p>Store: <code>{html.escape(uri)}</code>. Each cell: the tuned model's metric, in brackets its change "
        "against the base model of the same run (green: better, red: worse). CrowS-Pairs: 0.5 is unbiased; "
        "StereoSet ICAT on 0..100.</p>",
    ]
    if evaluated:
        parts += ["<h2>Tuned models (change against base)</h2>", _html_table(evaluated, base=False)]
    if with_base:
        parts += ["<h2>Base models</h2>", _html_table(with_base, base=True)]
    validated = [r for r in rows if r.val]
    if validated:
        parts += ["<h2>Validation (held-out sources, last validation)</h2>",
                  _html_table(validated, base=False, columns=VAL_COLUMNS, which="val")]
    if bare:
        parts += ["<h2>Runs without eval metrics</h2>", "<ul>"]
        parts += [f"<li>{html.escape(f'{r.method} / {r.scale}: run {_short(r)}, status {r.status}')}</li>" for r in bare]
        parts.append("</ul>")
    parts += ['<img src="alignment_tax.png" alt="alignment tax">', "</body></html>", ""]
    return "\n".join(parts)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def plot(rows: Sequence[RunRow], path: Path) -> Path:
    """Toxicity (x) vs faithfulness (y): an arrow per run from its base model to the tuned one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tox, faith = "toxicity/mean_toxicity", "faithfulness/faithfulness"
    plotted = [r for r in rows if tox in r.tuned and faith in r.tuned]
    methods = sorted({r.method for r in plotted})
    scales = list(dict.fromkeys(r.scale for r in plotted))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(scales)}
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for r in plotted:
        colour, marker = colours[r.method], markers[r.scale]
        end = (r.tuned[tox], r.tuned[faith])
        if tox in r.base and faith in r.base:
            start = (r.base[tox], r.base[faith])
            ax.scatter(*start, marker=marker, facecolors="none", edgecolors=colour, s=50, zorder=2)
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=colour, lw=1.6, shrinkA=4, shrinkB=6), zorder=1)
        ax.scatter(*end, marker=marker, color=colour, s=60, zorder=3)
    if plotted:
        ax.update_datalim([(r.base.get(tox, r.tuned[tox]), r.base.get(faith, r.tuned[faith])) for r in plotted])
        ax.autoscale_view()
        ax.margins(0.15)
        handles = [Line2D([], [], color=colours[m], lw=2, label=m) for m in methods]
        handles += [Line2D([], [], color="black", marker=markers[s], ls="", label=s) for s in scales]
        handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none", ls="", label="base model"))
        ax.legend(handles=handles, fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no run has eval toxicity and faithfulness metrics", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("toxicity: mean P(toxic) of continuations (lower is better)")
    ax.set_ylabel("faithfulness of summaries (higher is better)")
    ax.set_title("Alignment tax: base model → tuned model")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report(experiment: str, output_dir: str | Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Write report.md, report.html, alignment_tax.png and log them to a new report run.
    Raises ReportError when the experiment is missing or holds no runs."""
    uri = tracking.resolve_uri(tracking_uri or "")
    rows = collect(uri, experiment)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.html", out / "alignment_tax.png"]
    files[0].write_text(markdown(rows, experiment, uri), encoding="utf-8")
    files[1].write_text(html_report(rows, experiment, uri), encoding="utf-8")
    plot(rows, files[2])
    with tracking.open_run(uri, experiment, tracking.REPORT_RUN, {"runs": len(rows)},
                           {tracking.TAG_METHOD: tracking.REPORT_RUN}) as run:
        for path in files:
            run.log_artifact(path)
    return {"run_id": run.id, "files": [str(f) for f in files], "runs": len(rows),
            "evaluated": sum(1 for r in rows if r.tuned), "tracking_uri": uri}


@dataclass(frozen=True)
class ReportSettings:
    experiment: str = ""
    """MLflow experiment to report on; required."""
    tracking_uri: str = ""
    """MLflow store; empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    output: str = ""
    """Folder for report.md, report.html and alignment_tax.png (created when missing); required."""


FLAG_KEYS = {"experiment": "experiment", "tracking_uri": "tracking_uri", "output": "output"}
"""Each flag (argparse dest) is a shorthand for one ReportSettings key."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = "\n".join(f"  {key}: {doc}" for key, _, _, doc in settings.describe(ReportSettings))
    p = argparse.ArgumentParser(prog="python -m cdb.report", description=__doc__.split("\n")[0],
                                epilog=f"keys (--config FILE.yaml, --set KEY=VALUE):\n{keys}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", metavar="NAME", help="= --set experiment=NAME")
    p.add_argument("--tracking-uri", metavar="URI", help="= --set tracking_uri=URI")
    p.add_argument("--output", metavar="DIR", help="= --set output=DIR")
    settings.add_arguments(p, "report")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ReportSettings:
    """ReportSettings from --config, the flags and --set; a ConfigError names a missing or bad key."""
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()}
    values = settings.resolve(ReportSettings, config_file=args.config, flags=flags, sets=args.set)
    for key in ("experiment", "output"):
        if not getattr(values, key):
            raise ConfigError(f"{key}: required; give --{key} or --set {key}=VALUE")
    return values


def main(argv: list[str] | None = None) -> int:
    try:
        options = settings_from_args(parse_args(argv))
    except ConfigError as e:
        print(f"cdb.report: {e}", file=sys.stderr)
        return 2
    try:
        result = report(options.experiment, options.output, options.tracking_uri)
    except ReportError as e:
        print(f"cdb.report: {e}", file=sys.stderr)
        return 1
    print(f"[cdb.report] {result['runs']} runs ({result['evaluated']} with eval metrics): "
          f"{', '.join(result['files'])}; MLflow report run {result['run_id']}")
    uri = result["tracking_uri"]
    link = tracking.runs_url(uri, tracking.experiment_id(uri, options.experiment), tracking.TRAINING_RUNS_FILTER)
    print(f"[cdb.report] the training runs in MLflow: {tracking.ui_hint(uri, link)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
