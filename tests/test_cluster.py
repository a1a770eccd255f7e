"""`python -m cdb.train` on a cluster as a real one runs it: `ray job submit` and `ray job stop`
through the dashboard, with the cluster's token, onto the ClusterBed of conftest (a head that trains
nothing, two worker nodes, every node with its own /tmp and cache folder, one with a private disk, a
shared folder, S3).

- the dashboard answers nothing without the token;
- a run folder that not every node sees is refused before anything trains;
- the same command again is the same run: after `ray job stop` (a SIGTERM that every rank on every
  node answers with its part of a checkpoint, exit 75), the identical command continues from the latest checkpoint in S3 into the
  same MLflow run, and the tuned model in S3 is evaluated by copies on both worker nodes, each
  fetching it to its own /tmp (a driver SIGKILLed instead: tests/test_chaos.py);
- another config against the run is refused naming the keys; --fresh archives the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient



pytestmark = pytest.mark.integration  # a Ray cluster of three nodes, an S3 server, training jobs

RAY = Path(sys.executable).parent / "ray"
STEPS = 40


def submit(bed, job_id: str, *args: str) -> None:
    """`ray job submit` of `python -m cdb.train ARGS` to the bed's head."""
    bed.submit(job_id, [sys.executable, "-m", "cdb.train", *args])


def jobs(bed):
    return bed.jobs()


def stop_job(bed, job_id: str) -> None:
    """`ray job stop` through the dashboard, as a user does: the driver gets SIGTERM."""
    proc = subprocess.run([str(RAY), "job", "stop", "--address", bed.dashboard, "--no-wait", job_id], env=bed.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def nodes_of(bed, kind: str, name: str, job_id: str) -> list[str]:
    """The nodes on which the cluster's state API says job `job_id`'s tasks (kind "tasks") or actors
    ("actors") named `name` ran."""
    field = "name" if kind == "tasks" else "class_name"
    rows = bed.api(f"/api/v0/{kind}?limit=1000&detail=1&filter_keys={field}&filter_predicates=%3D&filter_values={name}")
    return [row["node_id"] for row in rows["data"]["result"]["result"] if row.get("job_id") == job_id]


def wait_for_log(bed, job_id: str, text: str, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = jobs(bed).get_job_logs(job_id)
        if text in logs:
            return logs
        if jobs(bed).get_job_status(job_id).is_terminal():
            break
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never printed {text!r}:\n{jobs(bed).get_job_logs(job_id)[-4000:]}")


def wait_for_end(bed, job_id: str, timeout: float = 600):
    return bed.wait_for_end(job_id, timeout)


def s3(bed):
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(access_key="bed", secret_key="bed", endpoint_override=bed.s3_endpoint,
                                   scheme="http", region="us-east-1")


def s3_files(bed, prefix: str) -> list[str]:
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(f"{bed.bucket}/{prefix}", recursive=True, allow_not_found=True)
    return [info.path for info in s3(bed).get_file_info(selector)]


def wait_for_s3_checkpoint(bed, prefix: str, job_id: str, timeout: float = 400) -> None:
    """Until Ray Train's checkpoint manager has registered a checkpoint under `prefix`."""
    deadline = time.monotonic() + timeout
    while True:
        snapshots = [p for p in s3_files(bed, prefix) if p.endswith("checkpoint_manager_snapshot.json")]
        if any("step_" in s3(bed).open_input_stream(p).read().decode() for p in snapshots):
            return
        assert time.monotonic() < deadline and not jobs(bed).get_job_status(job_id).is_terminal(), \
            jobs(bed).get_job_logs(job_id)[-4000:]
        time.sleep(0.5)


def test_dashboard_answers_nothing_without_the_token(cluster_bed):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster_bed.api("/api/jobs/", token=False)
    assert refused.value.code == 401
    assert isinstance(cluster_bed.api("/api/jobs/"), list)
    anonymous = {k: v for k, v in cluster_bed.env.items() if k != "RAY_AUTH_TOKEN"}
    listed = subprocess.run([str(RAY), "job", "list", "--address", cluster_bed.dashboard], env=anonymous,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode != 0


def test_run_folder_that_one_node_does_not_see_is_refused_before_training(cluster_bed):
    bed = cluster_bed
    out = bed.private / "run"  # the driver's node writes here; worker node 2 has its own tmpfs over it
    submit(bed, "refused", "--max-steps", "2", "--output-dir", str(out),
           "--tracking-uri", f"sqlite:///{bed.shared / 'refused.db'}")
    info, logs = wait_for_end(bed, "refused")
    assert info.driver_exit_code == 2, logs[-3000:]
    [error] = [line for line in logs.splitlines() if line.startswith("cdb.train: error:")]
    assert error.startswith(f"cdb.train: error: train.output_dir: {out} is not the same folder on every node")
    assert "Not seen by: " in error and "FileNotFoundError" in error
    assert "--storage-path (s3://" in error and "shared" in error
    assert "[cdb] step" not in logs  # nothing trained, nothing written but the probed folder
    assert not (out / "config.yaml").exists() and not (bed.shared / "refused.db").exists()


def test_same_command_continues_after_ray_job_stop_with_checkpoints_in_s3(cluster_bed):
    bed = cluster_bed
    out, db = bed.shared / "run", bed.shared / "mlflow.db"
    # Enough steps that `ray job stop` (seconds to start its CLI on a busy machine) lands mid-run.
    command = ["--max-steps", str(STEPS), "--output-dir", str(out), "--tracking-uri", f"sqlite:///{db}",
               "--storage-path", bed.storage_uri("runs/tiny"), "--set", "train.checkpoint_every=4",
               "--set", "eval.suite=quick", "--set", "eval.tasks=[toxicity,bias]", "--set", "eval.limit=2",
               "--set", "eval.max_new_tokens=8"]

    # 1. `ray job stop` once a checkpoint is in S3 reaches both ranks, on two nodes. (A driver SIGKILLed
    # and submitted again is test_chaos's "driver" fault.)
    submit(bed, "first", *command)
    wait_for_log(bed, "first", f"[cdb] step 1/{STEPS}")
    record = {name: (out / name).read_bytes() for name in ("config.yaml", "run.json")}
    ray_name = json.loads(record["run.json"])["ray_name"]
    wait_for_s3_checkpoint(bed, f"runs/tiny/checkpoints/{ray_name}", "first")
    stop_job(bed, "first")
    info, logs = wait_for_end(bed, "first")
    # Stopped, not finished: the driver checkpointed and exited (75) before the job's grace ran out.
    assert info.status == "STOPPED" and "[cdb] stopped at step " in logs, logs[-4000:]
    stopped = int(logs.split("[cdb] stopped at step ")[1].split(";")[0])
    assert stopped < STEPS
    step_dir = f"runs/tiny/checkpoints/{ray_name}/step_{stopped:07d}"
    shards = {Path(p).name for p in s3_files(bed, step_dir)}
    assert {f"zero_pp_rank_{r}_mp_rank_00_{part}_states.pt" for r in (0, 1) for part in ("model", "optim")} <= shards, shards

    # 2. The same command again finishes the run.
    submit(bed, "second", *command)
    info, logs = wait_for_end(bed, "second")
    assert info.status == "SUCCEEDED", logs[-4000:]
    assert f"[cdb] resumed at step {stopped}" in logs
    client = MlflowClient(f"sqlite:///{db}")
    [run] = client.search_runs([client.get_experiment_by_name("cdb").experiment_id])
    assert run.info.run_id == json.loads(record["run.json"])["run_id"] and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, STEPS + 1))  # no gap, no repeat across the two drivers
    assert {name: (out / name).read_bytes() for name in record}["config.yaml"] == record["config.yaml"]
    assert json.loads((out / "run.json").read_text())["ray_name"] == ray_name
    stored = s3_files(bed, "runs/tiny")
    for name in ("model/model.safetensors", "eval_base/eval.json", "eval/eval.json", "config.yaml", "run.json"):
        assert f"{bed.bucket}/runs/tiny/{name}" in stored, name
    assert run.data.tags["cdb.exported_model"] == f"s3://{bed.bucket}/runs/tiny/model"
    assert run.data.tags["cdb.eval.model"] == f"s3://{bed.bucket}/runs/tiny/model"  # not the node's temporary copy
    # The tuned model's evaluation ran, from S3, on both worker nodes: the task holding one copy on one,
    # the replica holding the other on the other, each with the model fetched into its own /tmp.
    for prefix in ("eval_base", "eval"):
        assert f"{prefix}/toxicity/mean_toxicity" in run.data.metrics and f"{prefix}/bias/crows_stereo_share" in run.data.metrics
        assert run.data.tags[f"cdb.{prefix}.failed"] == ""
    assert "items split over 2 copies of the model" in logs
    [task_node] = nodes_of(bed, "tasks", "_evaluate", info.job_id)
    [replica_node] = nodes_of(bed, "actors", "Replica", info.job_id)
    assert task_node != replica_node

    # 3. Another config against the run: refused before anything starts, naming the key.
    proc = subprocess.run([sys.executable, "-m", "cdb.train", *command, "--set", "optim.lr=0.5"], env=bed.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {out} holds a run with another config: optim.lr (0.01 in the run, 0.5 now)" in proc.stderr
    assert "--fresh" in proc.stderr and "--resume" in proc.stderr


def test_fresh_archives_the_run_folder_and_a_changed_config_is_refused(tmp_path):
    from cdb import config as cfg
    from cdb import train

    out = tmp_path / "run"

    def command(*extra):
        args = train.parse_args(["--output-dir", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *extra])
        return train.config_from_args(args), args

    config, args = command()
    assert train.continue_or_start(config, args) == (config, False)  # nothing there yet
    first = train.prepare_run(config, False, args, 10, [], 1000)
    assert train.continue_or_start(config, args) == (config, True)  # the same command: the same run

    changed, changed_args = command("--max-steps", "7")
    with pytest.raises(cfg.ConfigError, match=r"train\.max_steps \(0 in the run, 7 now\)"):
        train.continue_or_start(changed, changed_args)

    fresh, fresh_args = command("--max-steps", "7", "--fresh")
    assert train.continue_or_start(fresh, fresh_args) == (fresh, False)
    second = train.prepare_run(fresh, False, fresh_args, 10, [], 1000)
    [archived] = tmp_path.glob("run.archived-*")
    assert json.loads((archived / "run.json").read_text())["run_id"] == first.run_id != second.run_id
    assert cfg.from_dict(cfg.load_yaml(out / "config.yaml")).train.max_steps == 7
