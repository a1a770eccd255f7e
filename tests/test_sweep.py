"""`python -m cdb.sweep`: the scheduling rules on their own, then real sweeps of tiny points through
`python -m cdb.train` on a local Ray cluster into a sqlite MLflow store."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
from pathlib import Path
import sys
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from mlflow.tracking import MlflowClient

from cdb import config as cfg
from cdb import settings, sweep, tracking
from cdb.methods import METHODS
from cdb.sweep import Point, admit, last_error_line

TINY = Point("tiny", "contrastive", cpus=2, gpus=0)


# --- rules --------------------------------------------------------------------------------------


def test_admit_one_at_a_time_by_default():
    pending = [TINY, Point("tiny", "sft", 2, 0)]
    assert admit(pending, [], {"CPU": 64, "GPU": 8}, parallel=1) == [TINY]
    assert admit(pending[1:], [TINY], {"CPU": 64, "GPU": 8}, parallel=1) == []


def test_admit_in_parallel_only_while_the_cluster_holds_the_points():
    a, b, c = Point("a", "m", 2, 0), Point("b", "m", 2, 0), Point("c", "m", 8, 8)
    assert admit([a, b, c], [], {"CPU": 4, "GPU": 0}, parallel=3) == [a, b]          # c needs GPUs: never fits
    assert admit([b], [a], {"CPU": 3, "GPU": 0}, parallel=2) == []                 # 2 + 2 > 3 CPUs
    assert admit([c, a], [], {"CPU": 16, "GPU": 8}, parallel=2) == [c, a]
    assert admit([c, a], [b], {"CPU": 16, "GPU": 8}, parallel=3) == [c, a]
    assert admit([c, a], [b], {"CPU": 10, "GPU": 8}, parallel=3) == [c]            # a waits for room
    # A point no cluster of this size can hold starts alone (the trainer says what it needs), later
    # points may fill the room meanwhile.
    assert admit([c, b], [a], {"CPU": 4, "GPU": 0}, parallel=2) == [b]
    assert admit([c], [], {"CPU": 4, "GPU": 0}, parallel=2) == [c]
    assert admit([b], [a], {}, parallel=2) == []                                   # resources unknown: wait


def test_the_last_error_line_is_the_trainers_own():
    lines = ["[cdb] step 1/2", "Traceback (most recent call last):", "  File x", "ValueError: boom",
             "cdb.train: error: scale 'llama2-13b' needs 16 GPUs (16 workers x 1), the Ray cluster has 0", "(raylet) noise"]
    assert last_error_line(lines, 4).startswith("scale 'llama2-13b' needs 16 GPUs")
    assert last_error_line(lines[:4], 1) == "ValueError: boom"
    assert last_error_line(["nothing useful"], 1) == "python -m cdb.train exited with code 1"
    assert last_error_line([], -9) == "killed by SIGKILL"


def test_plan_resolves_aliases_and_needs():
    points = sweep.sweep_points(["tiny", "13b", "llama2-13b"], ["contrastive", "contrastive"], ["train.max_steps=2"])
    assert [p.name for p in points] == ["tiny-contrastive", "llama2-13b-contrastive"]
    assert (points[1].cpus, points[1].gpus) == (16, 16)
    assert sweep.sweep_points(["tiny"], ["contrastive"], ["scale.num_workers=1"])[0].cpus == 1


def test_seeds_are_points_of_their_own_with_the_seed_after_the_training_keys(tmp_path):
    """--seeds N: N points per (scale, method), train.seed = the training keys' seed + i, given after
    them so that the point's own wins; every point shares the sweep's base evaluations."""
    from cdb.train import config_from_args, parse_args

    points = sweep.sweep_points(["tiny"], ["sft", "contrastive"], ["train.seed=5"], seeds=2)
    assert [p.name for p in points] == ["tiny-sft-seed5", "tiny-sft-seed6", "tiny-contrastive-seed5", "tiny-contrastive-seed6"]
    assert [p.name for p in sweep.sweep_points(["tiny"], ["sft"])] == ["tiny-sft"]  # one seed: the names as before
    cmd = sweep.train_command(points[1], tmp_path / points[1].name, "sqlite:///x.db", "e", "PARENT", ["train.seed=5"], False)
    config = config_from_args(parse_args(cmd[3:]))
    assert (config.train.seed, config.objective.method, config.tracking.run_name) == (6, "sft", "tiny-sft-seed6")
    assert config.train.base_eval_dir == str(tmp_path / sweep.BASE_EVALS)
    assert config.eval.seed == 0  # the evaluation's seed is not the training seed
    other = sweep.train_command(points[0], tmp_path / points[0].name, "sqlite:///x.db", "e", "P", [], False, "shared")
    assert f"train.base_eval_dir={Path('shared').resolve()}" in other  # sweeps naming one folder share it


def test_a_methods_options_go_to_its_own_points_only(tmp_path):
    overrides = ["objective.dpo.beta=0.5", "objective.contrastive.alpha=2", "objective.label_smoothing=0.1"]
    points = {p.method: p for p in sweep.sweep_points(["tiny"], ["dpo", "contrastive", "sft"], overrides)}
    for method, expected in (("dpo", ["objective.dpo.beta=0.5"]), ("contrastive", ["objective.contrastive.alpha=2"]),
                             ("sft", [])):
        cmd = sweep.train_command(points[method], tmp_path, "sqlite:///x.db", "e", "P", overrides, False)
        given = [cmd[i + 1] for i, part in enumerate(cmd) if part == "--set" and cmd[i + 1].startswith("objective.")]
        assert given == [*expected, "objective.label_smoothing=0.1"], method


# --- settings -----------------------------------------------------------------------------------


def test_sweep_settings_are_documented():
    assert settings.undocumented(sweep.SweepSettings) == []


def test_methods_are_the_objectives_choices():
    assert set(sweep.methods_known()) >= {"contrastive", "sft", "dpo", "unlikelihood", "cda"}


def test_config_file_flags_and_set_split_into_sweep_and_training_keys(tmp_path):
    training = {"optim": {"betas": [0.8, 0.9], "lr": 1e-4}, "scale": {"activation_checkpointing": True},
                "data": {"max_records": 16}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"scales": ["tiny", "13b"], "methods": ["sft"], "parallel": 3, **training}))
    args = sweep.parse_args(["--config", str(path), "--scales", "tiny", "--max-steps", "2", "--fresh",
                             "--set", "parallel=2", "--set", "optim.lr=0.5"])
    settings_, overrides = sweep.settings_from_args(args)
    assert settings_ == sweep.SweepSettings(scales=("tiny",), methods=("sft",), parallel=2, fresh=True)
    # Every point gets the file's training sections, then the flags' and --set's training keys.
    training_file = tmp_path / "training.yaml"
    training_file.write_text(yaml.safe_dump(training))
    expected = cfg.resolve(config_file=str(training_file), flags={"train.max_steps": 2, "optim.lr": 0.5}, scale="gpt2")
    assert cfg.resolve(sets=list(overrides), scale="gpt2") == expected
    assert overrides[-2:] == ("train.max_steps=2", "optim.lr=0.5")
    command = sweep.train_command(Point("gpt2", "sft", 1, 1), tmp_path / "p", "sqlite:///m.db", "e", "PARENT",
                                  overrides, resume=False)
    assert [command[i + 1] for i, a in enumerate(command) if a == "--set"] == [
        *overrides, "tracking.parent_run_id=PARENT", f"train.base_eval_dir={tmp_path / sweep.BASE_EVALS}"]


@pytest.mark.parametrize("sets, message", [
    (["optimm.lr=1"], "--set optimm.lr=1: unknown key 'optimm.lr'; sweep keys: scales, methods"),
    (["paralel=2"], "unknown key 'paralel'"),
    (["parallel=0"], "parallel: must be >= 1, got 0"),
    (["seeds=0"], "seeds: must be >= 1, got 0"),
    (["train.base_eval_dir=/x"], "train.base_eval_dir: the sweep sets train.base_eval_dir for each point itself; use "
                                 "the sweep's key 'base_eval_dir'"),
    (["methods="], "methods: give at least one training method"),
    (["train.output_dir=/x"],
     "train.output_dir: the sweep sets train.output_dir for each point itself; use the sweep's key 'output_dir'"),
])
def test_bad_settings_name_the_key(sets, message):
    with pytest.raises(cfg.ConfigError) as info:
        sweep.resolve_settings(None, ["scales=tiny", "methods=contrastive", *sets])
    assert message in str(info.value)


def test_unknown_key_in_the_config_file_names_the_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("scales: [tiny]\nmethods: [sft]\noptimizer: {lr: 1}\n")
    with pytest.raises(cfg.ConfigError, match=f"{path}: unknown key 'optimizer'"):
        sweep.resolve_settings(str(path))


def run_sweep(args, cwd, timeout, ray_address=None) -> subprocess.CompletedProcess:
    """The sweep in a session of its own, on a local cluster of its own or joining the one at
    `ray_address`; past `timeout` that whole group is killed (its points die with it by their
    parent-death signal), then the test fails with the output so far."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    cmd = [sys.executable, "-m", "cdb.sweep", *args]
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"cdb.sweep took over {timeout} s:\n{stdout[-6000:]}\n{stderr[-3000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


@pytest.mark.integration
@pytest.mark.parametrize("args, message", [
    (["--scales", "tiny,huge", "--methods", "contrastive"], "unknown scale 'huge'"),
    (["--scales", "tiny", "--methods", "contrastive,magic"], "unknown method 'magic'"),
    (["--scales", "tiny", "--methods", "contrastive", "--set", "objective.method=sft"], "the sweep sets objective.method"),
    (["--scales", "tiny", "--methods", "contrastive", "--set", "optim.nope=1"], "optim.nope"),
    (["--scales", "tiny", "--methods", "contrastive", "--max-steps", "-1"], "train.max_steps: must be >= 0, got -1"),
    (["--methods", "contrastive"], "scales: give at least one scale preset"),
])
def test_bad_names_exit_2_before_anything_starts(tmp_path, args, message):
    out = tmp_path / "sweep"
    proc = run_sweep([*args, "--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                     tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()
    assert "Ray cluster" not in proc.stdout


# --- real sweeps --------------------------------------------------------------------------------


def runs_by_name(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs: dict[str, list] = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


TINY_SEEDS = ["tiny-contrastive-seed0", "tiny-contrastive-seed1"]
GPT2_SEEDS = ["gpt2-contrastive-seed0", "gpt2-contrastive-seed1"]


@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory, ray_address):
    """--seeds 2 of two scales with a small evaluation (4 CrowS pairs, 4 StereoSet items): tiny's two
    seeds train at once; gpt2's need a GPU the cluster lacks: each recorded as failed, the sweep goes
    on and reports (the evaluation is bias alone: offline, gpt2's toxicity classifier would be refused
    before its missing GPU, exit 2, not 4)."""
    tmp = tmp_path_factory.mktemp("sweep")
    uri, out = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "sweep"
    args = ["--scales", "tiny,gpt2", "--methods", "contrastive", "--seeds", "2", "--max-steps", "2", "--parallel", "2",
            "--set", "scale.num_workers=1", "--set", "data.max_records=16", "--set", "eval.suite=quick",
            "--set", "eval.tasks=[bias]", "--set", "eval.limit=4", "--experiment", "sw", "--tracking-uri", uri,
            "--output-dir", str(out)]
    proc = run_sweep(args, tmp, timeout=300, ray_address=ray_address)
    return SimpleNamespace(tmp=tmp, uri=uri, out=out, args=args, proc=proc, ray_address=ray_address)


@pytest.mark.integration
def test_sweep_records_a_failed_point_goes_on_and_reports(seeds_sweep):
    proc, out, uri = seeds_sweep.proc, seeds_sweep.out, seeds_sweep.uri
    assert proc.returncode == 1, proc.stdout[-6000:] + proc.stderr[-3000:]
    for number, name in enumerate(TINY_SEEDS + GPT2_SEEDS, 1):
        assert f"point {number}/4 {name}: {'FINISHED' if name in TINY_SEEDS else 'FAILED'}" in proc.stdout

    state = json.loads((out / "sweep.json").read_text())
    assert state["status"] == "FAILED"
    parent_id = state["parent_run_id"]
    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags["cdb.method"] == "sweep" and parent.info.status == "FAILED"
    assert parent.data.params["scales"] == "tiny,gpt2" and parent.data.params["methods"] == "contrastive"
    runs = runs_by_name(uri, "sw")
    for name in GPT2_SEEDS:
        gpt2 = state["points"][name]
        assert gpt2["status"] == "FAILED" and gpt2["exit_code"] == 4 and "needs 1 GPUs" in gpt2["error"]
        assert parent.data.tags[f"cdb.sweep.{name}"].startswith("failed: scale 'gpt2' needs 1 GPUs")
    for name in TINY_SEEDS:
        tiny = state["points"][name]
        assert tiny["status"] == "FINISHED" and (out / name / "model" / "config.json").is_file()
        assert parent.data.tags[f"cdb.sweep.{name}"] == f"finished: run {tiny['run_id']}"
        [child] = runs[name]
        assert child.info.run_id == tiny["run_id"] and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.params["train.max_steps"] == "2" and child.data.tags["cdb.tracking.parent_run_id"] == parent_id

    assert "tiny" in (out / "report" / "report.md").read_text()
    report_id = client.get_run(parent_id).data.tags["cdb.sweep.report"]
    assert report_id == state["report"]["run_id"] and "mlflow.parentRunId" not in client.get_run(report_id).data.tags
    logged = {a.path for a in client.list_artifacts(report_id)}
    assert {"report.md", "report.html", "alignment_tax.png"} <= logged
    assert not client.list_artifacts(parent_id, "report")  # the files once, on the report run
    assert "sweep.json" in {a.path for a in client.list_artifacts(parent_id)}


@pytest.mark.integration
def test_a_sweep_of_two_seeds_reports_and_logs_their_pooled_change(seeds_sweep):
    """The report pools the two seeds into one row, "2 seeds", the change the mean of the runs' own;
    the parent run holds it."""
    from cdb.report import sig

    out, state = seeds_sweep.out, json.loads((seeds_sweep.out / "sweep.json").read_text())
    client = MlflowClient(seeds_sweep.uri)
    runs = {name: client.get_run(state["points"][name]["run_id"]) for name in TINY_SEEDS}
    parent = client.get_run(state["parent_run_id"]).data.metrics

    metric = "delta/bias/crows_stereo_share"
    own = [run.data.metrics[metric] for run in runs.values()]
    head = "pooled/tiny-contrastive"
    assert parent[f"{head}/seeds"] == 2 and parent[f"{head}/{metric}_n"] == 4
    assert parent[f"{head}/{metric}"] == pytest.approx(sum(own) / 2)
    low, high = parent[f"{head}/{metric}_ci95_low"], parent[f"{head}/{metric}_ci95_high"]
    assert low <= min(own) and max(own) <= high  # the seeds' spread is inside the pooled interval

    md = (out / "report" / "report.md").read_text()
    tuned = md.split("## Tuned models")[1].split("## Base models")[0]
    [row] = [line for line in tuned.splitlines() if line.startswith("| contrastive |")]
    names = ", ".join(f"{name} ({run.info.run_id[:8]})" for name, run in runs.items())
    assert row.startswith(f"| contrastive | tiny | 2 seeds | {names} |")
    # One row per column: the change's interval is the pooled 95% one the parent holds.
    assert f"{sig(parent[f'{head}/{metric}'], 2, True)} [{sig(low, 2, True)}, {sig(high, 2, True)}])" in row \
        or f"change {sig(parent[f'{head}/{metric}'], 2, True)} [{sig(low, 2, True)}, {sig(high, 2, True)}]" in row
    assert "Changes: one row per column, so each interval is its 95% one" in tuned


@pytest.mark.integration
def test_rerun_reuses_the_parent_and_skips_finished_points(seeds_sweep):
    out, uri = seeds_sweep.out, seeds_sweep.uri
    first = json.loads((out / "sweep.json").read_text())
    assert all(first["points"][name]["status"] == "FINISHED" for name in TINY_SEEDS), seeds_sweep.proc.stdout[-3000:]
    proc = run_sweep(seeds_sweep.args, seeds_sweep.tmp, timeout=170, ray_address=seeds_sweep.ray_address)
    assert proc.returncode == 1, proc.stdout[-6000:] + proc.stderr[-3000:]
    again = json.loads((out / "sweep.json").read_text())
    assert again["parent_run_id"] == first["parent_run_id"]
    for name in TINY_SEEDS:
        assert f"{name}: skipped, finished earlier" in proc.stdout
        assert f"[{name}]" not in proc.stdout  # no cdb.train output for it
        assert again["points"][name]["run_id"] == first["points"][name]["run_id"]
    assert all(again["points"][name]["attempts"] == 2 for name in GPT2_SEEDS)  # failed points are tried again
    runs = runs_by_name(uri, "sw")
    assert all(len(runs[name]) == 1 for name in TINY_SEEDS)
    assert sum(1 for rs in runs.values() for r in rs if r.data.tags.get("cdb.method") == "sweep") == 1


METHOD_NAMES = ["contrastive", "sft", *sorted(set(METHODS) - {"contrastive", "sft"})]
"""Every method; the method and its closest baseline first (they run at once)."""


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory, ray_address):
    """The sweep a method comparison in MLflow starts from: tiny runs of the five methods, two at once
    (one worker each, so two fit the 2-CPU cluster), validated at every one of their 3 steps."""
    tmp = tmp_path_factory.mktemp("methods")
    uri, out = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "sweep"
    proc = run_sweep(["--scales", "tiny", "--methods", ",".join(METHOD_NAMES), "--max-steps", "3", "--parallel", "2",
                      "--set", "scale.num_workers=1", "--set", "data.max_records=16", "--set", "train.eval_every=1",
                      "--tracking-uri", uri, "--output-dir", str(out)],
                     tmp, timeout=480, ray_address=ray_address)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    state = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(state["experiment"]).experiment_id
    training = {name: client.get_run(point["run_id"]) for name, point in state["points"].items()}
    return SimpleNamespace(proc=proc, out=out, uri=uri, state=state, client=client, experiment=experiment,
                           training=training)


@pytest.mark.integration
def test_sweep_of_five_methods_two_at_once_finishes_with_a_child_run_each(method_sweep):
    state, client = method_sweep.state, method_sweep.client
    assert state["status"] == "FINISHED" and state["experiment"] == "cdb-sweep"
    points = state["points"]
    assert {k: v["status"] for k, v in points.items()} == {f"tiny-{m}": "FINISHED" for m in METHOD_NAMES}
    # The first two ran at once: each started before the other ended.
    a, b = points["tiny-contrastive"], points["tiny-sft"]
    assert a["started"] <= b["ended"] and b["started"] <= a["ended"]
    for name, run in method_sweep.training.items():
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == state["parent_run_id"]
        assert run.data.tags["cdb.method"] == name.split("-", 1)[1] and run.data.params["scale.num_workers"] == "1"
        assert (method_sweep.out / name / "model" / "config.json").is_file()
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    assert (method_sweep.out / "report" / "report.md").is_file()


def readme_training_runs_filter() -> str:
    """The filter the MLflow guide tells users to type into MLflow's search box."""
    text = (REPO / "docs" / "mlflow.md").read_text()
    [found] = set(re.findall(r"filter with `([^`]+)`", text))
    return found


@pytest.mark.integration
def test_the_training_runs_compare_across_methods_in_mlflow(method_sweep):
    """What a user comparing methods in MLflow's UI reads: the README's filter gives exactly the training
    runs (not the sweep parent or the report), each with a readable name, MLflow's source tags, the
    shared validation metrics at every step, and params that are the settings once each."""
    client, state, training = method_sweep.client, method_sweep.state, method_sweep.training
    found = client.search_runs([method_sweep.experiment], filter_string=readme_training_runs_filter())
    assert sorted(r.info.run_id for r in found) == sorted(run.info.run_id for run in training.values())
    for name, run in training.items():
        assert run.info.run_name == name
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "python -m cdb.train" and tags["mlflow.source.git.commit"] == tags["cdb.commit"]
        assert tags["mlflow.user"] and tags["mlflow.note.content"].startswith("python -m cdb.train --scale tiny")
        for metric in ("val/lm_loss", "val/pref_accuracy"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3], (name, metric)
    # Params: every setting once under its config key, nothing per-run (paths, URIs, names, parent ids).
    settings_ = set(cfg.resolve(scale="tiny").flat())
    params = [set(run.data.params) for run in training.values()]
    assert all(p == params[0] for p in params)
    assert not params[0] & set(tracking.RUN_SPECIFIC_KEYS)
    assert params[0] - settings_ == {"zero_stage", "records", "rejected_records", "parameters", "parameters_lm"}
    differing = {k for k in params[0] if len({run.data.params[k] for run in training.values()}) > 1}
    assert differing == {"objective.method", "parameters"}  # what the methods are, and the contrast head
    # TRL's names for DPO's quantities.
    assert {"train/rewards/margins", "train/logps/chosen"} <= set(training["tiny-dpo"].data.metrics)
    # The report: a run of its own outside the training runs, named by the sweep's parent.
    report = client.get_run(state["report"]["run_id"])
    assert report.data.tags["cdb.method"] == "report" and "mlflow.parentRunId" not in report.data.tags
    assert client.get_run(state["parent_run_id"]).data.tags["cdb.sweep.report"] == report.info.run_id
    # The printed link opens this sweep's training runs, as its saved view shows them: validation metrics.
    link = (f"http://127.0.0.1:5000/#/experiments/{method_sweep.experiment}/runs?viewStateShareKey=sweep-"
            f"{state['parent_run_id']}&workflowType=machine_learning")
    assert f"then open {link}\n" in method_sweep.proc.stdout
    view = tracking.saved_view(method_sweep.uri, method_sweep.experiment, f"sweep-{state['parent_run_id']}")
    assert view["state"]["searchFilter"] == tracking.sweep_filter(state["parent_run_id"])
    assert [c["metricKey"] for c in view["state"]["compareRunCharts"]] == ["val/pref_accuracy", "val/lm_loss"]


def test_the_summary_links_to_a_view_of_the_sweep_that_compares_methods(store, tmp_path):
    """The sweep's closing lines: links into MLflow's model-training UI that open a view of the sweep's
    training runs saved on its experiment, showing the validation metrics, not train/loss."""
    uri, _ = store
    parent = tracking.open_run(uri, "summary", "sweep-x", {}, {tracking.TAG_METHOD: tracking.SWEEP_RUN})
    points = sweep.sweep_points(["tiny"], ["contrastive", "sft"])
    state = {"status": "FINISHED", "experiment": "summary", "parent_run_id": parent.id, "tracking_uri": uri,
             "name": "sweep-x", "points": {}}
    for point in points:
        with tracking.open_run(uri, "summary", point.name, {}, {tracking.TAG_KIND: tracking.TRAIN_RUN,
                               tracking.TAG_PARENT_RUN: parent.id, tracking.TAG_METHOD: point.method}) as run:
            run.log_metrics({"train/loss": 1.0, "val/lm_loss": 2.0, "val/pref_accuracy": 0.5}, 3)
        state["points"][point.name] = {"status": "FINISHED", "run_id": run.id}
    printed = []
    settings_, overrides = sweep.settings_from_args(sweep.parse_args(
        ["--scales", "tiny", "--methods", "contrastive,sft", "--tracking-uri", uri, "--output-dir", str(tmp_path)]))
    sweep.Sweep(settings_, overrides, points, echo=printed.append).summary(state, {p.name: i + 1 for i, p in enumerate(points)}, 2)

    links = re.findall(r"MLflow(?: charts)?: .*?(http\S+)", printed[-1])
    experiment = tracking.experiment_id(uri, "summary")
    assert links == [tracking.runs_url(uri, experiment, view=f"sweep-{parent.id}"),
                     tracking.runs_url(uri, experiment, view=f"sweep-{parent.id}", charts=True)]
    assert all("workflowType=machine_learning" in link for link in links)
    view = tracking.saved_view(uri, experiment, f"sweep-{parent.id}")
    assert view["name"] == "sweep-x: methods compared"
    assert view["state"]["searchFilter"] == tracking.sweep_filter(parent.id)
    assert "metrics.`val/lm_loss`" in view["state"]["selectedColumns"]
    assert not any("train/" in column for column in view["state"]["selectedColumns"])


@pytest.mark.integration
def test_each_method_logs_its_own_loss_terms_and_settings(method_sweep):
    client = method_sweep.client
    expected = {"contrastive": ["train/loss_ce", "train/loss_contrast"], "sft": ["train/loss_ce"], "cda": ["train/loss_ce"],
                "unlikelihood": ["train/loss_ce", "train/loss_unlikelihood"],
                "dpo": ["train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                        "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected"]}
    for name, run in method_sweep.training.items():
        method = run.data.tags["cdb.method"]
        assert run.data.params["objective.method"] == method
        assert run.data.params["objective.cda.attributes"] == "['gender', 'race', 'religion']"  # what a cda run swapped
        for metric in ["train/loss", *expected[method]]:
            assert len(client.get_metric_history(run.info.run_id, metric)) == 3, (name, metric)
        has_head = (method_sweep.out / name / "model" / "contrast_head.safetensors").exists()
        assert ("train/loss_contrast" in run.data.metrics) == has_head == (method == "contrastive"), name
    # DPO starts at log 2 (policy == reference) and moves.
    history = client.get_metric_history(method_sweep.training["tiny-dpo"].info.run_id, "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] != losses[0]


@pytest.mark.integration
def test_each_training_run_records_its_data_model_and_system_metrics(method_sweep):
    """Lineage where MLflow's UI shows it (Datasets: the training data; Models: the exported model,
    referenced, not copied) and MLflow's system metrics, sampled while the run trained (and as it ended)."""
    client = method_sweep.client
    digests = set()
    for name, run in method_sweep.training.items():
        [given] = run.inputs.dataset_inputs
        assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "training"
        digests.add(given.dataset.digest)
        location = (method_sweep.out / name / "model").as_uri()
        assert run.data.tags["cdb.exported_model"] == location
        [output] = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run.info.run_id and model.tags["cdb.exported_model"] == location
        assert not client.list_artifacts(run.info.run_id, "model")  # the weights stay where they are
        assert float(run.data.params["tracking.system_metrics_interval"]) > 0  # on by default
        for metric in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            assert client.get_metric_history(run.info.run_id, metric), (name, metric)
    assert len(digests) == 1 and digests != {""}  # the same data, identified by its digest


def test_admit_counts_what_other_jobs_hold():
    a, b, big = Point("a", "m", 2, 0), Point("b", "m", 2, 0), Point("big", "m", 8, 8)
    total = {"CPU": 4, "GPU": 0}
    # Another sweep holds 3 of the 4 CPUs: nothing starts, even with nothing of this sweep running.
    assert admit([a], [], total, parallel=2, available={"CPU": 1, "GPU": 0}) == []
    assert admit([a], [], total, parallel=2, available={"CPU": 2, "GPU": 0}) == [a]
    # This sweep's own running point counts against the free CPUs, claimed yet or not: never more than fits.
    assert admit([b], [a], total, parallel=2, available={"CPU": 4, "GPU": 0}) == [b]
    assert admit([b], [a], total, parallel=2, available={"CPU": 3, "GPU": 0}) == []
    # A point no cluster of this size holds still starts alone, for the trainer to say what it needs.
    assert admit([big], [], total, parallel=2, available={"CPU": 0, "GPU": 0}) == [big]


def test_each_period_has_its_own_folder():
    from datetime import datetime, timezone
    from pathlib import Path

    base = Path("/shared/sweeps/weekly")
    wednesday = datetime(2026, 12, 2, 23, 30, tzinfo=timezone.utc)
    assert sweep.period_folder(base, "week", wednesday) == base / "2026-W49"
    assert sweep.period_folder(base, "week", datetime(2027, 1, 1, tzinfo=timezone.utc)) == base / "2026-W53"  # ISO year
    assert sweep.period_folder(base, "day", wednesday) == base / "2026-12-02"
    assert sweep.period_folder(base, "", wednesday) == base


def test_a_sweep_with_a_period_works_in_this_periods_folder(tmp_path):
    from datetime import datetime, timezone

    settings_, overrides = sweep.resolve_settings(sets=["scales=tiny", "methods=sft", f"output_dir={tmp_path}",
                                                        "period=week"])
    runner = sweep.Sweep(settings_, overrides, sweep.sweep_points(["tiny"], ["sft"], overrides))
    assert runner.output_dir == tmp_path / datetime.now(timezone.utc).strftime("%G-W%V")


def test_a_period_named_by_the_scheduler_is_used_whatever_the_clock_says(tmp_path):
    """k8s/sweep/launch.sh fixes the ISO week when it launches (Sunday) and passes it: a retry that starts
    after Monday 00:00 continues that week's sweep, in that week's folder, and prunes by weeks."""
    from datetime import datetime, timezone

    monday = datetime(2026, 12, 7, 0, 30, tzinfo=timezone.utc)  # 2026-W50 by the clock
    assert sweep.period_folder(tmp_path, "2026-W49", monday) == tmp_path / "2026-W49"
    assert sweep.period_folder(tmp_path, "week", monday) == tmp_path / "2026-W50"
    args = sweep.parse_args(["--scales", "tiny", "--methods", "sft", "--output-dir", str(tmp_path), "--period", "2026-W49"])
    settings_, overrides = sweep.settings_from_args(args)
    assert settings_.period == "2026-W49"
    runner = sweep.Sweep(settings_, overrides, sweep.sweep_points(["tiny"], ["sft"], overrides))
    assert runner.output_dir == tmp_path / "2026-W49"
    assert sweep.period_kind("2026-W49") == "week" and sweep.period_kind("2026-12-02") == "day"


@pytest.mark.parametrize("sets, message", [
    (["period=month"], "period: 'month' is not one of"),
    (["period=2025-W53"], "period: '2025-W53' is not one of"),  # 2025 has 52 ISO weeks
    (["period=2026-W5"], "period: '2026-W5' is not one of"),
    (["period=2026-13-01"], "period: '2026-13-01' is not one of"),
    (["keep_periods=-1"], "keep_periods: must be >= 0"),
])
def test_bad_period_settings_name_the_key(sets, message):
    with pytest.raises(cfg.ConfigError, match=message):
        sweep.resolve_settings(sets=["scales=tiny", "methods=sft", *sets])


def test_old_periods_lose_their_checkpoints_only(tmp_path):
    import fcntl

    def sweep_folder(name: str):
        folder = tmp_path / name
        for point in ("tiny-sft", "tiny-dpo"):
            (folder / point / "checkpoints" / "run-1" / "step_0000002").mkdir(parents=True)
            (folder / point / "model").mkdir()
            (folder / point / "run.json").write_text("{}")
        (folder / "report").mkdir()
        (folder / "sweep.json").write_text("{}")
        return folder

    folders = [sweep_folder(f"2026-W{week}") for week in (45, 46, 47, 48, 49)]
    (tmp_path / "notes" / "checkpoints").mkdir(parents=True)  # not a period folder: never touched
    with (folders[1] / sweep.LOCK_FILE).open("a") as held:  # a sweep still running in W46
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = sweep.prune_checkpoints(tmp_path, "week", 2, current=folders[-1])
    assert sorted(removed) == sorted(f / p / "checkpoints" for f in (folders[0], folders[2]) for p in ("tiny-sft", "tiny-dpo"))
    for folder in folders:
        assert (folder / "tiny-sft" / "model").is_dir() and (folder / "sweep.json").is_file()
    assert (folders[1] / "tiny-sft" / "checkpoints").is_dir()   # locked
    assert (folders[3] / "tiny-sft" / "checkpoints").is_dir()   # the newest 2 (W48 and this W49) keep theirs
    assert (folders[4] / "tiny-sft" / "checkpoints").is_dir()
    assert (tmp_path / "notes" / "checkpoints").is_dir()
    assert sweep.prune_checkpoints(tmp_path, "week", 0, current=folders[-1]) == []  # 0 keeps all


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from cdb import tracking

    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}", tracking


def test_a_spool_left_by_an_earlier_run_is_never_replayed_into_a_new_one(store, tmp_path):
    uri, tracking = store
    old = tracking.open_run(uri, "spool", "old", {}, {})
    new = tracking.open_run(uri, "spool", "new", {}, {})
    spool = tmp_path / tracking.SPOOL_FILE
    entry = {"step": 1, "timestamp": 1, "metrics": {"train/loss": 1.0}}
    spool.write_text(json.dumps({**entry, "run_id": old.id}) + "\n" + json.dumps({**entry, "run_id": new.id}) + "\n")
    assert tracking.read_spool(spool, new.id) == [{**entry, "run_id": new.id}]
    client = MlflowClient(tracking_uri=uri)
    assert tracking.replay_spool(client, new.id, spool) == 1
    assert [m.step for m in client.get_metric_history(new.id, "train/loss")] == [1]
    # The old run's entry stays in the spool, for its own run only.
    assert tracking.read_spool(spool, new.id) == []
    assert tracking.read_spool(spool, old.id) == [{**entry, "run_id": old.id}]
    assert client.get_metric_history(old.id, "train/loss") == []


def test_the_sweep_report_covers_its_own_parent_runs_children_only(store):
    from cdb.report import collect

    uri, tracking = store
    parents = [tracking.open_run(uri, "weekly", f"sweep-{i}", {}, {tracking.TAG_METHOD: tracking.SWEEP_RUN})
               for i in range(2)]
    for parent, method in zip(parents, ("sft", "dpo")):
        tracking.open_run(uri, "weekly", f"tiny-{method}", {},
                            {tracking.TAG_METHOD: method, tracking.TAG_SCALE: "tiny", tracking.TAG_PARENT_RUN: parent.id})
    assert [row.method for row in collect(uri, "weekly", parents[1].id)] == ["dpo"]
    assert sorted(row.method for row in collect(uri, "weekly")) == ["dpo", "sft"]
