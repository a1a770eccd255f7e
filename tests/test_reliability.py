"""Faults injected into real runs (Ray Train, DeepSpeed ZeRO-3, MLflow on CPU): what each costs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port, start_mlflow_server, stop_server

pytestmark = pytest.mark.integration  # every test runs cdb.train (Ray, DeepSpeed), some an mlflow server


def train_cmd(*args):
    return [sys.executable, "-m", "cdb.train", *args]


def env(ray_address=None):
    """A local Ray cluster of cdb.train's own (what these faults act on), or the one at `ray_address`."""
    e = {**os.environ, "PYTHONPATH": str(REPO)}
    e.pop("RAY_ADDRESS", None)
    if ray_address:
        e["RAY_ADDRESS"] = ray_address
    return e


class Watched:
    """A cdb.train process whose output is read line by line, so a test can act at a given step."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(train_cmd(*args), cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"never saw {text!r}:\n" + "".join(self.lines[-60:]))

    def finish(self, timeout=600):
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, "".join(self.lines)


def wait_for_checkpoint(run: Watched, out: Path, name: str, timeout=300):
    """Until Ray Train's checkpoint manager has registered checkpoint `name` of the run in `out`."""
    deadline = time.time() + timeout
    while not any(name in p.read_text() for p in out.glob("checkpoints/*/checkpoint_manager_snapshot.json")):
        assert time.time() < deadline and run.proc.poll() is None, "".join(run.lines[-40:])
        time.sleep(0.05)


def history(uri, metric="train/loss"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cdb").experiment_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0], sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, metric))


def test_unreachable_server_at_start_then_sync_creates_the_run(tmp_path):
    port = free_port()  # nothing listens there
    out = tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.run(train_cmd("--max-steps", "3", "--output-dir", str(out), "--tracking-uri", uri),
                          cwd=tmp_path, env={**env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # training went on
    assert f"python -m cdb.sync {out}" in proc.stdout + proc.stderr  # what to run once the server answers
    assert (out / "model" / "model.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["run_id"] is None
    spooled = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert spooled == [1, 2, 3]

    server = start_mlflow_server(tmp_path / "server.db", tmp_path / "artifacts", port)
    try:
        sync = subprocess.run([sys.executable, "-m", "cdb.sync", str(out)], cwd=tmp_path, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert sync.returncode == 0, sync.stderr
        run, losses = history(uri)
        assert [s for s, _ in losses] == [1, 2, 3]
        assert run.data.params["scale.name"] == "tiny" and run.data.tags["cdb.method"] == "contrastive"
    finally:
        stop_server(server)


def test_non_finite_loss_is_skipped_then_stops_with_the_loss_terms(tmp_path, ray_address):
    out = tmp_path / "run"
    proc = subprocess.run(train_cmd("--max-steps", "20", "--output-dir", str(out), "--set", "optim.lr=1e30",
                                    "--set", "train.max_failures=0", "--set", "train.max_nonfinite_in_row=3"),
                          cwd=tmp_path, env=env(ray_address), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cdb.train: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    last = errors[0]
    assert last.startswith("cdb.train: error: training failed: NonFiniteLoss: step ")
    assert "3 micro-batches in a row" in last and "loss_ce=" in last and "loss_contrast=" in last
    assert not (out / "model").exists()  # no model exported from a broken run


def test_hard_crash_while_checkpointing_every_step_resumes_from_a_complete_checkpoint(tmp_path):
    """Everything is SIGKILLed while a checkpoint is being written (one every step, so a save is
    almost always in flight); --resume must find the last complete one and finish the run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    run = Watched(["--max-steps", "12", "--output-dir", str(out), "--tracking-uri", uri,
                   "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2"], tmp_path)
    wait_for_checkpoint(run, out, "step_0000004")
    victims = [run.proc.pid, *(p.pid for p in psutil.Process(run.proc.pid).children(recursive=True))]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.finish()

    proc = subprocess.run(train_cmd("--output-dir", str(out), "--resume"), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed at step" in proc.stdout + proc.stderr
    finished, losses = history(uri)
    assert finished.info.status == "FINISHED"
    assert [s for s, _ in losses] == list(range(1, 13))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model").num_parameters() > 0


def test_a_failed_evaluation_exits_5_tagged_and_said_with_the_model_kept(tmp_path, ray_address):
    """Training succeeds, both evaluations fail (a prompt file whose line lacks its text, found only
    when the evaluation reads it): the run is kept and FINISHED, each failure is its tag and a summary
    line, and the command exits 5, not 0."""
    bad = tmp_path / "rtp.jsonl"
    bad.write_text('{"prompt": {"txt": "no text field"}}\n')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    proc = subprocess.run(train_cmd("--max-steps", "1", "--num-workers", "1", "--output-dir", str(out), "--tracking-uri", uri,
                                    "--set", "eval.suite=quick", "--set", "eval.tasks=toxicity", "--set", "eval.limit=1",
                                    "--set", f"eval.toxicity_data={bad}"),
                          cwd=tmp_path, env=env(ray_address), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 5, proc.stdout[-3000:] + proc.stderr[-3000:]
    why = f"EvalDataError: {bad}:line 1: prompt: missing field 'text'"
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("cdb.train: error:")]
    assert error == (f"cdb.train: error: evaluation failed: eval_base: {why}; eval: {why}; the model is exported; "
                     "the same command evaluates again")
    assert f"  FAILED:      eval/ ({why}); tag cdb.eval.failed" in proc.stdout
    finished, _ = history(uri)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["cdb.eval_base.failed"] == finished.data.tags["cdb.eval.failed"] == why
    assert not any(key.startswith(("eval/", "eval_base/", "delta/")) for key in finished.data.metrics)
    assert (out / "model" / "model.safetensors").is_file()
