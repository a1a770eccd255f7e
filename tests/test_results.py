"""The published results are what the committed store gives: README's table and docs/report.md are
read back from docs/results/ (scripts/publish_results.py writes all three), so neither can drift from
the runs behind them."""

from __future__ import annotations

import importlib.util

from conftest import REPO

RESULTS = REPO / "docs" / "results"


def publisher():
    spec = importlib.util.spec_from_file_location("publish_results", REPO / "scripts" / "publish_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_what_the_committed_store_gives():
    publish = publisher()
    assert (RESULTS / "mlflow.db").is_file(), "docs/results/ holds no store: bash scripts/regenerate_results.sh publish"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert publish.readme_table(readme) == publish.store_table(RESULTS, "results")


def test_the_committed_store_holds_evaluations_not_weights_or_system_metrics():
    import sqlite3

    from cdb.tracking import ARTIFACTS_DIR

    files = [p for p in (RESULTS / ARTIFACTS_DIR).rglob("*") if p.is_file()]
    assert files and {p.name for p in files} <= {"eval.json", "items.json"}
    with sqlite3.connect(f"file:{RESULTS / 'mlflow.db'}?mode=ro", uri=True) as db:
        [(system,)] = db.execute("SELECT COUNT(*) FROM metrics WHERE key LIKE 'system/%'").fetchall()
    assert system == 0


def test_the_report_names_the_committed_store():
    text = (REPO / "docs" / "report.md").read_text(encoding="utf-8")
    assert "docs/results/mlflow.db" in text and "/tmp/" not in text
