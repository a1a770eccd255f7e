import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Real DeepSpeed, Ray and MLflow run in these tests, on CPU and offline.
os.environ.setdefault("CDB_CACHE_DIR", str(REPO / ".cache"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def stop_session(process: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process started as the leader of a session of its own: it, its group, and its descendants
    that left the group (Ray's workers have groups of their own)."""
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
    for child in descendants:  # any that left the group; is_running checks the creation time too
        try:
            if child.is_running():
                child.kill()
        except psutil.NoSuchProcess:
            pass
    if process.poll() is None:
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_address():
    """The address of one local Ray head shared by the tests whose subject is a training run, not Ray's
    start-up: given as RAY_ADDRESS, `cdb.train` joins it instead of starting a cluster (~6-9 s each).

    No job is submitted to it, so it runs without a dashboard. `ray start --block` leads a session of
    its own; the fixture stops it, its process group and every process under it by pid, never with
    `ray stop`, which would stop any other Ray on the machine. Its workers import this checkout and
    see this environment, not the driver's: a test whose workers need the driver's variables, or
    that signals or kills the cluster's processes, keeps a local cluster."""
    temp = Path(tempfile.mkdtemp(prefix="cdbray-", dir="/tmp"))  # short: Ray's socket paths live under it
    # No drain on SIGTERM: nothing (Ray Serve) waits for one, and it would hold the teardown for 30 s.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--include-dashboard", "false", "--dashboard-host", "127.0.0.1", "--disable-usage-stats",
           "--temp-dir", str(temp / "ray")]
    for flag in ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
                 "--node-manager-port", "--object-manager-port"):
        cmd += [flag, str(free_port())]  # none of Ray's fixed defaults, which another Ray here may hold
    log = temp / "ray-head.log"
    with log.open("w") as out:
        head = subprocess.Popen(cmd, env=env, cwd=temp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        address_file = temp / "ray" / "ray_current_cluster"  # written once the head is up
        deadline = time.monotonic() + 120
        while not (address_file.is_file() and address_file.read_text().strip()):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield address_file.read_text().strip()
    finally:
        stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)
