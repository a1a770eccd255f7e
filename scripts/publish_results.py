"""Publish a method comparison (scripts/regenerate_results.sh makes it) into the repository:

    docs/results/mlflow.db + mlartifacts/   the MLflow store: every run's params, tags and metrics (no
                                            system metrics), and each evaluation's eval.json and
                                            items.json (no weights, no samples)
    docs/report.md, docs/alignment_tax.png  `cdb.report` over that store
    README.md                               the short table between its results markers

    python scripts/publish_results.py --store runs/results --experiment results

The committed store is read where it lies (cdb.tracking reads a moved local store's artifacts beside
it), so `python -m cdb.report --experiment results --tracking-uri sqlite:///docs/results/mlflow.db`
regenerates the report, and tests/test_results.py keeps README's table equal to the store's.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
README_BEGIN = "<!-- results table: written by scripts/publish_results.py from docs/results; tests/test_results.py checks it -->"
README_END = "<!-- end of results table -->"
KEPT_ARTIFACTS = ("eval.json", "items.json")


def copy_store(source: Path, target: Path) -> None:
    """The store without system metrics, and of its artifacts the evaluations' summaries and per-item values."""
    from cdb.tracking import ARTIFACTS_DIR

    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(source / "mlflow.db", target / "mlflow.db")
    with sqlite3.connect(target / "mlflow.db") as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"DELETE FROM {table} WHERE key LIKE 'system/%'")
    with sqlite3.connect(target / "mlflow.db") as db:
        db.execute("VACUUM")
    for path in sorted((source / ARTIFACTS_DIR).rglob("*")):
        if path.is_file() and path.name in KEPT_ARTIFACTS:
            copy = target / ARTIFACTS_DIR / path.relative_to(source / ARTIFACTS_DIR)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copy)


def readme_with_table(readme: str, table: str) -> str:
    begin, end = readme.index(README_BEGIN), readme.index(README_END)
    return readme[:begin + len(README_BEGIN)] + "\n" + table + "\n" + readme[end:]


def readme_table(readme: str) -> str:
    """The table README holds between its markers."""
    begin, end = readme.index(README_BEGIN), readme.index(README_END)
    return readme[begin + len(README_BEGIN):end].strip("\n")


def store_table(results: Path, experiment: str) -> str:
    """The short table the store at `results` gives (read from a copy: reading never writes to it)."""
    from cdb import report

    with tempfile.TemporaryDirectory(prefix="cdb-results-") as folder:
        copy = Path(folder) / "results"
        shutil.copytree(results, copy)
        return report.summary_table(report.read_report(f"sqlite:///{copy / 'mlflow.db'}", experiment).rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="the work folder holding mlflow.db and mlartifacts/")
    p.add_argument("--experiment", default="results")
    args = p.parse_args(argv)
    from cdb import report

    copy_store(Path(args.store), RESULTS)
    with tempfile.TemporaryDirectory(prefix="cdb-results-") as folder:  # the report run goes to a copy
        copy = Path(folder) / "results"
        shutil.copytree(RESULTS, copy)
        written = report.report(args.experiment, Path(folder) / "report", f"sqlite:///{copy / 'mlflow.db'}")
        text = Path(written["files"][0]).read_text(encoding="utf-8")
        (REPO / "docs" / "report.md").write_text(text.replace(str(copy / "mlflow.db"), "docs/results/mlflow.db"),
                                                 encoding="utf-8")
        shutil.copy(written["files"][2], REPO / "docs" / "alignment_tax.png")
    readme = REPO / "README.md"
    readme.write_text(readme_with_table(readme.read_text(encoding="utf-8"), store_table(RESULTS, args.experiment)),
                      encoding="utf-8")
    print(f"[publish] {RESULTS}, docs/report.md, docs/alignment_tax.png and README's table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
