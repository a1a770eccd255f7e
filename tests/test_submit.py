"""Cluster submission as a user does it: a real Ray head (`ray start --head`, from the venv) and a real
MLflow server with basic auth on loopback, and ray_jobs/submit.sh (`ray job submit` with
ray_jobs/runtime_env.yaml) passing MLFLOW_TRACKING_URI from the caller's environment while secrets (the
MLflow client credentials, HF_TOKEN) come from the cluster's own environment, as the k8s Secrets do."""

from __future__ import annotations

import json
import os
import shutil
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

from conftest import REPO, free_port, stop_session

VENV_BIN = Path(sys.executable).parent  # the venv running the tests
RAY = VENV_BIN / "ray"
MLFLOW = VENV_BIN / "mlflow"
RUNTIME_ENV = REPO / "ray_jobs" / "runtime_env.yaml"
FAKE_TOKEN = "hf_cdbSubmitTestToken0001"
FAKE_PASSWORD = "cdb-submit-test-password-0001"

sys.path.insert(0, str(REPO / "ray_jobs"))
import runtime_env_json  # noqa: E402  (ray_jobs/ is scripts, not a package)


# --- without a cluster --------------------------------------------------------------------------


def test_runtime_env_yaml_has_the_fields_ray_knows_and_no_secrets():
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load(RUNTIME_ENV.read_text())
    assert spec["working_dir"] == "."
    assert {".venv/", ".git", "runs/", "mlruns/", "mlartifacts/", "mlflow.db", ".cache/", "__pycache__/",
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
    assert "ds_configs/zero3_cpu_fp32.json" in names  # the top-level DeepSpeed configs the uploaded cdb reads
    assert not any(n.startswith("k8s/schemas/") for n in names)
    bad = [n for n in names if n.split("/")[0] in {".venv", ".git", ".cache", "runs", "mlruns", "mlartifacts",
                                                    ".pytest_cache", ".hypothesis", "mlflow.db"}
           or "__pycache__" in n or n.endswith(".pyc")]
    assert not bad, bad[:10]
    assert target.stat().st_size < 20 * 2**20


def test_runtime_env_json_merges_the_callers_variables_only_when_set():
    caller = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "HF_TOKEN_PATH": "/var/run/secrets/hf/token",
              "HF_TOKEN": FAKE_TOKEN, "AWS_SECRET_ACCESS_KEY": "not-passed"}
    env, passed = runtime_env_json.build(environ=caller)
    assert passed == ["MLFLOW_TRACKING_URI", "HF_TOKEN_PATH"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["HF_TOKEN_PATH"] == "/var/run/secrets/hf/token"
    assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(env["env_vars"])  # secrets only by opt-in
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"  # the file's settings stay
    assert env["working_dir"] == str(REPO) and env["excludes"]
    env, passed = runtime_env_json.build(environ={"MLFLOW_TRACKING_URI": ""})
    assert passed == [] and "MLFLOW_TRACKING_URI" not in env["env_vars"]
    env, passed = runtime_env_json.build(pass_secret=["HF_TOKEN"], environ=caller)
    assert env["env_vars"]["HF_TOKEN"] == FAKE_TOKEN and "HF_TOKEN" in passed
    assert FAKE_TOKEN not in RUNTIME_ENV.read_text()


@pytest.mark.parametrize("name", ["HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"])
def test_runtime_env_json_refuses_a_secret_through_pass_env(name):
    with pytest.raises(ValueError, match=f"--pass-secret {name}"):
        runtime_env_json.build(pass_env=[name], environ={name: "x"})
    assert runtime_env_json.looks_secret(name) and not runtime_env_json.looks_secret(name + "_PATH")


STAND_IN_RAY = """#!/usr/bin/env python3
# Stand-in `ray` CLI: records the argv it is given, then exits 0.
import json, os, sys
with open(os.environ["RAY_RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
print("stand-in ray: job submitted")
"""


def _run_submit_sh_with_stand_in_ray(tmp_path, *options, caller_env: dict) -> tuple[subprocess.CompletedProcess, list]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    ray = bindir / "ray"
    ray.write_text(STAND_IN_RAY)
    ray.chmod(0o755)
    record = tmp_path / "argv.json"
    record.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_CLI")}
    env.update(caller_env, PATH=f"{bindir}{os.pathsep}{env['PATH']}", PYTHON=sys.executable, RAY_RECORD=str(record))
    proc = subprocess.run(["bash", str(REPO / "ray_jobs" / "submit.sh"), "--address", "http://127.0.0.1:8265",
                           *options, "--", "--scale", "tiny"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    return proc, (json.loads(record.read_text()) if record.exists() else None)


SECRETS_IN_CALLER = {"HF_TOKEN": FAKE_TOKEN, "MLFLOW_TRACKING_PASSWORD": FAKE_PASSWORD,
                     "MLFLOW_TRACKING_USERNAME": "cdb-ray", "MLFLOW_TRACKING_URI": "http://mlflow.cdb.svc:5000",
                     "HF_TOKEN_PATH": "/var/run/secrets/hf/token"}


def test_submit_sh_puts_no_secret_in_argv_output_or_runtime_env(tmp_path):
    proc, argv = _run_submit_sh_with_stand_in_ray(tmp_path, caller_env=SECRETS_IN_CALLER)
    assert proc.returncode == 0, proc.stderr
    assert argv[:2] == ["job", "submit"] and argv[-5:] == ["python", "-m", "cdb.train", "--scale", "tiny"]
    for secret in (FAKE_TOKEN, FAKE_PASSWORD):
        assert secret not in json.dumps(argv)
        assert secret not in proc.stdout + proc.stderr
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.cdb.svc:5000"
    assert runtime_env["env_vars"]["HF_TOKEN_PATH"] == "/var/run/secrets/hf/token"
    assert not {"HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"} & set(runtime_env["env_vars"])
    assert "passing from this environment: MLFLOW_TRACKING_URI HF_TOKEN_PATH" in proc.stderr
    assert "WARNING" not in proc.stderr


def test_submit_sh_refuses_a_secret_given_as_pass_env(tmp_path):
    proc, argv = _run_submit_sh_with_stand_in_ray(tmp_path, "--pass-env", "HF_TOKEN", caller_env=SECRETS_IN_CALLER)
    assert proc.returncode == 2 and argv is None  # `ray` never ran
    assert "--pass-secret HF_TOKEN" in proc.stderr and FAKE_TOKEN not in proc.stdout + proc.stderr


def test_submit_sh_passes_a_secret_only_by_opt_in_and_warns(tmp_path):
    proc, argv = _run_submit_sh_with_stand_in_ray(tmp_path, "--pass-secret", "HF_TOKEN", caller_env=SECRETS_IN_CALLER)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: --pass-secret HF_TOKEN" in proc.stderr and "ray job list" in proc.stderr
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["HF_TOKEN"] == FAKE_TOKEN  # what was asked for, and nothing more
    assert "MLFLOW_TRACKING_PASSWORD" not in runtime_env["env_vars"]
    assert FAKE_TOKEN not in proc.stdout + proc.stderr


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


ADMIN = ("admin", "cdb-test-admin-password-0001")
RAY_USER = ("cdb-ray", FAKE_PASSWORD)  # the Ray pods' client credentials (k8s: Secret cdb-mlflow-client)


def _mlflow_auth_ini(tmp: Path) -> Path:
    """The basic-auth app's config (k8s/base/mlflow.yaml keeps the same one in a ConfigMap); the admin
    password comes from MLFLOW_AUTH_ADMIN_PASSWORD, as from the Secret there."""
    ini = tmp / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{tmp / 'auth.db'}\nadmin_username = {ADMIN[0]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return ini


def _http(url: str, method: str = "GET", body: dict | None = None, user: tuple[str, str] | None = None) -> int:
    """HTTP status of one request, with basic auth when `user` is given."""
    import base64
    import urllib.error

    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def cluster():
    """An MLflow server with basic auth and a Ray head from the venv (so the job's `python` and the workers
    are the venv's), both on free ports, dashboard and MLflow bound to 127.0.0.1. The Ray head's own
    environment holds the MLflow client credentials of a non-admin user, as the k8s Ray pods get them from
    a Secret; nothing secret is submitted with a job."""
    tmp = Path(tempfile.mkdtemp(prefix="cdbsub-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "HF_TOKEN",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)  # the job gets these only from the cluster or from what the test submits
    dashboard, mlflow_port = free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    head = server = None
    try:
        server_env = {**env, "MLFLOW_AUTH_CONFIG_PATH": str(_mlflow_auth_ini(tmp)),
                      "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
        server = subprocess.Popen(
            [str(MLFLOW), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
             "--workers", "1"],
            env=server_env, cwd=tmp, start_new_session=True, stdout=(tmp / "mlflow.log").open("w"),
            stderr=subprocess.STDOUT)
        _wait_http(f"{mlflow_uri}/health", server, "mlflow server", 120)
        status = _http(f"{mlflow_uri}/api/2.0/mlflow/users/create", "POST",
                       {"username": RAY_USER[0], "password": RAY_USER[1]}, user=ADMIN)
        assert status == 200, f"creating the Ray user answered {status}"

        head_env = {**env, "MLFLOW_TRACKING_USERNAME": RAY_USER[0], "MLFLOW_TRACKING_PASSWORD": RAY_USER[1]}
        ports = {flag: free_port() for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                                "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                                "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
        cmd = [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats",
               "--temp-dir", str(tmp / "ray")]
        for flag, value in ports.items():
            cmd += [flag, str(value)]
        head = subprocess.Popen(cmd, env=head_env, cwd=tmp, start_new_session=True,
                                stdout=(tmp / "ray-head.log").open("w"), stderr=subprocess.STDOUT)
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", head, "ray start --head", 120)
        _wait_http(f"http://127.0.0.1:{dashboard}/api/jobs/", head, "the Ray job server", 60)
        yield SimpleNamespace(address=f"http://127.0.0.1:{dashboard}", mlflow=mlflow_uri, tmp=tmp, env=env)
    finally:
        for process in (server, head):
            if process is not None:
                stop_session(process, grace=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
def test_mlflow_server_refuses_requests_without_valid_credentials(cluster):
    search = f"{cluster.mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http(search) == 401
    assert _http(search, user=(RAY_USER[0], "wrong-password-0001")) == 401
    assert _http(search, user=RAY_USER) == 200
    assert _http(f"{cluster.mlflow}/health") == 200  # the probes need no credentials


def _job_succeeded(cluster, submission_id: str) -> bool:
    """`ray job status` says so, and the job server agrees."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    proc = subprocess.run([str(RAY), "job", "status", "--address", cluster.address, submission_id], env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout.lower(), proc.stdout
    return JobSubmissionClient(cluster.address).get_job_status(submission_id) == JobStatus.SUCCEEDED


@pytest.fixture
def as_admin(monkeypatch):
    """This test process reads the server as its admin."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])


def _only_run(uri: str, experiment: str):
    """The one run of `experiment`, which the Ray user created (so it holds MANAGE on it)."""
    from mlflow.server.auth.client import AuthServiceClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on {uri}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    permission = AuthServiceClient(uri).get_user_permission(RAY_USER[0], "experiment", found.experiment_id)
    assert permission.permission == "MANAGE"
    return client, runs[0]


@pytest.mark.integration
def test_submit_sh_runs_tiny_on_the_cluster_into_the_mlflow_server_with_no_secret(cluster, as_admin):
    """ray_jobs/submit.sh, as a user runs it (any cwd): `ray job submit` of the repository with
    ray_jobs/runtime_env.yaml; the tracking URI reaches the job only through the caller's variable, the
    credentials only from the cluster's own environment."""
    out = cluster.tmp / "out-submit-sh"
    submission_id = f"cdb-test-{os.getpid()}"
    env = {**cluster.env, "MLFLOW_TRACKING_URI": cluster.mlflow, "HF_TOKEN": FAKE_TOKEN,
           "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}
    before = {p: p.read_bytes() for p in (REPO / "ray_jobs").iterdir() if p.is_file()}
    proc = subprocess.run(
        ["bash", str(REPO / "ray_jobs" / "submit.sh"), "--address", cluster.address, "--submission-id", submission_id,
         "--", "--scale", "tiny", "--max-steps", "3", "--set", "data.max_records=16", "--experiment", "submit-sh",
         "--output-dir", str(out)],
        cwd=cluster.tmp, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[cdb] done in" in proc.stdout
    assert _job_succeeded(cluster, submission_id)
    assert "passing from this environment: MLFLOW_TRACKING_URI)" in proc.stderr
    assert FAKE_TOKEN not in proc.stdout + proc.stderr and ADMIN[1] not in proc.stdout + proc.stderr
    # No --tracking-uri was given: the run reached the server only through the passed variable.
    client, run = _only_run(cluster.mlflow, "submit-sh")
    assert run.info.status == "FINISHED" and FAKE_TOKEN not in json.dumps(run.data.params)
    assert run.data.params["scale.num_workers"] == "2" and run.data.params["scale.name"] == "tiny"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2, 3]
    assert (out / "model" / "config.json").is_file()
    stored = _job_runtime_env(cluster, submission_id)  # what `ray job list` would return
    assert cluster.mlflow in stored and FAKE_TOKEN not in stored and ADMIN[1] not in stored
    after = {p: p.read_bytes() for p in (REPO / "ray_jobs").iterdir() if p.is_file()}
    assert after == before  # nothing written next to the script
    assert not list(cluster.tmp.glob("*.json"))


def _job_runtime_env(cluster, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return json.dumps(JobSubmissionClient(cluster.address).get_job_info(submission_id).runtime_env)
