"""cdb.report on a fixture experiment in a real sqlite MLflow: tables with hand-computed deltas,
the alignment-tax PNG, the report run's artifacts, the empty / missing cases, and its settings."""

import struct
import time

import pytest
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cdb import settings
from cdb.report import ReportSettings, main, report

# method -> (eval_base values, eval values); deltas below are worked out by hand
RUNS = {
    "contrastive": ({"toxicity/mean_toxicity": 0.0500, "faithfulness/faithfulness": 0.6000, "truthfulqa/mc1": 0.2300,
                     "bias/crows_stereo_share": 0.6200, "bias/stereoset_icat": 70.00},
                    {"toxicity/mean_toxicity": 0.0300, "faithfulness/faithfulness": 0.6500, "truthfulqa/mc1": 0.2400,
                     "bias/crows_stereo_share": 0.5800, "bias/stereoset_icat": 71.50}),
    "sft": ({"toxicity/mean_toxicity": 0.0500, "faithfulness/faithfulness": 0.6000},
            {"toxicity/mean_toxicity": 0.0450, "faithfulness/faithfulness": 0.5200}),
    "dpo": ({"toxicity/mean_toxicity": 0.0500, "faithfulness/faithfulness": 0.6000, "intelligibility/intelligible": 0.8000},
            {"toxicity/mean_toxicity": 0.0600, "faithfulness/faithfulness": 0.6100, "intelligibility/intelligible": 0.7500}),
}
EXPECTED_CELLS = {
    "contrastive": ["0.0300 (-0.0200)", "0.6500 (+0.0500)", "0.2400 (+0.0100)", "0.5800 (-0.0400)", "71.50 (+1.50)"],
    "sft": ["0.0450 (-0.0050)", "0.5200 (-0.0800)"],
    "dpo": ["0.0600 (+0.0100)", "0.6100 (+0.0100)", "0.7500 (-0.0500)"],
}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "mlartifacts").as_uri())
    now = int(time.time() * 1000)
    for i, (method, (base, tuned)) in enumerate(RUNS.items()):
        tags = {"cdb.method": method, "cdb.scale": "smol-135m"}
        run = client.create_run(experiment, run_name=f"smol-{method}", tags=tags, start_time=now + i)
        metrics = [Metric(f"eval_base/{k}", v, now, 0) for k, v in base.items()]
        metrics += [Metric(f"eval/{k}", v, now, 0) for k, v in tuned.items()]
        metrics.append(Metric("train/loss", 1.0, now, 1))
        metrics += [Metric("val/lm_loss", 3.0 - i, now, 5), Metric("val/pref_accuracy", 0.25 * (i + 1), now, 5)]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED")
    crashed = client.create_run(experiment, run_name="smol-crashed", tags={"cdb.method": "contrastive", "cdb.scale": "tiny"})
    client.set_terminated(crashed.info.run_id, "FAILED")
    return uri, client, experiment, crashed.info.run_id


def test_report_tables_plot_and_run(store, tmp_path, capsys):
    uri, client, experiment, crashed = store
    out = tmp_path / "report"
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs (3 with eval metrics)" in printed
    link = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?searchFilter=tags.cdb.kind%20%3D%20%27train%27"
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open {link}" in printed

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    tuned_table = md.split("## Base models")[0]
    for method, cells in EXPECTED_CELLS.items():
        row = next(line for line in tuned_table.splitlines() if line.startswith(f"| {method} | smol-135m |"))
        for cell in cells:
            assert cell in row, (method, cell, row)
            assert cell in html
        assert f"smol-{method}" in row
    # The validation metrics every method shares, in a section of their own.
    validation = md.split("## Validation")[1].split("##")[0]
    for i, method in enumerate(RUNS):
        assert f"| {method} | smol-135m | smol-{method} " in validation
        assert f"| {3.0 - i:.4f} | {0.25 * (i + 1):.4f} |" in validation
    assert "<h2>Validation (held-out sources, last validation)</h2>" in html and "0.7500</td>" in html
    # An unmeasured metric is a dash, not a zero; the base table holds the eval_base values.
    sft_row = next(line for line in tuned_table.splitlines() if line.startswith("| sft |"))
    assert sft_row.count("—") == 8
    assert "| 0.0500 | — | 0.6000 |" in md.split("## Base models")[1]
    # Green for better, red for worse, by each metric's direction (CrowS: closer to 0.5 is better).
    assert '<td class="better">0.0300 (-0.0200)</td>' in html and '<td class="worse">0.0600 (+0.0100)</td>' in html
    assert '<td class="better">0.5800 (-0.0400)</td>' in html
    # The run without eval metrics is listed, not dropped.
    assert "## Runs without eval metrics" in md and f"contrastive / tiny: run smol-crashed ({crashed[:8]}), status FAILED" in md
    assert html.count("<table>") == 3 and "smol-crashed" in html

    png = (out / "alignment_tax.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert 400 <= width <= 2000 and 300 <= height <= 2000 and len(png) > 10_000

    (report_run,) = client.search_runs([experiment], filter_string="tags.`cdb.method` = 'report'")
    assert report_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(report_run.info.run_id)} == {"report.md", "report.html", "alignment_tax.png"}

    # A second report, its settings from a file and --set, does not report on the first report run.
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump({"experiment": "sweep", "tracking_uri": uri, "output": str(tmp_path / "unused")}))
    assert main(["--config", str(path), "--set", f"output={tmp_path / 'again'}"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs (3 with eval metrics)" in printed
    link = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?searchFilter=tags.cdb.kind%20%3D%20%27train%27"
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open {link}" in printed
    assert (tmp_path / "again" / "report.md").is_file() and not (tmp_path / "unused").exists()


def test_empty_or_missing_experiment_exits_nonzero(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("empty")
    assert main(["--experiment", "empty", "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"cdb.report: experiment 'empty' has no runs to report in {uri}"
    assert main(["--experiment", "nope", "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 1
    assert "experiment 'nope' not found" in capsys.readouterr().err
    missing = tmp_path / "absent" / "mlflow.db"
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}", "--output", str(tmp_path / "r")]) == 1
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "r").exists()


def test_report_settings_are_documented():
    assert settings.undocumented(ReportSettings) == []


@pytest.mark.parametrize("args, message", [
    (["--output", "r"], "cdb.report: experiment: required; give --experiment or --set experiment=VALUE"),
    (["--experiment", "e", "--set", "outptu=r"],
     "cdb.report: unknown setting 'outptu'; known keys under '.': experiment, tracking_uri, output"),
])
def test_bad_settings_exit_2_naming_the_key(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == message
    assert list(tmp_path.iterdir()) == []


def test_the_training_runs_filter_selects_exactly_the_training_runs(tmp_path):
    """A training run, an evaluation run, a sweep's parent and its report: the documented filter keeps the first."""
    from cdb import sweep, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = sweep.ensure_parent({}, uri, "exp", ["tiny"], ["sft"], echo=lambda _: None)
    trained = tracking.create_run(uri, "exp", "tiny-sft", {}, {tracking.TAG_KIND: tracking.TRAIN_RUN,
                                                               tracking.TAG_METHOD: "sft", tracking.TAG_PARENT_RUN: parent.id})
    trained.finish("FINISHED")
    with tracking.open_run(uri, "exp", "eval-gpt2", {}, {tracking.TAG_METHOD: tracking.EVAL_RUN}):
        pass
    result = report("exp", tmp_path / "report", uri)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("exp").experiment_id
    assert len(client.search_runs([experiment])) == 4
    found = client.search_runs([experiment], filter_string=tracking.TRAINING_RUNS_FILTER)
    assert [r.info.run_id for r in found] == [trained.id]
    # The report run is not nested among the training runs, and holds the report's files.
    report_run = client.get_run(result["run_id"])
    assert tracking.TAG_PARENT_RUN not in report_run.data.tags
    assert {a.path for a in client.list_artifacts(result["run_id"])} == {"report.md", "report.html", "alignment_tax.png"}
