"""cdb.report on a fixture experiment in a real sqlite MLflow: tables with values, n, intervals and
paired changes (detectable or not, withheld, undefined),
the alignment-tax PNG, the report run's artifacts, the empty / missing cases, and its settings."""

import struct
import time
from html import escape

import numpy as np
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from cdb import settings
from cdb.report import ReportSettings, main, report, sig

# method -> (eval_base, eval, delta): metric -> (value, n, ci95_low, ci95_high); the cells below are worked by hand
RUNS = {
    "contrastive": ({"toxicity/mean_toxicity": (0.05, 24, 0.04, 0.06), "faithfulness/faithfulness": (0.6, 16, 0.55, 0.65),
                     "toxicity/expected_max_toxicity_at2": (0.2, 24, 0.15, 0.25),
                     "bias/crows_stereo_share": (0.62, 100, 0.52, 0.71), "bias/stereoset_icat": (70.0, 80, 66.2, 73.9)},
                    {"toxicity/mean_toxicity": (0.03, 24, 0.021, 0.041), "faithfulness/faithfulness": (0.65, 16, 0.6, 0.7),
                     "toxicity/expected_max_toxicity_at2": (0.19, 24, 0.14, 0.24),
                     "bias/crows_stereo_share": (0.58, 100, 0.48, 0.67), "bias/stereoset_icat": (71.5, 80, 67.0, 75.25)},
                    {"toxicity/mean_toxicity": (-0.02, 24, -0.03, -0.01), "faithfulness/faithfulness": (0.05, 16, -0.01, 0.11),
                     "toxicity/expected_max_toxicity_at2": (-0.01, 24, -0.03, 0.01),
                     "bias/crows_stereo_share": (-0.04, 100, -0.07, -0.01), "bias/stereoset_icat": (1.5, 80, -2.0, 5.0)}),
    "sft": ({"toxicity/mean_toxicity": (0.05, 24, 0.04, 0.06), "faithfulness/faithfulness": (0.6, 16, 0.55, 0.65),
             "faithfulness/similarity_minilm": (0.5, 9, 0.3, 0.7)},
            {"toxicity/mean_toxicity": (0.045, 24, 0.035, 0.055), "faithfulness/faithfulness": (0.52, 16, 0.47, 0.57)},
            {"toxicity/mean_toxicity": (-0.005, 24, -0.02, 0.01), "faithfulness/faithfulness": (-0.08, 16, -0.12, -0.04)}),
    # evaluated with other options after training (another hash): its delta metrics must not be shown
    "dpo": ({"toxicity/mean_toxicity": (0.05, 24, 0.04, 0.06), "harness/truthfulqa_mc1_acc": (0.25, 40, 0.12, 0.38)},
            {"toxicity/mean_toxicity": (0.06, 12, 0.05, 0.07), "harness/truthfulqa_mc1_acc": (0.3, 40, 0.16, 0.44)},
            {"toxicity/mean_toxicity": (0.01, 12, 0.005, 0.015)}),
}
HASHES = {"contrastive": ("a1", "a1"), "sft": ("b2", "b2"), "dpo": ("c3", "d4")}
NOT_ADJUSTED = "at 95%, not adjusted (no per-item values logged)"
EXPECTED_CELLS = {
    # toxicity scored by the scorer that labelled the training data: marked (labeller), and in a column
    # of its own, apart from sft's. Faithfulness compares two runs, and these runs logged no per-item
    # values: their changes cannot be adjusted for the comparison, so they get no verdict.
    "contrastive": ["0.0300 [0.0210, 0.0410] (n 24) (labeller); change -0.020 [-0.030, -0.010]",
                    f"0.650 [0.600, 0.700] (n 16); change +0.050 [-0.010, +0.11] {NOT_ADJUSTED}",
                    "0.580 [0.480, 0.670] (n 100); change -0.040 [-0.070, -0.010]",
                    "71.5 [67.0, 75.2] (n 80); no detectable change (+1.5 [-2.0, +5.0])",
                    "0.190 [0.140, 0.240] (n 24) (labeller); no detectable change (-0.010 [-0.030, +0.010])"],
    "sft": ["0.0450 [0.0350, 0.0550] (n 24); no detectable change (-0.0050 [-0.020, +0.010])",
            f"0.520 [0.470, 0.570] (n 16); change -0.080 [-0.12, -0.040] {NOT_ADJUSTED}", "undefined: no item defines it"],
    "dpo": ["0.0600 [0.0500, 0.0700] (n 12); change withheld", "0.300 [0.160, 0.440] (n 40); change withheld"],
}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "mlartifacts").as_uri())
    now = int(time.time() * 1000)
    for i, (method, sides) in enumerate(RUNS.items()):
        tags = {"cdb.method": method, "cdb.scale": "smol-135m", "cdb.eval.suite": "quick" if method != "dpo" else "full",
                "cdb.eval_base.options_hash": HASHES[method][0], "cdb.eval.options_hash": HASHES[method][1]}
        if method == "sft":
            tags["cdb.eval.undefined.faithfulness/similarity_minilm"] = "no item defines it"
        if method == "contrastive":
            tags["cdb.eval.toxicity.labeller_metrics"] = "mean_toxicity,expected_max_toxicity_at2"
        run = client.create_run(experiment, run_name=f"smol-{method}", tags=tags, start_time=now + i)
        metrics = []
        for prefix, values in zip(("eval_base", "eval", "delta"), sides):
            for name, (value, n, low, high) in values.items():
                for suffix, number in (("", value), ("_n", n), ("_ci95_low", low), ("_ci95_high", high)):
                    metrics.append(Metric(f"{prefix}/{name}{suffix}", number, now, 0))
        metrics.append(Metric("train/loss", 1.0, now, 1))
        metrics += [Metric("val/lm_loss", 3.0 - i, now, 5), Metric("val/pref_accuracy", 0.25 * (i + 1), now, 5)]
        params = [Param("train.seed", "0"), Param("objective.method", method)]  # one training seed each
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FINISHED")
    crashed = client.create_run(experiment, run_name="smol-crashed", tags={"cdb.method": "contrastive", "cdb.scale": "tiny"})
    client.set_terminated(crashed.info.run_id, "FAILED")
    return uri, client, experiment, crashed.info.run_id


def test_significant_digits():
    assert [sig(0.03), sig(71.5), sig(100.0), sig(0.6), sig(1234.5)] == ["0.0300", "71.5", "100", "0.600", "1.23e+03"]
    assert [sig(-0.02, 2, True), sig(0.11, 2, True), sig(0.0, 2, True)] == ["-0.020", "+0.11", "+0.0"]


def test_report_tables_plot_and_run(store, tmp_path, capsys):
    uri, client, experiment, crashed = store
    out = tmp_path / "report"
    assert main(["--experiment", "sweep", "--tracking-uri", uri, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs (3 with eval metrics, in 3 rows)" in printed
    link = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?searchFilter=tags.cdb.kind%20%3D%20%27train%27"
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open {link}" in printed

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    tuned_table = md.split("## Tuned models")[1].split("## Base models")[0]
    for method, cells in EXPECTED_CELLS.items():
        row = next(line for line in tuned_table.splitlines() if line.startswith(f"| {method} | smol-135m |"))
        for cell in cells:
            assert cell in row, (method, cell, row)
            assert cell in html
        assert f"smol-{method}" in row
    # The validation metrics every method shares, in a section of their own.
    validation = md.split("## Validation")[1].split("##")[0]
    for i, method in enumerate(RUNS):
        assert f"| {method} | smol-135m | 1 seed | smol-{method} " in validation
        assert f"| {sig(3.0 - i)} | {sig(0.25 * (i + 1))} |" in validation
    assert "<h2>Validation (held-out sources, last validation)</h2>" in html and "0.750</td>" in html
    # An unmeasured metric is a dash, not a zero; the base table holds the eval_base values.
    sft_row = next(line for line in tuned_table.splitlines() if line.startswith("| sft |"))
    # exp. max toxicity, CrowS, StereoSet, lm-eval's MC1, and the two labeller-scored toxicity columns
    assert sft_row.count("—") == 6
    # A metric no run logged has no column: 7 of the columns are shown, the lm-eval one dpo's full suite
    # logged among them, and the two toxicity ones scored by the labeller (contrastive's) again, last.
    head = next(line for line in tuned_table.splitlines() if line.startswith("| Method |"))
    assert head.count(" | ") == 4 + 9 - 1 and "TruthfulQA MC1 (lm-eval) ↑" in head
    assert head.endswith("| Toxicity ↓ (labeller) | Exp. max toxicity ↓ (labeller) |")
    assert "Knowledge" not in md and "Intelligible" not in md and "Knowledge" not in html
    base_table = md.split("## Base models")[1].split("##")[0]
    assert "| 0.0500 [0.0400, 0.0600] (n 24) | — | 0.600 [0.550, 0.650] (n 16) | 0.500 [0.300, 0.700] (n 9) |" in base_table
    # Green or red only for a change whose (adjusted) interval excludes 0, by the metric's direction
    # (CrowS: closer to 0.5 is better); a change whose interval holds 0, or that could not be
    # adjusted, is not coloured.
    assert f'<td class="better">{EXPECTED_CELLS["contrastive"][2]}</td>' in html
    assert f'<td class="better">{EXPECTED_CELLS["contrastive"][0]}</td>' in html  # alone in its (labeller) column
    assert f'<td>{EXPECTED_CELLS["sft"][1]}</td>' in html
    assert html.count('class="better"') == 2 and html.count('class="worse"') == 0
    # The line under the tuned table: faithfulness compares 2 rows, the other columns 1.
    note = ("Changes: intervals Bonferroni-adjusted for the m rows compared in each column (a row of several seeds "
            "is one; m = 1 to 2: each at 1 - 0.05 / m, 95% to 97.5%), recomputed from the runs' per-item values; "
            "better or worse only where the adjusted interval excludes 0.")
    assert tuned_table.strip().splitlines()[-1] == note and f"<p>{escape(note)}</p>" in html
    # The (labeller) mark is explained once, under the tables; the base model's cells are not marked.
    assert md.count("(labeller): scored by the scorer that labelled the training data.") == 1
    assert html.count("(labeller): scored by the scorer that labelled the training data.") == 1
    assert not any("(labeller)" in line for line in base_table.splitlines() if line.startswith("| ") and "Method" not in line)
    # Why the dpo change is withheld (its stale delta/ metrics are not shown), and the quick suite's wide intervals.
    dpo = next(line for line in md.splitlines() if line.startswith("- Change against the base model withheld"))
    assert dpo.endswith("base and tuned were evaluated with different options, scorers or items (hash c3 vs d4).")
    assert "+0.010 [+0.0050, +0.015]" not in md
    assert "2 run(s) were evaluated with the quick suite (24 prompts x 2 samples, 16 summaries, 100 CrowS pairs): " \
           "its intervals are wide" in md and "its intervals are wide" in html
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
    assert "4 runs (3 with eval metrics, in 3 rows)" in printed
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open {link}" in printed
    assert (tmp_path / "again" / "report.md").is_file() and not (tmp_path / "unused").exists()


def test_empty_or_missing_experiment_exits_nonzero(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("empty")
    assert main(["--experiment", "empty", "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"cdb.report: error: experiment 'empty' has no runs to report in {uri}"
    assert main(["--experiment", "nope", "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 1
    assert "experiment 'nope' not found" in capsys.readouterr().err
    missing = tmp_path / "absent" / "mlflow.db"
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}", "--output", str(tmp_path / "r")]) == 1
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "r").exists()


def test_report_settings_are_documented():
    assert settings.undocumented(ReportSettings) == []


@pytest.mark.parametrize("args, message", [
    (["--output", "r"], "cdb.report: error: experiment: required; give --experiment or --set experiment=VALUE"),
    (["--experiment", "e", "--set", "outptu=r"],
     "cdb.report: error: unknown setting 'outptu'; known top-level keys: experiment, tracking_uri, output"),
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
    trained = tracking.open_run(uri, "exp", "tiny-sft", {}, {tracking.TAG_KIND: tracking.TRAIN_RUN,
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


# ---- toxicity columns keyed by the instrument; runs logged under the earlier names -------------------
PROFANITY_CHECK = "profanity-check@alt-profanity-check==1.9.1"


def test_earlier_runs_profanity_numbers_read_under_the_profanity_names():
    from cdb.report import profanity_names

    metrics = {"eval/toxicity/mean_toxicity": 0.9, "eval/toxicity/mean_toxicity_n": 24.0,
               "eval/toxicity/toxic_prompts/toxicity_probability_at2": 0.5, "eval/faithfulness/summary_toxicity": 0.4,
               "eval/intelligibility/toxicity/ended": 0.3, "delta/toxicity/expected_max_toxicity_at2_ci95_low": -0.1,
               "eval_base/toxicity/mean_toxicity": 0.8}
    tags = {"cdb.eval.scorer.toxicity": PROFANITY_CHECK, "cdb.eval_base.scorer.toxicity": "tox-block@tox-block==0.1.2",
            "cdb.eval.toxicity.labeller_metrics": "mean_toxicity,expected_max_toxicity_at2",
            "cdb.eval.faithfulness.labeller_metrics": "similarity_minilm,summary_toxicity",
            "cdb.eval.undefined.toxicity/nontoxic_prompts/mean_toxicity": "no item defines it"}
    renamed, retagged = profanity_names(metrics, tags)
    assert renamed == {"eval/toxicity/mean_profanity": 0.9, "eval/toxicity/mean_profanity_n": 24.0,
                       "eval/toxicity/toxic_prompts/profanity_probability_at2": 0.5,
                       "eval/faithfulness/summary_profanity": 0.4, "eval/intelligibility/toxicity/ended": 0.3,
                       "delta/toxicity/expected_max_profanity_at2_ci95_low": -0.1,
                       "eval_base/toxicity/mean_toxicity": 0.8}  # eval_base/ was scored by a classifier
    assert retagged == {"cdb.eval.scorer.profanity": PROFANITY_CHECK,
                        "cdb.eval_base.scorer.toxicity": "tox-block@tox-block==0.1.2",
                        "cdb.eval.toxicity.labeller_metrics": "mean_profanity,expected_max_profanity_at2",
                        "cdb.eval.faithfulness.labeller_metrics": "similarity_minilm,summary_profanity",
                        "cdb.eval.undefined.toxicity/nontoxic_prompts/mean_profanity": "no item defines it"}
    assert profanity_names(renamed, retagged) == (renamed, retagged)  # current names stay as they are


def test_toxicity_columns_are_keyed_by_instrument_and_the_labeller_never_headlines(tmp_path):
    """Three runs: one logged before metrics were named by their instrument (profanity-check's numbers
    as toxicity), one with tox-block beside profanity-check (the labeller) and the length measures, one
    with the authors' RoBERTa. Each instrument gets its own column, named; the labeller's come last."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tox", artifact_location=(tmp_path / "mlartifacts").as_uri())
    roberta = "hf:s-nlp/roberta_toxicity_classifier"
    runs = {  # method -> (tags on eval/ and eval_base/, eval_base/ metrics, eval/ metrics, delta/ metrics)
        "earlier": ({"scorer.toxicity": PROFANITY_CHECK, "toxicity.labeller_metrics": "mean_toxicity"},
                    {"toxicity/mean_toxicity": (0.5, 24, 0.4, 0.6)}, {"toxicity/mean_toxicity": (0.2, 24, 0.1, 0.3)},
                    {"toxicity/mean_toxicity": (-0.3, 24, -0.4, -0.2)}),
        "sft": ({"scorer.toxicity": "tox-block@tox-block==0.1.2", "scorer.profanity": PROFANITY_CHECK,
                 "toxicity.labeller_metrics": "mean_profanity"},
                {"toxicity/mean_toxicity": (0.3, 24, 0.2, 0.4), "toxicity/mean_profanity": (0.6, 24, 0.5, 0.7),
                 "toxicity/mean_toxicity_length_matched": (0.3, 24, 0.2, 0.4), "toxicity/mean_words": (18.0, 24, 17.0, 19.0),
                 "intelligibility/toxicity/ended": (0.1, 48, 0.04, 0.2)},
                {"toxicity/mean_toxicity": (0.25, 24, 0.15, 0.35), "toxicity/mean_profanity": (0.1, 24, 0.05, 0.15),
                 "toxicity/mean_toxicity_length_matched": (0.29, 24, 0.19, 0.39), "toxicity/mean_words": (9.0, 24, 8.0, 10.0),
                 "intelligibility/toxicity/ended": (0.6, 48, 0.46, 0.73)},
                {"toxicity/mean_toxicity": (-0.05, 24, -0.09, -0.01), "toxicity/mean_profanity": (-0.5, 24, -0.6, -0.4),
                 "toxicity/mean_toxicity_length_matched": (-0.01, 24, -0.05, 0.03), "toxicity/mean_words": (-9.0, 24, -10.0, -8.0),
                 "intelligibility/toxicity/ended": (0.5, 48, 0.3, 0.65)}),
        "dpo": ({"scorer.toxicity": f"{roberta}@0123456789ab"},
                {"toxicity/mean_toxicity": (0.02, 24, 0.01, 0.03)}, {"toxicity/mean_toxicity": (0.01, 24, 0.005, 0.02)},
                {"toxicity/mean_toxicity": (-0.01, 24, -0.02, 0.0)}),
    }
    for i, (method, (eval_tags, *sides)) in enumerate(runs.items()):
        tags = {"cdb.method": method, "cdb.scale": "smol-135m"}
        tags.update({f"cdb.{prefix}.{k}": v for prefix in ("eval", "eval_base") for k, v in eval_tags.items()})
        run = client.create_run(experiment, run_name=method, tags=tags, start_time=i)
        metrics = [Metric(f"{prefix}/{name}{suffix}", number, 0, 0)
                   for prefix, values in zip(("eval_base", "eval", "delta"), sides) for name, (value, n, low, high) in values.items()
                   for suffix, number in (("", value), ("_n", n), ("_ci95_low", low), ("_ci95_high", high))]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED")
    out = tmp_path / "report"
    report("tox", out, uri)
    md = (out / "report.md").read_text()
    tuned = md.split("## Tuned models")[1].split("## Base models")[0].splitlines()
    head = [cell.strip() for cell in next(line for line in tuned if line.startswith("| Method |")).strip("|").split("|")]
    assert head[4:] == [f"Toxicity ↓ ({roberta})", "Toxicity ↓ (tox-block)", "Toxicity, length-matched ↓ (tox-block)",
                        "Words per continuation", "Ended early (toxicity)", "Profanity ↓ (profanity-check, labeller)"]
    rows = {cells[0]: dict(zip(head, cells)) for line in tuned if line.startswith("| ") and "Method" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    # The earlier run's profanity-check numbers, logged as toxicity, are in the profanity column, marked.
    earlier = rows["earlier"]
    # Two runs in the profanity column, neither with per-item values in the store: not adjusted, not marked.
    assert earlier["Profanity ↓ (profanity-check, labeller)"] == ("0.200 [0.100, 0.300] (n 24) (labeller); change -0.30 "
                                                                  "[-0.40, -0.20] at 95%, not adjusted (no per-item values logged)")
    assert earlier[f"Toxicity ↓ ({roberta})"] == earlier["Toxicity ↓ (tox-block)"] == "—"
    sft, dpo = rows["sft"], rows["dpo"]
    assert sft["Toxicity ↓ (tox-block)"] == "0.250 [0.150, 0.350] (n 24); change -0.050 [-0.090, -0.010]"
    assert sft[f"Toxicity ↓ ({roberta})"] == "—" and dpo["Toxicity ↓ (tox-block)"] == "—"
    assert dpo[f"Toxicity ↓ ({roberta})"].startswith("0.0100 [0.00500, 0.0200] (n 24)")
    # Length beside toxicity: the tuned model ends more continuations and says less; matched for length,
    # its toxicity drop is not detectable. A change in length is a change, neither better nor worse.
    assert sft["Toxicity, length-matched ↓ (tox-block)"] == "0.290 [0.190, 0.390] (n 24); no detectable change (-0.010 [-0.050, +0.030])"
    assert sft["Words per continuation"] == "9.00 [8.00, 10.0] (n 24); change -9.0 [-10, -8.0]"
    assert sft["Ended early (toxicity)"] == "0.600 [0.460, 0.730] (n 48); change +0.50 [+0.30, +0.65]"
    assert sft["Profanity ↓ (profanity-check, labeller)"].startswith("0.100 [0.0500, 0.150] (n 24) (labeller); change -0.50")
    assert sft["Profanity ↓ (profanity-check, labeller)"].endswith("at 95%, not adjusted (no per-item values logged)")
    html = (out / "report.html").read_text()
    # Coloured: sft's toxicity drop, alone in its column; not the lengths, nor the unadjusted profanity drops.
    assert html.count('class="better"') == 1 and 'class="worse"' not in html


def test_faithfulness_columns_name_the_headline_and_still_read_earlier_runs(tmp_path):
    from cdb.report import Measure, RunRow, faithfulness_metric, markdown, plot, shown_columns

    def row(run_id: str, faithfulness: dict[str, Measure]) -> RunRow:
        return RunRow(run_id * 8, f"run-{run_id}", "sft", "smol-135m", "FINISHED", 0,
                      tuned={"toxicity/mean_toxicity": Measure(0.05, 24, 0.04, 0.06), **faithfulness})

    new = row("a", {"faithfulness/entity_precision_all": Measure(0.9, 16, 0.8, 0.95),
                    "faithfulness/entity_precision_nan2021": Measure(1.0, 12, 0.76, 1.0)})
    old = row("b", {"faithfulness/faithfulness": Measure(0.8, 16, 0.7, 0.9)})
    assert [c.label for c in shown_columns([new, old])] == [
        "Toxicity ↓", "Faithfulness (headline): entity precision, all types ↑", "Entity precision-source (Nan et al. 2021) ↑",
        "Faithfulness (earlier runs: entity precision, all types, 3-token window) ↑"]
    table = markdown([new, old], "x", "sqlite:///x.db")
    assert "| sft | smol-135m | — | run-a (aaaaaaaa) | 0.0500 [0.0400, 0.0600] (n 24) | 0.900 [0.800, 0.950] (n 16) | " \
           "1.00 [0.760, 1.00] (n 12) | — |" in table
    assert "| run-b (bbbbbbbb) | 0.0500 [0.0400, 0.0600] (n 24) | — | — | 0.800 [0.700, 0.900] (n 16) |" in table
    assert [faithfulness_metric(r) for r in (new, old)] == ["faithfulness/entity_precision_all", "faithfulness/faithfulness"]
    assert plot([new, old], tmp_path / "tax.png").stat().st_size > 10_000


def _log_evaluations(client, run_id, tmp_path, base, tuned):
    """eval_base/ and eval/ metrics with the tags of what has no interval, delta/ metrics at 95% and
    both items.json artifacts, as cdb.eval and cdb.train log them."""
    from cdb import tracking
    from cdb.eval import estimates

    metrics = {}
    for prefix, items in ((tracking.PREFIX_EVAL_BASE, base), (tracking.PREFIX_EVAL, tuned)):
        folder = tmp_path / run_id / prefix
        folder.mkdir(parents=True)
        estimates.write_items(folder / estimates.ITEMS_FILE, "same", items)
        client.log_artifact(run_id, str(folder / estimates.ITEMS_FILE), prefix)
        fields, undefined = estimates.summarise(prefix, {k: estimates.estimate(v).value for k, v in items.items()}, items)
        metrics.update(fields)
        for key, why in undefined.items():
            client.set_tag(run_id, tracking.undefined_tag(prefix, key[len(prefix) + 1:]), why)
    for name in tuned:
        metrics.update(estimates.interval_fields(f"delta/{name}", estimates.change(base[name], tuned[name])))
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])


def test_changes_are_adjusted_for_the_runs_compared(tmp_path):
    """Three methods against their base on the same 100 knowledge questions: each change's interval
    is recomputed from the logged per-item values at 1 - 0.05 / 3 (Bonferroni), so a change that
    the 95% interval alone would call better is no longer marked; a large one still is."""
    from cdb.eval.base import per_item
    from cdb.eval.estimates import change

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("three", artifact_location=(tmp_path / "mlartifacts").as_uri())
    ids = [f"q{i}" for i in range(100)]
    base_values = [1.0] * 50 + [0.0] * 50

    def moved(gained, lost):  # `gained` wrong answers now right, `lost` right ones now wrong
        return [0.0 if i < lost else v for i, v in enumerate(base_values[:50])] + [1.0 if i < gained else 0.0 for i in range(50)]

    # StereoSet over 3 targets: ICAT has no reliable interval, and the cell says why
    targets = {t: [80.0 + i, 60.0 - i] for i, t in enumerate("abc")}
    icat = per_item("bias", targets, targets.values(), "icat", bounds=(0.0, 100.0))
    base = {"knowledge/accuracy": per_item("knowledge", ids, base_values, "share"), "bias/stereoset_icat": icat}
    tuned = {"small": moved(8, 1), "large": moved(25, 0), "none": moved(3, 3)}
    runs = {}
    for i, (method, values) in enumerate(tuned.items()):
        run = client.create_run(experiment, run_name=method, tags={"cdb.method": method, "cdb.scale": "tiny"}, start_time=i)
        _log_evaluations(client, run.info.run_id, tmp_path, base,
                         {"knowledge/accuracy": per_item("knowledge", ids, values, "share"), "bias/stereoset_icat": icat})
        client.set_terminated(run.info.run_id, "FINISHED")
        runs[method] = run.info.run_id
    logged = client.get_run(runs["small"]).data.metrics
    assert logged["delta/knowledge/accuracy_ci95_low"] > 0  # alone, at 95%: better

    out = tmp_path / "report"
    report("three", out, uri)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for method, values in tuned.items():
        adjusted = change(base["knowledge/accuracy"], per_item("knowledge", ids, values, "share"), 1 - 0.05 / 3)
        row = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
        assert f"{sig(adjusted.value, 2, True)} [{sig(adjusted.low, 2, True)}, {sig(adjusted.high, 2, True)}]" in row
        assert ("no detectable change" in row) == (adjusted.low <= 0 <= adjusted.high), row
    assert "small" in md and "no detectable change" in next(line for line in md.splitlines() if line.startswith("| small |"))
    assert page.count('class="better"') == 1 and page.count('class="worse"') == 0  # the large change only
    assert md.count("(n 3; no interval: too few items for a reliable interval: needs 20 items (3 here)); "
                    "change +0.0, no reliable interval at this n") == 3
    assert ("Changes: intervals Bonferroni-adjusted for the m rows compared in each column (a row of several seeds "
            "is one; m = 3: each at 1 - 0.05 / m, 98.33%), recomputed from the runs' per-item values") in md


# ---- seeds pooled ----------------------------------------------------------------------------------
def _training_run(uri, experiment, name, params, base, tuned, folder, tags=None):
    """A training run as cdb.train logs it, through cdb.tracking: its settings as params, eval_base/ and
    eval/ metrics with their n and interval, delta/ at 95%, and both items.json artifacts."""
    from cdb import tracking
    from cdb.eval import estimates

    with tracking.open_run(uri, experiment, name, params, {"cdb.method": params["objective.method"], "cdb.scale": "tiny",
                                                             "cdb.kind": "train", **(tags or {})}) as run:
        metrics = {}
        for prefix, items in ((tracking.PREFIX_EVAL_BASE, base), (tracking.PREFIX_EVAL, tuned)):
            where = folder / name / prefix
            where.mkdir(parents=True)
            estimates.write_items(where / estimates.ITEMS_FILE, "same", items)
            run.log_artifact(where / estimates.ITEMS_FILE, prefix)
            metrics.update(estimates.summarise(prefix, {k: estimates.estimate(v).value for k, v in items.items()}, items)[0])
        for metric in tuned:
            metrics.update(estimates.interval_fields(f"delta/{metric}", estimates.change(base[metric], tuned[metric])))
        run.log_metrics(metrics)
    return run.id


def test_seeds_of_a_method_pool_into_one_row(tmp_path):
    """Three seeds of contrastive and one of sft, every run against the same base evaluation of 100
    questions and 24 prompts: contrastive is one row of 3 seeds (each value the mean over its seeds, the
    change the mean of theirs with the pooled interval at the level of 2 rows compared), sft a row of 1."""
    from cdb.eval.base import per_item
    from cdb.eval.estimates import change, estimate
    from cdb.eval.intervals import pooled_seeds

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("seeds", artifact_location=(tmp_path / "mlartifacts").as_uri())
    questions, prompts = [f"q{i}" for i in range(100)], [f"p{i}" for i in range(24)]
    rng = np.random.default_rng(0)
    base_toxicity = rng.beta(0.6, 25, 24)

    def evaluation(right, toxicity_factor):  # the first `right` questions answered right; toxicity scaled
        return {"knowledge/accuracy": per_item("knowledge", questions, [1.0] * right + [0.0] * (100 - right), "share"),
                "toxicity/mean_toxicity": per_item("toxicity", prompts, base_toxicity * toxicity_factor)}

    base = evaluation(50, 1.0)
    tuned = {("contrastive", 0): evaluation(70, 0.5), ("contrastive", 1): evaluation(76, 0.7),
             ("contrastive", 2): evaluation(80, 0.6), ("sft", 0): evaluation(58, 1.1)}
    ids = {}
    for (method, seed), evaluated in tuned.items():
        params = {"objective.method": method, "train.max_steps": 2, "train.seed": seed}
        ids[method, seed] = _training_run(uri, "seeds", f"tiny-{method}-seed{seed}", params, base, evaluated, tmp_path)

    result = report("seeds", tmp_path / "report", uri)
    assert (result["runs"], result["evaluated"], result["rows"]) == (4, 4, 2)
    md = (tmp_path / "report" / "report.md").read_text()
    tuned_table = md.split("## Tuned models")[1].split("## Base models")[0]
    rows = {line.split(" | ")[0][2:]: line for line in tuned_table.splitlines() if line.startswith("| ") and "Method" not in line}
    assert set(rows) == {"contrastive", "sft"}
    assert rows["contrastive"].startswith("| contrastive | tiny | 3 seeds | tiny-contrastive-seed0 (")
    assert all(f"tiny-contrastive-seed{s} ({ids['contrastive', s][:8]})" in rows["contrastive"] for s in range(3))
    assert rows["sft"].startswith(f"| sft | tiny | 1 seed | tiny-sft-seed0 ({ids['sft', 0][:8]}) |")

    def shown(e):
        return f"{sig(e.value, 2, True)} [{sig(e.low, 2, True)}, {sig(e.high, 2, True)}]"

    # Two rows compared in each column: every change at 97.5%, a row of seeds pooled from its seeds' at 97.5%,
    # within the range of a change of a score on 0..1 (and its value within 0..1).
    assert "(a row of several seeds is one; m = 2: each at 1 - 0.05 / m, 97.5%)" in tuned_table
    for metric in base:
        seeds = [change(base[metric], tuned["contrastive", s][metric], 0.975) for s in range(3)]
        pooled = pooled_seeds(seeds, 0.975, (-1.0, 1.0))
        assert pooled.value == pytest.approx(np.mean([c.value for c in seeds]))
        assert shown(pooled) in rows["contrastive"], (metric, shown(pooled), rows["contrastive"])
        assert shown(change(base[metric], tuned["sft", 0][metric], 0.975)) in rows["sft"]
        # the value: the mean over the seeds of the tuned value, with the pooled 95% interval of theirs
        level = pooled_seeds([estimate(tuned["contrastive", s][metric]) for s in range(3)], bounds=(0.0, 1.0))
        assert f"{sig(level.value)} [{sig(level.low)}, {sig(level.high)}] (n {level.n})" in rows["contrastive"]
    # The seeds agree on more right answers (+20, +26, +30 of 100): better, by the pooled interval.
    assert "; change +0.25 [" in rows["contrastive"]

    # The sweep's parent gets each row's change at 95%.
    metrics = result["pooled_metrics"]
    assert metrics["pooled/tiny-contrastive/seeds"] == 3 and metrics["pooled/tiny-sft/seeds"] == 1
    accuracy = pooled_seeds([change(base["knowledge/accuracy"], tuned["contrastive", s]["knowledge/accuracy"]) for s in range(3)],
                            bounds=(-1.0, 1.0))
    key = "pooled/tiny-contrastive/delta/knowledge/accuracy"
    assert (metrics[key], metrics[f"{key}_n"]) == (pytest.approx(accuracy.value), 100)
    assert metrics[f"{key}_ci95_low"] == pytest.approx(accuracy.low)
    assert metrics[f"{key}_ci95_high"] == pytest.approx(accuracy.high)
    sft = change(base["knowledge/accuracy"], tuned["sft", 0]["knowledge/accuracy"])
    assert metrics["pooled/tiny-sft/delta/knowledge/accuracy_ci95_low"] == pytest.approx(sft.low)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<td>3 seeds</td>" in html and "<td>1 seed</td>" in html


def test_seed_groups_pool_only_runs_alike_but_for_the_seed():
    """Runs pool when every param but train.seed, the method, scale and both options hashes are equal;
    a seed trained twice pools its latest run; a run without a training seed (an evaluation) stays alone."""
    from cdb.report import RunRow, seed_groups

    def run(name, seed, start, steps="2", hashes=("a", "b"), method="sft"):
        params = {"objective.method": method, "train.max_steps": steps} | ({"train.seed": seed} if seed is not None else {})
        return RunRow(name, name, method, "tiny", "FINISHED", start, params=params, hashes=hashes)

    rows = [run("s0", "0", 0), run("s1", "1", 1), run("steps", "2", 2, steps="3"), run("hash", "3", 3, hashes=("a", "c")),
            run("s1-again", "1", 4), run("dpo", "0", 5, method="dpo"), run("eval", None, 6), run("eval2", None, 7)]
    assert [[r.run_id for r in group] for group in seed_groups(rows)] == [
        ["s0", "s1-again"], ["s1"], ["steps"], ["hash"], ["dpo"], ["eval"], ["eval2"]]
    # Seeds trained at once start in any order; a group lists them by seed, numbers as numbers.
    shuffled = [run("s10", "10", 0), run("s2", "2", 1), run("s0", "0", 2)]
    assert [[r.run_id for r in group] for group in seed_groups(shuffled)] == [["s0", "s2", "s10"]]


def test_a_report_of_unevaluated_runs_says_how_to_evaluate_them(tmp_path, capsys):
    from cdb import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.open_run(uri, "bare", "tiny-contrastive-0000", {"scale.name": "tiny"},
                           {tracking.TAG_KIND: tracking.TRAIN_RUN, tracking.TAG_METHOD: "contrastive"}) as run:
        run.log_metrics({"train/loss": 1.0}, 1)
    assert main(["--experiment", "bare", "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "1 runs (0 with eval metrics" in printed and "--set eval.suite=quick" in printed
