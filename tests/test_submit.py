"""Cluster submission as a user does it: a real Ray head (`ray start --head`, from the venv) and a real
MLflow server on loopback, `ray job submit` with ray_jobs/runtime_env.yaml, and ray_jobs/submit.sh
passing MLFLOW_TRACKING_URI / HF_TOKEN from the caller's environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port

VENV_BIN = REPO / ".venv" / "bin"
RAY = VENV_BIN / "ray"
MLFLOW = VENV_BIN / "mlflow"
RUNTIME_ENV = REPO / "ray_jobs" / "runtime_env.yaml"
FAKE_TOKEN = "hf_cdbSubmitTestToken0001"

sys.path.insert(0, str(REPO / "ray_jobs"))
import runtime_env_json  # noqa: E402  (ray_jobs/ is scripts, not a package)


# --- without a cluster --------------------------------------------------------------------------


def test_runtime_env_yaml_has_the_fields_ray_knows_and_no_secrets():
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load(RUNTIME_ENV.read_text())
    assert spec["working_dir"] == "."
    assert {".venv/", ".git/", "runs/", "mlruns/", "mlartifacts/", "mlflow.db", ".cache/", "__pycache__/",
            "*.pyc", ".pytest_cache/"} <= set(spec["excludes"])
    assert not {"MLFLOW_TRACKING_URI", "HF_TOKEN"} & set(spec["env_vars"])
    assert all(isinstance(v, str) for v in spec["env_vars"].values())
    RuntimeEnv(**spec)  # Ray's own validation of field names and types


def test_working_dir_package_leaves_out_venv_caches_and_stores(tmp_path):
    """What Ray uploads for working_dir with the YAML's excludes alone (.gitignore not consulted)."""
    from ray._private.runtime_env.packaging import create_package

    spec = yaml.safe_load(RUNTIME_ENV.read_text())
    target = tmp_path / "pkg.zip"
    create_package(str(REPO), target, include_gitignore=False, excludes=spec["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "cdb/train.py" in names and "cdb/sweep.py" in names and "ray_jobs/runtime_env.yaml" in names
    assert "cdb/assets/contrastive/records.jsonl" in names
    bad = [n for n in names if n.split("/")[0] in {".venv", ".git", ".cache", "runs", "mlruns", "mlartifacts",
                                                    ".pytest_cache", ".hypothesis", "mlflow.db"}
           or "__pycache__" in n or n.endswith(".pyc")]
    assert not bad, bad[:10]
    assert target.stat().st_size < 20 * 2**20


def test_runtime_env_json_merges_the_callers_variables_only_when_set():
    env, passed = runtime_env_json.build(environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "HF_TOKEN": FAKE_TOKEN,
                                                  "AWS_SECRET_ACCESS_KEY": "not-passed"})
    assert passed == ["MLFLOW_TRACKING_URI", "HF_TOKEN"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["env_vars"]["HF_TOKEN"] == FAKE_TOKEN
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"  # the file's settings stay
    assert env["working_dir"] == str(REPO) and env["excludes"]
    env, passed = runtime_env_json.build(environ={"HF_TOKEN": ""})
    assert passed == [] and "HF_TOKEN" not in env["env_vars"]
    assert FAKE_TOKEN not in RUNTIME_ENV.read_text()


def test_submit_sh_without_an_address_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    proc = subprocess.run(["bash", str(REPO / "ray_jobs" / "submit.sh"), "--", "--scale", "tiny"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--address" in proc.stderr


# --- a real Ray head and MLflow server ----------------------------------------------------------


def _wait_http(url: str, process: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f} s")


def _stop(process: subprocess.Popen | None, grace: float = 10) -> None:
    """Stop a server started in its own session: SIGTERM to its leader, then SIGKILL to whatever of its
    process group and of its descendants (by pid, creation time checked) is left."""
    if process is None:
        return
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:
        try:
            if child.is_running():  # same pid *and* creation time: never a recycled pid
                child.kill()
        except psutil.NoSuchProcess:
            pass
    if process.poll() is None:
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head from the venv (so the job's `python` and the workers are the venv's) and an MLflow
    server, both on free ports, dashboard and MLflow bound to 127.0.0.1."""
    tmp = Path(tempfile.mkdtemp(prefix="cdbsub-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "HF_TOKEN"):
        env.pop(name, None)  # the job gets these only from what the test submits
    dashboard, mlflow_port = free_port(), free_port()
    head = server = None
    try:
        ports = {flag: free_port() for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                                "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                                "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
        cmd = [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats",
               "--temp-dir", str(tmp / "ray")]
        for flag, value in ports.items():
            cmd += [flag, str(value)]
        head = subprocess.Popen(cmd, env=env, cwd=tmp, start_new_session=True,
                                stdout=(tmp / "ray-head.log").open("w"), stderr=subprocess.STDOUT)
        server = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
             "--workers", "1"],
            env=env, cwd=tmp, start_new_session=True, stdout=(tmp / "mlflow.log").open("w"), stderr=subprocess.STDOUT)
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", head, "ray start --head", 120)
        _wait_http(f"http://127.0.0.1:{dashboard}/api/jobs/", head, "the Ray job server", 60)
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", server, "mlflow server", 120)
        yield SimpleNamespace(address=f"http://127.0.0.1:{dashboard}", mlflow=f"http://127.0.0.1:{mlflow_port}",
                              tmp=tmp, env=env)
    finally:
        _stop(server)
        _stop(head)
        shutil.rmtree(tmp, ignore_errors=True)


def _job_succeeded(cluster, submission_id: str) -> bool:
    """`ray job status` says so, and the job server agrees."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    proc = subprocess.run([str(RAY), "job", "status", "--address", cluster.address, submission_id], env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout.lower(), proc.stdout
    return JobSubmissionClient(cluster.address).get_job_status(submission_id) == JobStatus.SUCCEEDED


def _only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on {uri}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_ray_job_submit_runs_tiny_on_the_cluster_into_the_mlflow_server(cluster):
    out = cluster.tmp / "out-submit"
    submission_id = f"cdb-test-{os.getpid()}-1"
    cmd = [str(RAY), "job", "submit", "--address", cluster.address, "--submission-id", submission_id,
           "--runtime-env", str(RUNTIME_ENV), "--working-dir", str(REPO), "--",
           "python", "-m", "cdb.train", "--scale", "tiny", "--max-steps", "3", "--set", "data.max_records=16",
           "--tracking-uri", cluster.mlflow, "--experiment", "submit", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[cdb] done in" in proc.stdout
    assert _job_succeeded(cluster, submission_id)

    client, run = _only_run(cluster.mlflow, "submit")
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["scale"] == "tiny"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3]
    assert (out / "model" / "config.json").is_file()


def test_submit_sh_passes_tracking_uri_and_token_from_the_callers_environment(cluster):
    out = cluster.tmp / "out-submit-sh"
    env = {**cluster.env, "MLFLOW_TRACKING_URI": cluster.mlflow, "HF_TOKEN": FAKE_TOKEN}
    before = {p: p.read_bytes() for p in (REPO / "ray_jobs").iterdir() if p.is_file()}
    proc = subprocess.run(
        ["bash", str(REPO / "ray_jobs" / "submit.sh"), "--address", cluster.address,
         "--submission-id", f"cdb-test-{os.getpid()}-2", "--",
         "--scale", "tiny", "--max-steps", "1", "--set", "data.max_records=16", "--experiment", "submit-sh",
         "--output-dir", str(out)],
        cwd=cluster.tmp, env=env, capture_output=True, text=True, timeout=170)  # any cwd works
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert _job_succeeded(cluster, f"cdb-test-{os.getpid()}-2")
    assert "passing from this environment: MLFLOW_TRACKING_URI HF_TOKEN" in proc.stderr
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    # No --tracking-uri was given: the run reached the server only through the passed variable.
    _, run = _only_run(cluster.mlflow, "submit-sh")
    assert run.info.status == "FINISHED" and FAKE_TOKEN not in json.dumps(run.data.params)
    assert FAKE_TOKEN in _job_runtime_env(cluster, f"cdb-test-{os.getpid()}-2")  # it did reach the job
    after = {p: p.read_bytes() for p in (REPO / "ray_jobs").iterdir() if p.is_file()}
    assert after == before  # nothing written next to the script
    assert not list(cluster.tmp.glob("*.json"))


def _job_runtime_env(cluster, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return json.dumps(JobSubmissionClient(cluster.address).get_job_info(submission_id).runtime_env)
