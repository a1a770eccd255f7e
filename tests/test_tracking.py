"""cdb.tracking, the one door to MLflow: open_run's lifecycle, the tag and metric-prefix contract, lineage.

Every test runs against a real sqlite MLflow store in tmp_path and reads back through MlflowClient.
"""

import ast
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cdb import tracking
from cdb.data.lineage import DIGEST_HEX, dataset_identity
from cdb.data.records import embedded_dataset_path, load_records

PACKAGE = Path(tracking.__file__).resolve().parent


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# --- open_run -----------------------------------------------------------------------------------


def test_open_run_finishes_with_its_params_tags_metrics_and_artifacts(uri, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with tracking.open_run(uri, "exp", "a-run", {"lr": 0.5, "steps": 3}, {tracking.TAG_METHOD: "sft"}) as run:
        run.log_metrics({tracking.metric_key(tracking.PREFIX_EVAL, "toxicity/mean"): 0.25}, step=7)
        run.log_params({"late": "yes"})
        run.set_tags({tracking.TAG_SCALE: "tiny"})
        run.log_artifact(note, "notes")
        assert MlflowClient(uri).get_run(run.id).info.status == "RUNNING"
    client = MlflowClient(uri)
    got = client.get_run(run.id)
    assert got.info.status == "FINISHED" and got.info.run_name == "a-run"
    assert got.data.params == {"lr": "0.5", "steps": "3", "late": "yes"}
    assert got.data.tags[tracking.TAG_METHOD] == "sft" and got.data.tags[tracking.TAG_SCALE] == "tiny"
    assert got.data.tags[tracking.TAG_COMMIT] == tracking.git_commit()
    (point,) = client.get_metric_history(run.id, "eval/toxicity/mean")
    assert (point.value, point.step) == (0.25, 7)
    assert [a.path for a in client.list_artifacts(run.id, "notes")] == ["notes/note.txt"]
    assert client.get_experiment(got.info.experiment_id).name == "exp"


def test_open_run_marks_the_run_failed_and_reraises(uri):
    with pytest.raises(ValueError, match="bad data"), tracking.open_run(uri, "exp", "doomed") as run:
        run.log_metrics({"train/loss": 1.0}, step=1)
        raise ValueError("bad data")
    got = MlflowClient(uri).get_run(run.id)
    assert got.info.status == "FAILED" and got.data.metrics == {"train/loss": 1.0}


def test_attach_with_resume_sets_running_and_refuses_a_deleted_run(uri):
    run = tracking.open_run(uri, "exp", "parent")
    run.finish("KILLED")
    client = MlflowClient(uri)
    assert client.get_run(run.id).info.status == "KILLED"
    tracking.attach(uri, run.id).set_tags({"a": "b"})  # attaching alone leaves the status
    assert client.get_run(run.id).info.status == "KILLED"
    assert tracking.attach(uri, run.id, resume=True).id == run.id
    assert client.get_run(run.id).info.status == "RUNNING"
    client.delete_run(run.id)
    with pytest.raises(LookupError, match="deleted"):
        tracking.attach(uri, run.id, resume=True)


def test_a_training_jobs_run_is_opened_continued_and_finished(uri, tmp_path):
    """start_job_run / finish_job_run, the resumable run of cdb.train, on the same door; its record
    is a typed RunRecord in run.json."""
    from cdb.config import resolve

    (tmp_path / "config.yaml").write_text("scale: {name: tiny}\n")
    config = resolve(sets=[f"tracking.uri={uri}", "tracking.experiment=exp", "tracking.run_name=tiny-sft",
                           f"train.output_dir={tmp_path}"])
    record = tracking.training_record(config, {"records": 7})
    assert record.run_id is None and record.tags[tracking.TAG_SCALE] == "tiny"
    assert record.params["records"] == "7" and record.params["scale.name"] == "tiny"
    assert "train.output_dir" not in record.params and record.tags["cdb.train.output_dir"] == str(tmp_path)
    record = tracking.start_job_run(record, tmp_path)
    client = MlflowClient(uri)
    got = client.get_run(record.run_id)
    assert got.info.status == "RUNNING" and got.data.params == dict(record.params)
    assert [a.path for a in client.list_artifacts(record.run_id)] == ["config.yaml"]
    assert tracking.finish_job_run(record, tmp_path, "KILLED")
    assert tracking.RunRecord.read(tmp_path) == record
    assert tracking.start_job_run(record, tmp_path).run_id == record.run_id  # a rerun: the same run, running again
    assert client.get_run(record.run_id).info.status == "RUNNING"
    assert tracking.finish_job_run(record, tmp_path, "FINISHED")
    assert client.get_run(record.run_id).info.status == "FINISHED"


def test_metrics_spooled_while_the_server_is_down_replay_into_the_existing_run_by_sync(uri, tmp_path, monkeypatch):
    """A run that exists, a server that then stops answering: the worker's logger spools every step (a
    warning, no error), `python -m cdb.sync` replays them into that run and empties the spool."""
    from cdb import sync
    from cdb.config import resolve
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "config.yaml").write_text("scale: {name: tiny}\n")
    config = resolve(sets=[f"tracking.uri={uri}", "tracking.experiment=exp", f"train.output_dir={tmp_path}"])
    record = tracking.start_job_run(tracking.training_record(config, {}), tmp_path)
    record.write(tmp_path)  # run.json, as cdb.train keeps it
    down = tracking.RunLogger(f"http://127.0.0.1:{free_port()}", record.run_id, 0, tmp_path / tracking.SPOOL_FILE)
    for step in (1, 2, 3):
        down.log_metrics({"train/loss": 1.0 / step}, step)
    assert [entry["step"] for entry in tracking.read_spool(tmp_path / tracking.SPOOL_FILE, record.run_id)] == [1, 2, 3]
    assert sync.main([str(tmp_path)]) == 0
    history = MlflowClient(uri).get_metric_history(record.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert not (tmp_path / tracking.SPOOL_FILE).exists()
    assert sync.main([str(tmp_path)]) == 0 and len(MlflowClient(uri).get_metric_history(record.run_id, "train/loss")) == 3


def test_a_run_record_that_is_not_ours_is_named(tmp_path):
    (tmp_path / tracking.RUN_FILE).write_text(json.dumps({"run_id": "x", "colour": "blue"}))
    with pytest.raises(ValueError, match=f"{tmp_path / tracking.RUN_FILE}: not a cdb run record"):
        tracking.RunRecord.read(tmp_path)


def test_metrics_under_a_prefix():
    metrics = {"eval/toxicity/mean": 0.1, "eval_base/toxicity/mean": 0.3, "train/loss": 2.0, "evaluation": 1.0}
    assert tracking.metrics_under(metrics, tracking.PREFIX_EVAL) == {"toxicity/mean": 0.1}
    assert tracking.metrics_under(metrics, tracking.PREFIX_EVAL_BASE) == {"toxicity/mean": 0.3}
    assert tracking.metrics_under(metrics, tracking.PREFIX_TRAIN) == {"loss": 2.0}


# --- the contract is kept by constants, not by matching strings ---------------------------------

# The modules that write or read runs through the door. (train.py joins the list once its
# literal "cdb.scale", "cdb.method", "mlflow.parentRunId" and "train/..." use the constants.)
CONTRACT_USERS = ("eval/__init__.py", "report.py", "sweep.py", "sync.py", "train.py", "loop.py")


def _strings_outside_docstrings(tree: ast.AST) -> list[str]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _contract_literal(text: str) -> bool:
    tags = {value for name, value in vars(tracking).items() if name.startswith("TAG_")}
    prefixes = (tracking.PREFIX_TRAIN, tracking.PREFIX_EVAL, tracking.PREFIX_EVAL_BASE)
    return (text in tags or text in prefixes
            or text in ("cdb.", "cdb.sweep.")  # heads of f"cdb.{prefix}.model", f"cdb.sweep.{point}"
            or text.startswith(tuple(f"{p}/" for p in prefixes)))


@pytest.mark.parametrize("module", CONTRACT_USERS)
def test_tags_and_metric_prefixes_come_from_the_constants(module):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    assert [s for s in _strings_outside_docstrings(tree) if _contract_literal(s)] == []


def test_the_contract_check_sees_the_old_literals():
    old = 'TUNED = "eval/"\nrun_tag = {"cdb.method": "report"}\nkey = f"cdb.{prefix}.model"\n'
    assert [s for s in _strings_outside_docstrings(ast.parse(old)) if _contract_literal(s)] == ["eval/", "cdb.method", "cdb."]


def test_only_the_tracking_module_imports_mlflow():
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importers.append(path.relative_to(PACKAGE).as_posix())
    assert set(importers) == {"tracking.py"}


# --- lineage ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _only_dataset_input(uri: str, run_id: str):
    (given,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
    return given.dataset


def test_the_embedded_data_is_a_dataset_input_identified_by_its_card(uri):
    records, _ = load_records("")
    card_path = embedded_dataset_path().parent / "card.json"
    card = json.loads(card_path.read_text())
    with tracking.open_run(uri, "exp", "tiny-contrastive") as run:
        digest = run.log_training_data(dataset_identity("", "train", records))
        run.log_training_data(dataset_identity("", "train", records))  # again, as on --resume: still one input
    dataset = _only_dataset_input(uri, run.id)
    assert digest == dataset.digest == _sha256(card_path)[:DIGEST_HEX]
    assert dataset.name == card["dataset"] and dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": embedded_dataset_path().resolve().as_uri(), "card": card_path.resolve().as_uri()}
    profile = json.loads(dataset.profile)
    assert profile["records"] == card["counts"]["records"] == len(records)
    assert profile["negatives_by_type"] == card["counts"]["negatives_by_type"]
    assert profile["negatives_by_type"] == dict(Counter(n.type for r in records for n in r.negatives))


def _user_file(tmp_path: Path, lines: int) -> Path:
    path = tmp_path / "data" / "mine.jsonl"
    path.parent.mkdir()
    path.write_text("".join(embedded_dataset_path().read_text().splitlines(keepends=True)[:lines]))
    return path


def test_user_data_without_a_card_is_identified_by_its_file(uri, tmp_path):
    path = _user_file(tmp_path, 12)
    records, _ = load_records(str(path))
    with tracking.open_run(uri, "exp", "mine") as run:
        run.log_training_data(dataset_identity(str(path), "train", records))
    dataset = _only_dataset_input(uri, run.id)
    assert dataset.digest == _sha256(path)[:DIGEST_HEX] and dataset.name == "mine.jsonl"
    profile = json.loads(dataset.profile)
    assert profile["records"] == len(records) == 12
    assert profile["negatives"] == sum(profile["negatives_by_type"].values()) == sum(len(r.negatives) for r in records)
    assert profile["negatives_by_type"] == dict(Counter(n.type for r in records for n in r.negatives))


def test_a_card_that_counts_other_records_is_not_the_datas_identity(uri, tmp_path):
    path = _user_file(tmp_path, 12)  # cut from the embedded data, beside that data's card
    (path.parent / "card.json").write_text((embedded_dataset_path().parent / "card.json").read_text())
    records, _ = load_records(str(path))
    with tracking.open_run(uri, "exp", "cut") as run:
        run.log_training_data(dataset_identity(str(path), "train", records))
    dataset = _only_dataset_input(uri, run.id)
    assert dataset.digest == _sha256(path)[:DIGEST_HEX] and "card" not in json.loads(dataset.source)
    assert json.loads(dataset.profile)["records"] == 12


def test_the_exported_models_location_is_recorded_without_copying_it(uri, tmp_path):
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"\0" * 64)
    with tracking.open_run(uri, "exp", "tiny-contrastive") as run:
        model_id = run.log_model_location(model_dir, step=5)
    client = MlflowClient(uri)
    got = client.get_run(run.id)
    assert got.data.tags[tracking.TAG_EXPORTED_MODEL] == model_dir.resolve().as_uri()
    (output,) = got.outputs.model_outputs
    assert (output.model_id, output.step) == (model_id, 5)
    model = client.get_logged_model(model_id)
    assert model.tags[tracking.TAG_EXPORTED_MODEL] == model_dir.resolve().as_uri()
    assert model.source_run_id == run.id and model.name == "tiny-contrastive" and str(model.status) == "READY"
    assert client.list_artifacts(run.id) == []
    stored = Path(model.artifact_location.removeprefix("file://"))
    assert not stored.exists() or not any(stored.rglob("*"))  # the weights stay where they are


def _system_metrics_logged(uri: str, client, monkeypatch, node: dict[str, str], interval_s: float) -> set[str]:
    """The metrics a run gets from `system_metrics` in a process with these Ray Train / torchrun variables."""
    for name in ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in node.items():
        monkeypatch.setenv(name, value)
    with tracking.open_run(uri, "exp") as run, tracking.system_metrics(uri, run.id, interval_s):
        pass  # shorter than an interval: the sample at the end is the one
    return set(client.get_run(run.id).data.metrics)


def test_system_metrics_are_sampled_once_per_node_and_can_be_off(uri, monkeypatch):
    client = MlflowClient(uri)
    wanted = {"cpu_utilization_percentage", "system_memory_usage_megabytes"}
    one_node = {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0"}
    for node in ({}, one_node):  # one process; the first of a node's ranks
        logged = _system_metrics_logged(uri, client, monkeypatch, node, 10)
        assert {f"system/{name}" for name in wanted} <= logged and all(k.startswith("system/") for k in logged)
    second_node = {"LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1"}
    logged = _system_metrics_logged(uri, client, monkeypatch, second_node, 10)
    assert {f"system/node1/{name}" for name in wanted} <= logged and all(k.startswith("system/node1/") for k in logged)
    assert _system_metrics_logged(uri, client, monkeypatch, {**one_node, "LOCAL_RANK": "1"}, 10) == set()
    assert _system_metrics_logged(uri, client, monkeypatch, one_node, 0) == set()


def test_runs_carry_mlflow_standard_tags_and_a_readable_default_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.open_run(uri, "exp", tracking.run_name("tiny", "dpo")) as run:
        pass
    got = MlflowClient(uri).get_run(run.id)
    scale, method, suffix = got.info.run_name.split("-")
    assert (scale, method, len(suffix)) == ("tiny", "dpo", 4)
    tags = got.data.tags
    assert tags[tracking.TAG_SOURCE_COMMIT] == tags[tracking.TAG_COMMIT] == tracking.git_commit()
    assert tags[tracking.TAG_USER] and tags[tracking.TAG_SOURCE_NAME] and tags[tracking.TAG_NOTE]


def test_the_command_line_tag_names_cdb_modules_and_masks_url_passwords():
    train = str(Path(tracking.__file__).parent / "train.py")
    tags = tracking.source_tags([train, "--scale", "tiny", "--tracking-uri", "https://me:s3cret@mlflow.example/x",
                                 "--set", "tracking.run_name=a b"])
    assert tags[tracking.TAG_SOURCE_NAME] == "python -m cdb.train"
    assert tags[tracking.TAG_NOTE] == ("python -m cdb.train --scale tiny --tracking-uri https://me:***@mlflow.example/x "
                                       "--set 'tracking.run_name=a b'")
    assert "s3cret" not in json.dumps(tags)
    assert tracking.source_tags(["/usr/bin/pytest", "-q"])[tracking.TAG_SOURCE_NAME] == "pytest"


def test_links_go_to_the_runs_table_or_the_run_in_mlflow_3s_ui(tmp_path):
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.runs_url(local, "7", tracking.TRAINING_RUNS_FILTER) == (
        "http://127.0.0.1:5000/#/experiments/7/runs?searchFilter=tags.cdb.kind%20%3D%20%27train%27&workflowType=machine_learning")
    assert tracking.run_url("https://me:pw@mlflow.example/", "7", "abc") == \
        "https://me:***@mlflow.example/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert tracking.runs_url(local, "7", view="sweep-abc") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=sweep-abc&workflowType=machine_learning")
    assert tracking.runs_url(local, "7", view="sweep-abc", charts=True) == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=sweep-abc&compareRunsMode=CHART"
        "&workflowType=machine_learning")
    with pytest.raises(ValueError, match="its own search filter"):
        tracking.runs_url(local, "7", tracking.TRAINING_RUNS_FILTER, view="sweep-abc")
    hint = tracking.ui_hint(local, "LINK")
    assert hint == f"{tracking.mlflow_executable()} ui --backend-store-uri {local} --host 127.0.0.1 --port 5000, then open LINK"
    assert tracking.ui_hint("http://mlflow:5000", "LINK") == "LINK"
    # The routes and the search parameter exist in the installed MLflow's UI.
    import mlflow

    bundle = "".join(p.read_text(errors="replace") for p in
                     (Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js").glob("*.js"))
    assert '"/experiments/:experimentId/runs"' in bundle and '"/experiments/:experimentId/runs/:runUuid"' in bundle
    assert '"searchFilter"' in bundle and "createHashRouter" in bundle
    assert 'get("workflowType")' in bundle and 'MACHINE_LEARNING="machine_learning"' in bundle
    # A saved view: its tag and URL parameter; MLflow reads it only when the URL holds none of the runs
    # page's search parameters (this list), and compareRunsMode and workflowType are not among them.
    assert f'"{tracking.VIEW_URL_PARAMETER}"' in bundle and f'"{tracking.VIEW_TAG_PREFIX}"' in bundle
    assert '["searchFilter","orderByKey","orderByAsc","startTime","lifecycleFilter","modelVersionFilter",' \
           '"datasetsFilter"]' in bundle and '"compareRunsMode"' in bundle
    ui_fields = max((json.loads(f) for f in re.findall(r'\["selectedColumns",[^\]]*\]', bundle)), key=len)
    state = tracking.comparison_view_state("", ["val/lm_loss"])
    assert set(state) - {"searchFilter"} <= set(ui_fields)  # the runs page's fields MLflow takes from a view
    # New experiments open on the runs table (MLflow 3's model-training kind), not the GenAI overview.
    experiment = MlflowClient(local).get_experiment(tracking.experiment_id(local, "exp"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_sweeps_comparison_view_shows_what_compares_methods(uri):
    """The saved view a sweep's link opens: the table's columns and the charts are the validation and
    headline metrics (base, tuned, change) of the sweep's training runs, never train/ (each method's own
    objective), and only its runs."""
    parent = tracking.open_run(uri, "exp", "sweep-1", {}, {tracking.TAG_METHOD: tracking.SWEEP_RUN})
    headline = [f"{prefix}/{name}" for name in tracking.HEADLINE_METRICS for prefix in ("eval_base", "eval", "delta")]
    for method in ("contrastive", "dpo"):
        with tracking.open_run(uri, "exp", f"tiny-{method}", {}, {tracking.TAG_KIND: tracking.TRAIN_RUN,
                               tracking.TAG_METHOD: method, tracking.TAG_PARENT_RUN: parent.id}) as run:
            run.log_metrics({"train/loss": 40.0, "system/cpu_utilization_percentage": 9.0, "val/lm_loss": 3.1,
                             "val/pref_accuracy/swap": 0.6, "eval/toxicity/mean_words": 20.0, **dict.fromkeys(headline, 0.1)}, 1)
            run.log_metrics({"val/pref_accuracy": 0.7}, 2)
    with tracking.open_run(uri, "exp", "eval", {}, {tracking.TAG_METHOD: tracking.EVAL_RUN}) as other:
        other.log_metrics({"eval/only_here": 1.0})
    experiment = tracking.experiment_id(uri, "exp")
    search = tracking.sweep_filter(parent.id)

    assert tracking.save_comparison_view(uri, experiment, "sweep-1", "sweep-1: methods compared", search) == "sweep-1"
    view = tracking.saved_view(uri, experiment, "sweep-1")
    assert view["name"] == "sweep-1: methods compared"
    state = view["state"]
    assert state["searchFilter"] == search
    compared = ["val/pref_accuracy", "val/lm_loss",
                "eval_base/toxicity/mean_toxicity", "eval/toxicity/mean_toxicity", "delta/toxicity/mean_toxicity",
                "eval_base/faithfulness/entity_precision_all", "eval/faithfulness/entity_precision_all",
                "delta/faithfulness/entity_precision_all"]
    columns = [f"metrics.`{k}`" for k in compared]
    assert state["selectedColumns"] == columns
    assert state["columnOrder"] == ["attributes.`Run Name`", *columns, "runDateAndNestInfo", "duration"]
    # Grouped by method (one scale here): a group's values are its runs' mean, one bar per method.
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "cdb.method"}]
    two_scales = tracking.comparison_view_state("", compared, scales=2)["groupBy"]["groupByKeys"]
    assert [key["groupByData"] for key in two_scales] == ["cdb.scale", "cdb.method"]
    # One bar chart per compared metric that differs between methods (not the base values), in the first section.
    charts = state["compareRunCharts"]
    assert [c["metricKey"] for c in charts] == [k for k in compared if not k.startswith("eval_base/")]
    assert {c["type"] for c in charts} == {"BAR"}
    [first, *rest] = state["compareRunSections"]
    assert {c["metricSectionId"] for c in charts} == {first["uuid"]} and first["display"] and state["isAccordionReordered"]
    # Every other metric's section, folded: the train/ section among them; nothing of the evaluation run.
    assert {s["name"] for s in rest} == {"train", "System metrics", "val/pref_accuracy", "eval/toxicity",
                                         "eval_base/toxicity", "eval_base/faithfulness"}
    assert not any(s["display"] for s in rest)
    # Saving again replaces the view (one tag per sweep).
    tracking.save_comparison_view(uri, experiment, "sweep-1", "renamed", search)
    tags = MlflowClient(uri).get_experiment(experiment).tags
    assert [k for k in tags if k.startswith(tracking.VIEW_TAG_PREFIX)] == [tracking.VIEW_TAG_PREFIX + "sweep-1"]
    assert tracking.saved_view(uri, experiment, "sweep-1")["name"] == "renamed"
    assert tracking.saved_view(uri, experiment, "none") is None


def test_a_local_store_moved_with_its_artifacts_still_reads_them(tmp_path):
    """A committed copy of a store (docs/results/) lies elsewhere than where its runs were logged."""
    import shutil

    logged = tmp_path / "made"
    logged.mkdir()
    (logged / "items.json").write_text('{"a": 1}')
    with tracking.open_run(f"sqlite:///{logged / 'mlflow.db'}", "exp", "r") as run:
        run.log_artifact(logged / "items.json", "eval")
    shutil.move(logged, tmp_path / "moved")
    uri = f"sqlite:///{tmp_path / 'moved' / 'mlflow.db'}"
    got = tracking.download_artifact(uri, run.id, "eval/items.json", tmp_path / "out")
    assert got is not None and got.read_text() == '{"a": 1}'
    assert tracking.download_artifact(uri, run.id, "eval/none.json", tmp_path / "out") is None


def test_the_ui_hint_names_the_mlflow_of_this_environment(monkeypatch, tmp_path):
    """After the README's set-up the environment is not activated: the hint calls its mlflow by path."""
    beside = Path(sys.executable).parent / "mlflow"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(beside.parent.parent.parent)  # the folder holding the environment, as the repository holds .venv
    assert tracking.mlflow_executable() == f"{beside.parent.parent.name}/bin/mlflow"
    monkeypatch.chdir(tmp_path)
    assert tracking.mlflow_executable() == str(beside)
    monkeypatch.setenv("PATH", str(beside.parent))  # activated
    assert tracking.mlflow_executable() == "mlflow"
