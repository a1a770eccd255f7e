"""A sweep under chaos on the ClusterBed of conftest (three nodes, every node its own /tmp and cache,
token auth): `python -m cdb.sweep --scales tiny --methods contrastive,sft --seeds 2` submitted with
`ray job submit`, as KubeRay runs it, tracking into a real `mlflow server`, while this test strikes
each of its four points once, at a random step, with one of four faults:

- worker:  a training worker SIGKILLed (Ray Train restarts the group from the latest checkpoint);
- raylet:  a worker node's raylet SIGKILLed, the node then back as a fresh pod (as k8s restarts one);
- driver:  the sweep's driver and every process under it SIGKILLed, then the same command submitted
           again (as KubeRay does on a retry);
- mlflow:  the MLflow server SIGKILLed, then started again on the same store.

Every point must end with exactly one MLflow run, a step axis without gaps or repeats, a model that
loads, and no file of its own in another point's folder. The faults come from a seed printed at the
start; CDB_CHAOS_SEED=N replays a run.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import free_port, start_mlflow_server, stop_server

pytestmark = pytest.mark.integration  # a three-node Ray cluster, an mlflow server, a sweep of four training runs

STEPS = 6
POINTS = [f"tiny-{method}-seed{seed}" for method in ("contrastive", "sft") for seed in (0, 1)]
FAULTS = ("worker", "raylet", "driver", "mlflow")
STEP_LINE = re.compile(r"\[cdb\] step (\d+)/")


def chaos_plan(seed: int) -> dict[str, tuple[str, int]]:
    """point -> (its fault, the step at which it strikes): each fault once, in the first half of a run."""
    rng = random.Random(seed)
    faults = list(FAULTS)
    rng.shuffle(faults)
    return {point: (fault, rng.randint(2, STEPS // 2)) for point, fault in zip(POINTS, faults)}


def latest_step(log) -> int:
    """The last training step the point's log shows since its latest launch (0 before the first)."""
    if not log.is_file():
        return 0
    text = log.read_text(errors="replace").rsplit("\n=== ", 1)[-1]
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(text)]
    return steps[-1] if steps else 0


def processes(*words: str) -> list[psutil.Process]:
    """Processes whose command line holds every one of `words`."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if all(word in line for word in words):
            found.append(process)
    return found


def kill_tree(roots: list[psutil.Process]) -> None:
    victims = [tree for root in roots for tree in (root, *root.children(recursive=True))]
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def test_a_sweep_survives_a_killed_worker_raylet_driver_and_tracking_server(cluster_bed):
    bed = cluster_bed
    seed = int(os.environ.get("CDB_CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
    plan = chaos_plan(seed)
    rng = random.Random(seed + 1)  # which worker and which node
    print(f"\n[chaos] seed {seed} (CDB_CHAOS_SEED={seed} replays it): {plan}", flush=True)
    started = time.monotonic()
    work = bed.shared / f"chaos-{seed}"
    out, db, port = work / "sweep", work / "mlflow.db", free_port()
    work.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = [start_mlflow_server(db, work / "artifacts", port)]
    command = [sys.executable, "-m", "cdb.sweep", "--scales", "tiny", "--methods", "contrastive,sft", "--seeds", "2",
               "--max-steps", str(STEPS), "--output-dir", str(out), "--tracking-uri", uri,
               "--set", "train.checkpoint_every=2",
               # a small dataset, tagged by the regex tagger: every (re)started worker tokenizes it, on a node whose cache is empty
               "--set", "data.max_records=16", "--set", "data.entity_tagger=regex"]
    submissions = [f"chaos-{seed}-1"]
    try:
        bed.submit(submissions[-1], command)
        pending = dict(plan)
        while pending:
            assert not bed.jobs().get_job_status(submissions[-1]).is_terminal(), \
                bed.jobs().get_job_logs(submissions[-1])[-4000:]
            due = [p for p, (_, step) in pending.items() if latest_step(out / "logs" / f"{p}.log") >= step]
            if not due:
                time.sleep(0.2)
                continue
            point = due[0]
            fault, step = pending.pop(point)
            print(f"[chaos] {time.monotonic() - started:.0f} s: {fault} at step {step} of {point}", flush=True)
            struck = time.monotonic()
            if fault == "worker":
                workers = processes("RayTrainWorker")
                assert workers, "no training worker to kill"
                rng.choice(workers).kill()
            elif fault == "raylet":
                number = rng.choice([1, 2])
                bed.raylet(number).kill()
                bed.restart_worker(number)
            elif fault == "driver":
                kill_tree(processes("cdb.sweep", str(out)))
                bed.wait_for_end(submissions[-1], timeout=120)
                deadline = time.monotonic() + 120
                while processes("cdb.train", str(out)):  # every process of the old driver gone, as with its pod
                    assert time.monotonic() < deadline
                    time.sleep(0.5)
                submissions.append(f"chaos-{seed}-{len(submissions) + 1}")
                bed.submit(submissions[-1], command)
            else:
                stop_server(server.pop(), signal.SIGKILL)
                server.append(start_mlflow_server(db, work / "artifacts", port))
            print(f"[chaos] {fault} dealt with in {time.monotonic() - struck:.0f} s", flush=True)
        info, logs = bed.wait_for_end(submissions[-1], timeout=400)
        assert info.status == "SUCCEEDED", logs[-6000:]
        print(f"[chaos] the sweep finished after {time.monotonic() - started:.0f} s", flush=True)
        check_points(out, uri)
    finally:
        for proc in server:
            stop_server(proc)
        kill_tree(processes("cdb.sweep", str(out)))


def check_points(out, uri: str) -> None:
    """One MLflow run per point, steps 1..STEPS once each, a model that loads, and each point's files
    (config, run record, checkpoints) its own."""
    from transformers import AutoModelForCausalLM

    state = json.loads((out / "sweep.json").read_text())
    assert {p: e["status"] for p, e in state["points"].items()} == {p: "FINISHED" for p in POINTS}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(state["experiment"]).experiment_id
    assert len(client.search_runs([experiment], "tags.`cdb.method` = 'sweep'")) == 1
    seen_runs, seen_names = set(), set()
    for point in POINTS:
        folder = out / point
        [run] = client.search_runs([experiment], f"tags.`mlflow.runName` = '{point}'")
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == state["parent_run_id"]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, STEPS + 1)), (point, steps)
        assert AutoModelForCausalLM.from_pretrained(folder / "model").num_parameters() > 0
        record = json.loads((folder / "run.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert record["run_id"] == run.info.run_id and run.data.tags["cdb.train.output_dir"] == str(folder)
        assert config["train"]["output_dir"] == str(folder) and config["objective"]["method"] == point.split("-")[1]
        assert f"seed{config['train']['seed']}" == point.split("-")[2]
        assert {p.name for p in (folder / "checkpoints").iterdir()} == {record["ray_name"]}
        assert not (folder / "metrics.jsonl").exists()  # every spooled metric replayed into its run
        seen_runs.add(record["run_id"])
        seen_names.add(record["ray_name"])
    assert len(seen_runs) == len(seen_names) == len(POINTS)
