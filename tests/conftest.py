import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer): the tiny random Llama with its matrices redrawn at std 0.3. Its own init
    (std 0.02) is nearly uniform; larger weights make prompts, prefixes, positions and padding move
    the numbers, so that a bug in any of them shows."""
    import torch

    from cdb.eval import load_model
    from cdb.model import TINY

    model, tokenizer, _ = load_model(TINY, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval(), tokenizer


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


def start_mlflow_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` over the sqlite store `db`, once it answers /health."""
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
                             "--workers", "1"], env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise AssertionError("mlflow server did not answer /health")


def stop_server(proc: subprocess.Popen, how: int = signal.SIGTERM) -> None:
    """The server and its workers, by their own process group: SIGTERM (then SIGKILL), or `how`."""
    if proc.poll() is None:
        os.killpg(proc.pid, how)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ray_ports() -> list[str]:
    """Ports for one more Ray node: none of Ray's fixed defaults, which another Ray here may hold."""
    flags = []
    for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"):
        flags += [flag, str(free_port())]
    return flags


def _start_in_session(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)


class ClusterBed:
    """A Ray cluster shaped like the k8s one, on this machine: a head that trains nothing (no CPUs, as
    rayStartParams num-cpus "0"; its dashboard takes `ray job submit` and `ray job stop`), two worker
    nodes of one CPU each, `shared` seen by every node (the RWX volume), and an S3 server (moto) at
    `s3_endpoint` with bucket `bucket`.

    Every node is a pod of its own as far as paths go: a mount namespace with a tmpfs over /tmp (so
    Ray's session folder and every temporary file are the node's own) and over `cache` (the node's
    CDB_CACHE_DIR, empty but for DeepSpeed's compiled op, copied in as an image layer carries it);
    the second worker node also has its own tmpfs over `private` (a node-local disk: what the head
    writes there that node does not see). The bed's folders live under /var/tmp, not /tmp, for that.
    Token authentication is on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN): every node, job
    and `ray` command gets `env`; a client in this process passes `headers`. Every node and job gets
    the AWS variables in `s3_env`."""

    bucket = "cdb-bed"

    def __init__(self, root: Path):
        import secrets

        self.root = root
        self.shared, self.private, self.cache = root / "shared", root / "private", root / "cache"
        for folder in (self.shared, self.private, self.cache):
            folder.mkdir()
        self.processes: list[subprocess.Popen] = []
        self.workers: dict[int, subprocess.Popen] = {}  # worker node number -> its `ray start --block`
        self.retired: list[subprocess.Popen] = []  # nodes a test took down on purpose
        self.s3_port, self.gcs_port, self.dashboard_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.s3_endpoint = f"127.0.0.1:{self.s3_port}"
        self.token = secrets.token_hex(32)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.s3_env = {"AWS_ACCESS_KEY_ID": "bed", "AWS_SECRET_ACCESS_KEY": "bed", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **self.s3_env,
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "CDB_CACHE_DIR": str(self.cache),
                    # `ray job stop` gives the driver this long to checkpoint before SIGKILL (k8s: the same)
                    "RAY_JOB_STOP_WAIT_TIME_S": "120",
                    # A node whose raylet is gone is dead after 3 missed health checks a second apart, not 5
                    # three seconds apart (a test that kills one waits for that)
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("TORCH_EXTENSIONS_DIR", None)  # the workers' follows CDB_CACHE_DIR, the node's own

    def storage_uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}?endpoint_override={self.s3_endpoint}&scheme=http&region=us-east-1"

    def _pod(self, ray_start: list[str], private: bool = False) -> list[str]:
        """`ray start` in a mount namespace of its own: tmpfs over /tmp and the cache (and `private`)."""
        import shlex

        mounts = ["/tmp", str(self.cache)] + ([str(self.private)] if private else [])
        ops = Path(os.environ["TORCH_EXTENSIONS_DIR"])
        seed = f"cp -a {shlex.quote(str(ops))} {self.cache}/ && " if ops.is_dir() else ""
        script = " && ".join(f"mount -t tmpfs tmpfs {m}" for m in mounts) + f" && {seed}exec {shlex.join(ray_start)}"
        return ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]

    def start(self) -> None:
        if REPO.is_relative_to("/tmp") or Path(sys.executable).is_relative_to("/tmp"):
            raise RuntimeError(f"cluster bed: every node mounts a /tmp of its own, which hides {REPO}: run the tests "
                               "from a checkout (and environment) outside /tmp")
        bin_dir, temp = Path(sys.executable).parent, self.root / "ray"  # short: Ray's socket paths live under it
        self.processes.append(_start_in_session([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)],
                                                self.env, self.root / "s3.log"))
        self.processes.append(_start_in_session(self._pod(
            [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "0", "--num-gpus", "0",
             "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
             "--ray-client-server-port", str(free_port()), "--disable-usage-stats", "--temp-dir", str(temp), *_ray_ports()]),
            self.env, self.root / "head.log"))
        self._wait(lambda: (temp / "ray_current_cluster").is_file(), "the head", self.root / "head.log")
        # One node at a time: a raylet must register within Ray's fixed 30 s, hard on a busy machine.
        for number in (1, 2):
            self.start_worker(number)
        self._wait(self._s3_ready, "the S3 server", self.root / "s3.log")

    def start_worker(self, number: int) -> None:
        """Worker node `number` (1 or 2; 2 has its own `private`), anew: a fresh pod, as k8s restarts one."""
        alive = self._nodes()
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--address", self.address, "--block", "--num-cpus", "1",
               "--disable-usage-stats", "--temp-dir", "/tmp/ray", *_ray_ports()]
        log = self.root / f"worker-{number}.log"
        self.workers[number] = _start_in_session(self._pod(cmd, private=number == 2), self.env, log)
        self.processes.append(self.workers[number])
        self._wait(lambda: self._nodes() == alive + 1, f"worker node {number}", log)

    def restart_worker(self, number: int) -> None:
        """Worker node `number` once its raylet is gone: the rest of its pod stopped, a fresh one started."""
        old = self.workers[number]
        self.retired.append(old)
        stop_session(old, grace=5)
        self._wait(lambda: self._nodes() == 2, f"the death of worker node {number}", self.root / "head.log", timeout=120)
        self.start_worker(number)

    def raylet(self, number: int):
        """The raylet process of worker node `number`."""
        import psutil

        return next(p for p in psutil.Process(self.workers[number].pid).children(recursive=True) if p.name() == "raylet")

    def submit(self, job_id: str, entrypoint: list[str]) -> None:
        """`ray job submit --no-wait` of `entrypoint` to the head, as a user does, with the token (the CLI
        quotes each argument for the entrypoint's shell: an S3 URI's `&` included)."""
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", self.dashboard,
               "--submission-id", job_id, "--no-wait", "--", *entrypoint]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def jobs(self):
        """The head's job API, for this process (which runs with auth off: the token goes as a header)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def wait_for_end(self, job_id: str, timeout: float = 600):
        """(the job's details, its logs) once it has ended."""
        jobs, deadline = self.jobs(), time.monotonic() + timeout
        while not jobs.get_job_status(job_id).is_terminal():
            assert time.monotonic() < deadline, jobs.get_job_logs(job_id)[-4000:]
            time.sleep(0.5)
        return jobs.get_job_info(job_id), jobs.get_job_logs(job_id)

    def _wait(self, ready, what: str, log: Path, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            died = any(p.poll() is not None for p in self.processes if p not in self.retired)
            if time.monotonic() > deadline or died:
                raise RuntimeError(f"cluster bed: {what} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def api(self, path: str, token: bool = True):
        """GET the dashboard's `path` (JSON), with the token unless told not to."""
        import json
        import urllib.request

        request = urllib.request.Request(self.dashboard + path, headers=self.headers if token else {})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def _nodes(self) -> int:
        """Alive nodes, as the head's state API counts them (0 until it answers)."""
        try:
            answer = self.api("/api/v0/nodes?limit=100&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE")
            return len(answer["data"]["result"]["result"])
        except Exception:  # the dashboard is not up yet
            return 0

    def _s3_ready(self) -> bool:
        import pyarrow.fs

        try:
            s3 = pyarrow.fs.S3FileSystem(access_key="bed", secret_key="bed", endpoint_override=self.s3_endpoint,
                                         scheme="http", region="us-east-1", allow_bucket_creation=True)
            s3.create_dir(self.bucket)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        for process in reversed(self.processes):  # the nodes before the head
            stop_session(process)


@pytest.fixture(scope="session")
def cluster_bed():
    """One ClusterBed for every test that asks for it (its start costs ~20 s), stopped (by pid) at the
    end of the session. A test that takes a node down brings it back (ClusterBed.restart_worker)."""
    # Not under /tmp: every node mounts a /tmp of its own. Short: Ray's socket paths live under it.
    bed = ClusterBed(Path(tempfile.mkdtemp(prefix="cdbbed-", dir="/var/tmp")))
    try:
        bed.start()
        yield bed
    finally:
        bed.stop()
        shutil.rmtree(bed.root, ignore_errors=True)
