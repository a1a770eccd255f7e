"""MLflow facade: one run per training job, created on the driver; workers log into it from rank 0.

Default store: sqlite:///<cwd>/mlflow.db with artifacts in <cwd>/mlartifacts, unless
--tracking-uri / tracking.uri or MLFLOW_TRACKING_URI says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RUN_FILE = "run.json"
"""In OUTPUT_DIR: the MLflow run and Ray run name of the job, for --resume and cdb.sync."""
SPOOL_FILE = "metrics.jsonl"
"""In OUTPUT_DIR: metrics that could not reach the tracking server yet."""


def resolve_uri(configured: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    return uri


def _artifact_root(uri: str) -> str | None:
    """Local stores get an explicit, absolute artifact folder beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_root(uri))


def start_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """Create a run with its params and tags; returns its id."""
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name or None,
                            tags={"cdb.commit": git_commit(), **tags})
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start:start + 100])
    return run.info.run_id


def ensure_run(run: dict, output_dir: Path) -> str | None:
    """The job's run id: created (with params, tags, config.yaml) when the job has none yet, set
    RUNNING when it has. None, with a warning, while the server is unreachable: training goes on
    and `finish_run` or `python -m cdb.sync` creates it later."""
    uri = run["tracking_uri"]
    try:
        if run.get("run_id"):
            _client(uri).update_run(run["run_id"], status="RUNNING")
            return run["run_id"]
        run_id = start_run(uri, run["experiment"], run.get("run_name", ""), run["params"], run["tags"])
        for name in ("config.yaml", "rejected.jsonl"):
            if (output_dir / name).exists():
                log_artifact(uri, run_id, output_dir / name)
        return run_id
    except Exception as exc:  # unreachable or failing server: never a reason to stop training
        print(f"[cdb] warning: MLflow at {uri} unreachable ({type(exc).__name__}: {exc}); "
              f"metrics go to {output_dir / SPOOL_FILE}, replay with `python -m cdb.sync {output_dir}`", flush=True)
        return run.get("run_id")


def write_run_file(run: dict, output_dir: Path) -> None:
    staging = output_dir / f".{RUN_FILE}.tmp"
    staging.write_text(json.dumps(run, indent=1))
    os.replace(staging, output_dir / RUN_FILE)


def finish_run(run: dict, output_dir: Path, status: str) -> bool:
    """Create the run if it never could be, replay spooled metrics, set the final status."""
    run["run_id"] = ensure_run(run, output_dir)
    write_run_file(run, output_dir)
    if not run["run_id"]:
        return False
    try:
        client = _client(run["tracking_uri"])
        replay_spool(client, run["run_id"], output_dir / SPOOL_FILE)
        client.set_terminated(run["run_id"], status)
        return True
    except Exception as exc:
        print(f"[cdb] warning: could not finish the MLflow run ({exc}); run `python -m cdb.sync {output_dir}` later", flush=True)
        return False


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    _client(uri).log_artifact(run_id, str(path), artifact_path)


class RunLogger:
    """Metrics of one run from one worker; only rank 0 writes, the others are silent.

    A metric that cannot reach the tracking server is spooled to `spool` (JSONL) with a warning and
    replayed, in order, at the next successful call (or by `python -m cdb.sync OUTPUT_DIR`): the
    run never stops for the server and never loses a metric. After a restart from a checkpoint,
    steps the run already holds are not logged again, so the step axis has no duplicates.
    """

    def __init__(self, uri: str, run_id: str, rank: int, spool: str | Path):
        self.uri, self.run_id, self.active = uri, run_id, rank == 0
        self.spool = Path(spool)
        self.logged_through = 0
        self._client = _client(uri) if self.active else None
        self._warned = False

    def skip_logged_steps(self, metric: str = "train/loss") -> None:
        """Called after a restore: find the last step already in the run (or in the spool)."""
        if not self.active:
            return
        steps = [entry["step"] for entry in read_spool(self.spool)]
        try:
            steps += [m.step for m in self._client.get_metric_history(self.run_id, metric)]
        except Exception as exc:  # an unreachable server: the spool alone tells
            self._warn(exc)
        self.logged_through = max(steps, default=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or step <= self.logged_through:
            return
        entry = {"step": step, "timestamp": int(time.time() * 1000), "metrics": {k: float(v) for k, v in metrics.items()}}
        try:
            replay_spool(self._client, self.run_id, self.spool)
            _log_entries(self._client, self.run_id, [entry])
        except Exception as exc:  # any transport or server error: keep the metric, go on training
            self._warn(exc)
            with self.spool.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        self.logged_through = step

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            print(f"[cdb] warning: MLflow unreachable ({type(exc).__name__}); spooling metrics to {self.spool}", flush=True)
            self._warned = True


def _log_entries(client, run_id: str, entries: list[dict]) -> None:
    from mlflow.entities import Metric

    metrics = [Metric(k, v, e["timestamp"], e["step"]) for e in entries for k, v in e["metrics"].items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])


def read_spool(spool: Path) -> list[dict]:
    if not spool.exists():
        return []
    return [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]


def replay_spool(client, run_id: str, spool: Path) -> int:
    """Log every spooled entry, then empty the spool. Returns how many steps were replayed."""
    entries = read_spool(spool)
    if entries:
        _log_entries(client, run_id, entries)
        spool.unlink()
    return len(entries)


def sync(output_dir: str | Path) -> int:
    """Replay a job's spooled metrics into its MLflow run, creating the run if it never could be."""
    output_dir = Path(output_dir)
    run = json.loads((output_dir / RUN_FILE).read_text())
    run["run_id"] = ensure_run(run, output_dir)
    write_run_file(run, output_dir)
    if not run["run_id"]:
        raise ConnectionError(f"MLflow at {run['tracking_uri']} is still unreachable")
    return replay_spool(_client(run["tracking_uri"]), run["run_id"], output_dir / SPOOL_FILE)
