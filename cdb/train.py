"""`python -m cdb.train`: the contrastive objective (or a baseline) on Ray Train workers running DeepSpeed ZeRO-3.

The driver runs named phases: resolve the config, validate (data, batches, ds_config), connect
(Ray, the scale's resources), prepare the model (disk, memory plan), open the run (folder + MLflow),
evaluate the starting model, fit a TorchTrainer, evaluate the result, summarise. Each worker runs
cdb.worker.run_worker (the Trainer over cdb.strategy's Strategy). With no RAY_ADDRESS a local Ray is
started; under `ray job submit` the same command joins the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import timedelta
from functools import cache
from pathlib import Path

import psutil

from cdb import config as cfg
from cdb import raylog, tracking
from cdb.cli import Command, Flag
from cdb.data.records import DataError, load_records, write_rejected
from cdb.model import cache_dir, count_parameters, load_tokenizer, prepare_model_source
from cdb.methods import METHODS
from cdb.scales import ALIASES, SCALES
from cdb.storage import Storage, nodes_not_seeing

EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RESOURCES = 4
EXIT_FAILED = 1
EXIT_EVAL = 5  # trained and exported, but an evaluation failed (tag cdb.<prefix>.failed); the same command evaluates again
EXIT_STOPPED = 75  # SIGTERM/SIGINT: checkpointed and stopped cleanly; the same command continues


@cache
def command() -> Command:
    scales = ", ".join(list(SCALES) + list(ALIASES))
    flags = (
        Flag("--scale", help=f"scale preset ({scales}); default tiny"),
        Flag("--model", key="scale.model", metavar="ID_OR_DIR", help="HF hub id or local directory instead of the scale's model"),
        Flag("--data", key="data.path", metavar="PATH_OR_ID", help="JSONL/parquet file, save_to_disk directory or HF dataset "
             "id; empty: the embedded dataset"),
        Flag("--method", key="objective.method", choices=list(METHODS), help="training objective"),
        Flag("--max-steps", key="train.max_steps", type=int, metavar="N", help="optimizer steps; 0 = as many as --epochs take"),
        Flag("--epochs", key="train.epochs", type=int, metavar="N", help="passes over the data when --max-steps is 0"),
        Flag("--num-workers", key="scale.num_workers", type=int, metavar="N", help="Ray Train workers, one DeepSpeed rank each"),
        Flag("--no-gpu", key="scale.gpus_per_worker", const=0, help="train on CPU whatever the scale says"),
        Flag("--output-dir", key="train.output_dir", metavar="DIR", help="run folder: config, checkpoints, model; "
             "empty: runs/<scale>-<method>"),
        Flag("--storage-path", key="train.storage_path", metavar="URI", help="object store for checkpoints, model and "
             "evaluation outputs, e.g. s3://bucket/path; empty: the run folder"),
        Flag("--tracking-uri", key="tracking.uri", metavar="URI", help="MLflow store; empty: $MLFLOW_TRACKING_URI or "
             "sqlite:///<cwd>/mlflow.db"),
        Flag("--experiment", key="tracking.experiment", metavar="NAME", help="MLflow experiment"),
        Flag("--run-name", key="tracking.run_name", metavar="NAME", help="MLflow run name"),
        Flag("--resume", action="store_true", help="continue the run in --output-dir with its saved config.yaml, this "
             "command's flags and --set on top (without it, the same command continues the run; another config is refused)"),
        Flag("--fresh", action="store_true", help="start a new run even if --output-dir holds one: that folder is renamed "
             "to <folder>.archived-<time>"),
    )
    return Command("cdb.train", "python -m cdb.train", __doc__.split("\n")[0], flags, defaults=cfg.resolve().flat(),
                   what="training")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = command().parse(argv)
    if args.resume and args.fresh:
        command().parser.error("--resume and --fresh: one or the other")
    return args


def command_flags(args: argparse.Namespace) -> dict:
    """The command's flags as config keys."""
    return command().keys(args)


def config_from_args(args: argparse.Namespace) -> cfg.Config:
    return cfg.with_run_output_dir(cfg.resolve(config_file=args.config, flags=command_flags(args), sets=args.set,
                                               scale=args.scale))


RUN_RECORD = ("config.yaml", "run.json")
"""The files in OUTPUT_DIR that make it a run (the resolved config; the MLflow run and Ray run name);
kept in an object-store train.storage_path too, so that a new cluster finds the run there."""


def keep_run_record(config: cfg.Config) -> None:
    """A copy of the run's record in its object store (nothing to do when the storage is the run folder)."""
    storage = Storage.of(config)
    if storage.remote:
        for name in RUN_RECORD:
            storage.upload(Path(config.train.output_dir) / name, name)


def differing_keys(saved: cfg.Config, config: cfg.Config) -> list[str]:
    before, now = saved.flat(), config.flat()
    return [f"{key} ({before[key]!r} in the run, {value!r} now)" for key, value in now.items() if before[key] != value]


RAYJOB_ENV = "CDB_RAYJOB"
"""Set by the training RayJobs of k8s/ on their Ray pods: KubeRay runs this entrypoint and runs it again
on a retry (backoffLimit), a resubmission or a requeue after preemption."""


def refuse_fresh_in_rayjob() -> None:
    """--fresh in a RayJob's entrypoint would archive the run and start it over on every retry: refused."""
    if os.environ.get(RAYJOB_ENV):
        raise cfg.ConfigError(f"--fresh: refused inside a RayJob ({RAYJOB_ENV} is set): KubeRay runs this entrypoint "
                              "again on every retry, which must continue the run, not start it over; start a new run "
                              "with another --output-dir, or move the old run folder away, then apply the RayJob")


def continue_or_start(config: cfg.Config, args: argparse.Namespace) -> tuple[cfg.Config, bool]:
    """(the config to run, whether it continues the run in train.output_dir).

    Running the same command again is the same run: it continues from the latest checkpoint into the
    same MLflow run (a RayJob retry, a resubmitted job, a rerun after a crash or a stop). A different
    config against the folder's run is refused naming the keys; `--resume` continues it with this
    command's flags and --set over its saved config; `--fresh` starts a new run (prepare_run archives
    the folder). A run folder lost with its machine is restored from an object-store storage."""
    output_dir = Path(config.train.output_dir)
    saved = output_dir / "config.yaml"
    storage = Storage.of(config)
    if args.fresh:
        refuse_fresh_in_rayjob()
        if storage.remote and storage.exists("config.yaml"):
            raise cfg.ConfigError(f"--fresh: {storage.uri()} holds a run, and objects in an object store are not "
                                  "archived; give the new run its own --storage-path")
        return config, False
    if storage.remote and not saved.is_file() and storage.exists("config.yaml"):
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_RECORD:
            if storage.exists(name):
                storage.download(output_dir / name, name)
        print(f"[cdb] run record restored from {storage.uri()}", flush=True)
    if args.resume:
        if not saved.is_file():
            raise cfg.ConfigError(f"--resume: {saved} not found; nothing to resume in {output_dir}")
        if not args.config:  # the run's own resolved config, with this command's flags and --set on top
            config = cfg.with_run_output_dir(cfg.resolve(config_file=str(saved), flags=command_flags(args), sets=args.set,
                                                         scale=args.scale))
        return config, True
    if not saved.is_file():
        return config, False
    try:
        previous = cfg.from_dict(cfg.load_yaml(saved), str(saved))
    except cfg.ConfigError as exc:
        raise cfg.ConfigError(f"{saved}: {exc}; continue it with --resume, or start anew with --fresh") from None
    differing = differing_keys(previous, config)
    if differing:
        raise cfg.ConfigError(f"{output_dir} holds a run with another config: {'; '.join(differing)}. Run its own "
                              "command to continue it, --resume to continue it with these changes, --fresh to archive "
                              "it and start anew, or choose another --output-dir")
    print(f"[cdb] continuing the run in {output_dir}", flush=True)
    return config, True


def check_batches(config: cfg.Config, n_records: int) -> str | None:
    """A message when the data cannot fill one optimizer step on every worker, else None: the minimum
    number of records and the settings that need fewer."""
    from cdb.data.batch import micro_batches_per_epoch
    from cdb.data.records import validation_count

    scale, share = config.scale, config.data.val_share
    n_sources = min(n_records, config.data.max_records or n_records)
    held_out = validation_count(n_sources, share)  # never trained on
    if micro_batches_per_epoch(n_sources - held_out, scale.micro_batch, scale.num_workers) >= scale.grad_accum:
        return None

    def minimum(workers: int, val_share: float) -> int:
        step = scale.micro_batch * scale.grad_accum * workers
        return next(n for n in range(step, 2 * step + 10) if n - validation_count(n, val_share) >= step)

    step = scale.micro_batch * scale.grad_accum * scale.num_workers
    ways = [f"--set data.val_share=0 (then {minimum(scale.num_workers, 0)})"] if share > 0 else []
    if scale.num_workers > 1:
        ways.insert(0, f"--num-workers 1 (then {minimum(1, share)})")
    return (f"{n_sources} records, {held_out} of them held out for validation (data.val_share {share}), leave "
            f"{n_sources - held_out} training sources: one optimizer step takes micro_batch {scale.micro_batch} x "
            f"grad_accum {scale.grad_accum} x {scale.num_workers} workers = {step}. Give at least "
            f"{minimum(scale.num_workers, share)} records" + (", or train with fewer: " + ", ".join(ways) if ways else ""))


def output_not_writable(config: cfg.Config) -> str | None:
    """A message if the output folder cannot be created or written on this node, else None."""
    target = Path(config.train.output_dir)
    existing = next(p for p in [target, *target.parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):  # a real write: permission bits do not bind root
            pass
    except OSError as exc:
        return f"train.output_dir: {target} cannot be created or written ({existing}: {exc.strerror})"
    return None


def output_too_small(config: cfg.Config, parameters: int) -> str | None:
    """A message if the output folder cannot hold the checkpoints and the model, else None."""
    if config.train.storage_path:  # checkpoints and the model go to the object store
        return None
    target = Path(config.train.output_dir)
    existing = next(p for p in [target, *target.parents] if p.exists())
    # fp32 master weights + Adam moments + weights: ~16 bytes per parameter per kept checkpoint
    # (plus one being written), and the exported model.
    need = parameters * (16 * (config.train.keep_checkpoints + 1) + 4)
    free = shutil.disk_usage(existing).free
    if need > free:
        return (f"train.output_dir: {target} has {free / 2**30:.1f} GiB free, the run needs about "
                f"{need / 2**30:.1f} GiB for {config.train.keep_checkpoints} checkpoints and the model")
    return None


# --- the driver ---------------------------------------------------------------------------------


def _root_cause(exc: Exception) -> str:
    """The worker's own exception line out of Ray's wrapped error (the traceback is printed above)."""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith((" ", "Traceback", "["))]
    # "cdb.loop.NonFiniteLoss: ..." -> "NonFiniteLoss: ...": the class name is what the user needs
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", lines[-1]) if lines else type(exc).__name__


def _failure(exc: Exception) -> str:
    """"Type: message" of an exception, the worker's own for an error Ray brought back."""
    from ray.exceptions import RayError

    return _root_cause(exc) if isinstance(exc, RayError) else f"{type(exc).__name__}: {exc}"


def _fail(code: int, message: str) -> int:
    print(f"cdb.train: error: {message}", file=sys.stderr)
    return code


def _ray_init(config: cfg.Config) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    raylog.plain_prefixes_off_a_terminal()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, runtime_env=raylog.RUNTIME_ENV)
        return
    # A cluster of this process alone has no node to lose to preemption: no watcher actor (a process
    # more at every start, and a line of Ray's own on the console). Its workers inherit this variable.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # One folder per driver: two local clusters sharing one would find each other and clash.
    temp_dir = Path(tempfile.gettempdir()) / f"cdb-ray-{os.getuid()}" / str(os.getpid())
    ray.init(num_cpus=max(os.cpu_count() or 1, config.scale.num_workers), include_dashboard=False,
             _temp_dir=str(temp_dir), configure_logging=False, log_to_driver=True,
             runtime_env=raylog.RUNTIME_ENV)


def failed_tag(what: str) -> str:
    """The run's tag saying why `what` (eval_base, eval, delta) failed; empty once it succeeded."""
    return tracking.eval_tag(what, "failed")


def record_outcome(run: tracking.RunRecord, what: str, failure: str | None) -> str | None:
    """`failure` ("Type: message", or None for success) as the run's tag failed_tag(what), said on the
    console when there is one; returns it."""
    if failure:
        print(f"[cdb] error: {what} failed: {failure}", flush=True)
    log_lineage(run, f"outcome of {what}", lambda r: r.set_tags({failed_tag(what): failure or ""}))
    return failure


def evaluation_copies(config: cfg.Config) -> tuple[int, int]:
    """(copies of the model, GPUs per copy) that evaluate on the training workers' resources: on CPU
    one copy per worker; on GPUs the memory planner's placement (cdb.memory.evaluation_plan) for this
    cluster's nodes, each copy on as many of one node's GPUs as hold it (a 70B model in bf16 takes
    two 80 GiB GPUs: four copies per 8-GPU node, not one per worker)."""
    from cdb.eval.remote import on_cluster
    from cdb.memory import evaluation_plan
    from cdb.perf import gpu_memory_bytes

    scale = config.scale
    if not scale.gpus_per_worker:
        return scale.num_workers, 0
    import ray

    per_node = max(int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node["Alive"])
    plan = evaluation_plan(config, on_cluster(gpu_memory_bytes, 1)(), per_node)
    if not plan.fits:
        raise RuntimeError(plan.describe())
    return plan.copies, plan.gpus_per_copy


def run_eval(config: cfg.Config, model: str, prefix: str, run: tracking.RunRecord, output_dir: Path) -> str | None:
    """cdb.eval into this run under `prefix/` (eval_base: before, eval: after), on the training
    workers' resources (evaluation_copies: copies of the model in the scale's precision), data-parallel
    over the items: the driver loads no weights. Returns why it failed ("Type: message", also the
    run's tag failed_tag(prefix)), or None."""
    from cdb.eval.remote import evaluate_on_cluster

    if not run.run_id:
        print(f"[cdb] warning: no MLflow run to log {prefix}/ into (server unreachable); skipping it", flush=True)
        return None
    print(f"[cdb] evaluating {model} ({config.eval.suite} suite) as {prefix}/...", flush=True)
    try:
        scale, storage = config.scale, Storage.of(config)
        copies, gpus = evaluation_copies(config)
        summary = evaluate_on_cluster(model, config.eval, copies, gpus,
                                      storage=storage if storage.remote else None, prefix=prefix,
                                      run_id=run.run_id, tracking_uri=run.tracking_uri,
                                      output_dir=output_dir / prefix, experiment=config.tracking.experiment,
                                      precision=scale.precision if gpus else "fp32")
        if storage.remote:  # the evaluation's files, kept in storage, read here by log_changes and --resume
            storage.download(output_dir / prefix, prefix)
    except Exception as exc:  # the training run is kept; the command's exit code says the evaluation failed
        return record_outcome(run, prefix, _failure(exc))
    shown = ("toxicity/mean_toxicity", "toxicity/mean_profanity", "faithfulness/entity_precision_all",
             "bias/crows_stereo_share")
    print(f"[cdb] {prefix}: " + ", ".join(f"{k} {summary['metrics'][f'{prefix}/{k}']:.4f}" for k in shown
                                          if f"{prefix}/{k}" in summary["metrics"]), flush=True)
    return record_outcome(run, prefix, None)


def shared_base_folder(config: cfg.Config) -> Path:
    """Where train.base_eval_dir keeps the base evaluation of this run's model under its evaluation
    options: one folder per (model, precision, comparable options)."""
    import hashlib

    from cdb.eval import model_slug
    from cdb.eval.estimates import comparable_options

    precision = config.scale.precision if config.scale.gpus_per_worker else "fp32"
    key = json.dumps([config.scale.model, precision, comparable_options(config.eval.for_suite().to_dict())], sort_keys=True)
    return Path(config.train.base_eval_dir) / f"{model_slug(config.scale.model)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def evaluate_base(config: cfg.Config, model_source: str, run: tracking.RunRecord, output_dir: Path) -> str | None:
    """eval_base/ of this run: the starting model evaluated here, or, with train.base_eval_dir, the
    evaluation kept there for the same model and options (made here and kept there when none is).
    A lock makes runs started at once (a sweep's parallel points) wait for one evaluation. Returns
    why it failed, or None."""
    import fcntl

    folder = output_dir / tracking.PREFIX_EVAL_BASE
    if not config.train.base_eval_dir:
        return run_eval(config, model_source, tracking.PREFIX_EVAL_BASE, run, output_dir)
    from cdb.eval import log_saved

    shared = shared_base_folder(config)
    shared.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{shared}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (shared / "eval.json").is_file():
            print(f"[cdb] base model evaluation: the one kept in {shared}", flush=True)
            if folder.exists():
                shutil.rmtree(folder)
            shutil.copytree(shared, folder)
            if run.run_id:
                log_saved(folder, tracking.attach(run.tracking_uri, run.run_id))
            storage = Storage.of(config)
            if storage.remote:  # kept with the run, as an evaluation made here would be
                storage.upload(folder, tracking.PREFIX_EVAL_BASE)
            return record_outcome(run, tracking.PREFIX_EVAL_BASE, None)
        failure = run_eval(config, model_source, tracking.PREFIX_EVAL_BASE, run, output_dir)
        if failure is None and (folder / "eval.json").is_file():
            shutil.copytree(folder, shared.with_name(shared.name + ".part"), dirs_exist_ok=True)
            os.replace(shared.with_name(shared.name + ".part"), shared)
        return failure


def log_changes(run: tracking.RunRecord, output_dir: Path, gpus: int = 0) -> str | None:
    """delta/ on this run: the trained model against the starting one, paired over their items, and
    the length-matched toxicity of both (cdb.eval.toxicity.log_length_matched; its cut texts scored
    in a Ray task with `gpus` GPUs, as an evaluation is). Returns why it failed, or None (a change
    withheld because the two evaluations are not comparable is no failure)."""
    from cdb.eval.estimates import log_changes as log

    if not run.run_id:
        return None
    try:
        result = log(tracking.attach(run.tracking_uri, run.run_id), output_dir)
    except Exception as exc:  # like an evaluation problem: the run is kept, the exit code says so
        return record_outcome(run, tracking.PREFIX_DELTA, f"{type(exc).__name__}: {exc}")
    if result["withheld"]:
        print(f"[cdb] change against the base model withheld: {result['withheld']}", flush=True)
        return record_outcome(run, tracking.PREFIX_DELTA, None)
    try:  # toxicity with each pair of continuations cut to the shorter one's length
        from cdb.eval.remote import on_cluster
        from cdb.eval.toxicity import log_length_matched, score_length_matched

        score = on_cluster(score_length_matched, gpus)  # on an evaluation's resources, off the driver
        matched = log_length_matched(tracking.attach(run.tracking_uri, run.run_id), output_dir, score)
    except Exception as exc:
        return record_outcome(run, tracking.PREFIX_DELTA, f"length-matched toxicity: {_failure(exc)}")
    if matched:
        change = matched[tracking.PREFIX_DELTA]
        print(f"[cdb] {matched['metric']}, length-matched change: {change['value']:+.4f} "
              f"[{change['ci95_low']:+.4f}, {change['ci95_high']:+.4f}] (n {change['n']})", flush=True)
    return record_outcome(run, tracking.PREFIX_DELTA, None)


def check_resources(config: cfg.Config, available: dict) -> str | None:
    """A message saying what the scale needs and what the cluster has, or None when it fits."""
    scale = config.scale
    need_gpus = scale.num_workers * scale.gpus_per_worker
    have_gpus = int(available.get("GPU", 0))
    if need_gpus > have_gpus:
        return (f"scale '{scale.name}' needs {need_gpus} GPUs ({scale.num_workers} workers x {scale.gpus_per_worker}), "
                f"the Ray cluster has {have_gpus}; use a cluster with more GPUs, fewer --num-workers, or --no-gpu "
                "(on an autoscaling cluster: --set train.autoscaling=true)")
    have_cpus = int(available.get("CPU", 0))
    if scale.num_workers > have_cpus:
        return f"scale '{scale.name}' needs {scale.num_workers} CPUs (one per worker), the Ray cluster has {have_cpus}"
    return None


class Failure(Exception):
    """A run that cannot go on: the message for the user and the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def validate(config: cfg.Config) -> tuple[list, list]:
    """Everything the user gave, checked before anything is written: a bad run must not touch a good one
    (the data, the batches, the ds_config, and every evaluation task's data and instruments).
    Returns (records, rejected records)."""
    from cdb.strategy import build_ds_config

    try:
        records, rejected = load_records(config.data.path, config.data.split, config.data.on_bad_record)
    except DataError as exc:
        raise Failure(EXIT_DATA, str(exc)) from None
    problem = check_batches(config, len(records))
    if problem:
        raise Failure(EXIT_DATA, problem)
    try:
        build_ds_config(config, config.scale.num_workers)
    except cfg.ConfigError as exc:
        raise Failure(EXIT_CONFIG, str(exc)) from None
    if config.eval.suite != "off":  # every evaluation task's data and instruments, before anything trains
        from cdb.eval import preflight

        problem = preflight(config.eval, key="eval.tasks")
        if problem:
            raise Failure(EXIT_CONFIG, f"eval: {problem}")
        if config.eval.left_out():
            print(f"[cdb] eval: {config.eval.suite} suite without {', '.join(config.eval.left_out())}: their data does "
                  f"not ship and was not given (--set eval.{'=... / eval.'.join(config.eval.left_out())}=PATH_OR_HUB_ID)",
                  flush=True)
    return records, rejected


def check_storage(config: cfg.Config) -> None:
    """On a cluster joined (RAY_ADDRESS), refuse before anything is trained a storage that not every
    node sees as the same: the driver writes a token there and a task on each node reads it."""
    if not os.environ.get("RAY_ADDRESS"):
        return  # a local Ray: one node, the driver's own
    storage = Storage.of(config)
    key = "train.storage_path" if config.train.storage_path else "train.output_dir"
    # The probe creates a missing run folder; a run refused later (the memory plan) leaves none behind.
    created = None if storage.remote else next((p for p in reversed([Path(storage.root), *Path(storage.root).parents])
                                                 if not p.exists()), None)
    try:
        missing = nodes_not_seeing(storage)
    except OSError as exc:
        raise Failure(EXIT_CONFIG, f"{key}: cannot write to {storage.uri()}: {exc}") from None
    finally:
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created)
    if missing:
        raise Failure(EXIT_CONFIG, f"{key}: {storage.uri()} is not the same folder on every node of the Ray cluster, "
                      f"and every node writes there (checkpoints, the model). Not seen by: {'; '.join(missing)}. Use a "
                      "folder on a mount that every node shares (on k8s the RWX volume under /shared) as --output-dir, "
                      "or an object store as --storage-path (s3://BUCKET/PATH, gs://BUCKET/PATH)")


def connect(config: cfg.Config) -> None:
    """Start or join Ray, and check the cluster can hold the scale."""
    import ray

    _ray_init(config)
    # MLflow's default (7 retries, backoff 2) waits ~4 minutes per request on a dead server; the
    # driver's few requests get 2 retries, and what cannot reach the server waits for `cdb.sync`.
    # Set after ray.init so that local workers keep their own, stricter defaults (no retries).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    problem = None if config.train.autoscaling else check_resources(config, ray.cluster_resources())
    if problem:
        raise Failure(EXIT_RESOURCES, problem)


def prepare_model(config: cfg.Config) -> tuple[str, int]:
    """(local model source, parameter count), after checking the output folder's room and the memory plan."""
    from cdb.memory import estimate_memory

    try:
        model_source = prepare_model_source(config.scale.model)
        tokenizer = load_tokenizer(model_source, config.scale.trust_remote_code)
        parameters = count_parameters(model_source, len(tokenizer), config.scale.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise Failure(EXIT_CONFIG, f"scale.model {config.scale.model!r}: {exc}") from None
    problem = output_too_small(config, parameters)
    if problem:
        raise Failure(EXIT_CONFIG, problem)
    memory = estimate_memory(config, config.scale.num_workers * max(config.scale.gpus_per_worker, 1), None)
    if not memory.fits:
        raise Failure(EXIT_RESOURCES, memory.message)
    return model_source, parameters


def trained_parameters(config: cfg.Config, lm_parameters: int) -> int:
    """What the run trains: the LM's parameters plus the contrast head's, for methods that have one."""
    from cdb.memory import contrast_head_params, model_shape

    if not METHODS[config.objective.method].contrast_head:
        return lm_parameters
    hidden = model_shape(config.scale.model, config.scale.trust_remote_code).hidden
    return lm_parameters + contrast_head_params(hidden, config.objective.contrastive.projection_dim)


def archive(output_dir: Path) -> Path:
    """Rename a run folder out of the way (never delete it): <folder>.archived-<time>."""
    target = output_dir.with_name(f"{output_dir.name}.archived-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(output_dir, target)
    return target


def prepare_run(config: cfg.Config, continuing: bool, args: argparse.Namespace, n_records: int, rejected: list,
                parameters: int) -> tracking.RunRecord:
    """The run folder (config.yaml, run.json) and its MLflow run: new (the folder archived first with
    --fresh), or the folder's own when continuing, its record left as it is (config.yaml rewritten
    only by --resume, which may change it)."""
    output_dir = Path(config.train.output_dir)
    run_file = output_dir / tracking.RUN_FILE
    if args.resume and not run_file.is_file():
        raise Failure(EXIT_CONFIG, f"--resume: {run_file} not found; nothing to resume")
    if args.fresh and output_dir.exists():
        print(f"[cdb] --fresh: the previous run folder is now {archive(output_dir)}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not continuing or args.resume:
        config.save(output_dir / "config.yaml")
    if rejected:
        write_rejected(rejected, output_dir / "rejected.jsonl")

    saved = tracking.RunRecord.read(output_dir) if continuing and run_file.is_file() else None
    record = saved or tracking.training_record(config, {
        "zero_stage": 3, "records": n_records, "rejected_records": len(rejected),
        "parameters": trained_parameters(config, parameters), "parameters_lm": parameters})
    record = tracking.start_job_run(record, output_dir)
    if record != saved:
        record.write(output_dir)
    keep_run_record(config)
    return record


def log_lineage(run: tracking.RunRecord, what: str, log) -> None:
    """Lineage (the data in, the model out) through the tracking door; never a reason to fail a run."""
    if not run.run_id:
        return
    try:
        log(tracking.attach(run.tracking_uri, run.run_id))
    except Exception as exc:  # an unreachable server: the run goes on; the lineage is what is lost
        print(f"[cdb] warning: could not record the {what} in MLflow: {type(exc).__name__}: {exc}", flush=True)


def make_trainer(config: cfg.Config, run: tracking.RunRecord, model_source: str, stop):
    """Ray Train's TorchTrainer over cdb's worker loop, checkpointing into the run's storage; `stop`:
    the StopRequest actor its workers read."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cdb.worker import WorkerArgs, train_loop_per_worker

    scale, cpu, storage = config.scale, config.scale.gpus_per_worker == 0, Storage.of(config)
    args = WorkerArgs(config=config, model_source=model_source, cpu=cpu, tracking_uri=run.tracking_uri,
                      run_id=run.run_id, torch_extensions_dir=str(cache_dir() / "torch_extensions"))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"args": args, "stop": stop},
        torch_config=TorchConfig(backend="gloo" if cpu else "nccl"),
        scaling_config=ScalingConfig(
            num_workers=scale.num_workers, use_gpu=not cpu,
            resources_per_worker={"CPU": 1, **({} if cpu else {"GPU": scale.gpus_per_worker})},
        ),
        run_config=RunConfig(
            name=run.ray_name,  # the same name when continuing: Ray Train restores its latest checkpoint
            storage_path=storage.path("checkpoints"), storage_filesystem=storage.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            logging_config=raylog.train_logging_config(),
        ),
    )


def fit(trainer, stop):
    """trainer.fit() with SIGTERM/SIGINT (`ray job stop`, a pod's termination) turned into a stop
    request that reaches every rank on every node through the StopRequest actor `stop`: rank 0 reads
    it at the next step and all-reduces it, every rank writes its part of a checkpoint and returns.
    Returns (Ray's result, whether a stop was requested)."""
    stop_signals, received = [], threading.Event()

    def request_stop(signum, _frame):
        stop_signals.append(signum)
        received.set()
        print(f"\n[cdb] {signal.Signals(signum).name}: checkpointing at the next step, then stopping", flush=True)

    def forward() -> None:  # a Ray call of its own thread: the handler interrupts the driver's Ray calls
        received.wait()
        if stop_signals:
            stop.request.remote()

    threading.Thread(target=forward, name="cdb-stop-request", daemon=True).start()
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return trainer.fit(), bool(stop_signals)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        received.set()


def finish(config: cfg.Config, run: tracking.RunRecord, status: str) -> None:
    """The MLflow run's final status (spooled metrics replayed), and the run record kept in storage."""
    tracking.finish_job_run(run, Path(config.train.output_dir), status)
    keep_run_record(config)


def driver_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_summary(config: cfg.Config, run: tracking.RunRecord, result, elapsed: float, rss_before_eval: float,
                  failures: dict[str, str]) -> None:
    output_dir, storage = Path(config.train.output_dir), Storage.of(config)
    uri = run.tracking_uri
    checkpoint = storage.uri(result.checkpoint.path[len(storage.root):].strip("/")) if result.checkpoint else "(none)"
    print(f"\n[cdb] done in {timedelta(seconds=round(elapsed))}: final loss {result.metrics.get('loss', float('nan')):.4f}")
    print(f"  model:       {storage.uri('model')}")
    print(f"  checkpoints: {checkpoint}")
    print(f"  config:      {output_dir / 'config.yaml'}")
    # The driver (the Ray head on a cluster) holds no weights: evaluation and training ran as Ray tasks,
    # so its peak hardly moves once evaluation starts.
    print(f"  driver:      peak RSS {driver_peak_rss_mib():,.0f} MiB ({rss_before_eval:,.0f} MiB before evaluation)")
    for what, why in failures.items():
        print(f"  FAILED:      {what}/ ({why}); tag {failed_tag(what)}")
    print(f"  MLflow run:  {run.run_id} (experiment '{config.tracking.experiment}', {tracking.masked(uri)})")
    try:
        link = tracking.run_url(uri, tracking.experiment_id(uri, config.tracking.experiment), run.run_id)
    except Exception:  # a server gone since the run finished (or never reached): the id above is what there is
        return
    print(f"  MLflow UI:   {tracking.ui_hint(uri, link)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, continuing = continue_or_start(config_from_args(args), args)
        records, rejected = validate(config)
        unwritable = output_not_writable(config)
        if unwritable:  # before Ray starts: a mistyped path fails in seconds
            raise Failure(EXIT_CONFIG, unwritable)
        connect(config)
        check_storage(config)
        model_source, parameters = prepare_model(config)
        run = prepare_run(config, continuing, args, len(records), rejected, parameters)
    except cfg.ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except Failure as exc:
        return _fail(exc.code, str(exc))

    import ray

    from cdb.data.lineage import dataset_identity
    from cdb.worker import StopRequest

    log_lineage(run, "training data",
                lambda r: r.log_training_data(dataset_identity(config.data.path, config.data.split, records)))
    output_dir, storage = Path(config.train.output_dir), Storage.of(config)
    # On the driver's node, as Ray Train's controller is: a worker node lost mid-run must not take it along.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    stop = ray.remote(num_cpus=0, scheduling_strategy=here)(StopRequest).remote()
    trainer = make_trainer(config, run, model_source, stop)
    rss_before_eval = driver_peak_rss_mib()
    failures: dict[str, str] = {}  # what (eval_base, eval, delta) -> why it failed
    if config.eval.suite != "off":
        from cdb.eval.estimates import options_changed

        if storage.remote and storage.exists(tracking.PREFIX_EVAL_BASE, "eval.json"):
            storage.download(output_dir / tracking.PREFIX_EVAL_BASE, tracking.PREFIX_EVAL_BASE)
        stale = options_changed(output_dir / tracking.PREFIX_EVAL_BASE, config.eval.for_suite().to_dict())
        if stale:  # a new run, or a continued one whose evaluation options changed
            if (output_dir / tracking.PREFIX_EVAL_BASE).exists():
                print(f"[cdb] re-evaluating the base model: {stale}", flush=True)
            failures[tracking.PREFIX_EVAL_BASE] = evaluate_base(config, model_source, run, output_dir)
    try:
        result, stop_requested = fit(trainer, stop)
    except Exception as exc:  # Ray wraps worker errors; the run is marked failed, the message shown
        finish(config, run, "FAILED")
        return _fail(EXIT_FAILED, f"training failed: {_root_cause(exc)}")
    if stop_requested and result.metrics.get("stopped"):
        finish(config, run, "KILLED")
        print(f"[cdb] stopped at step {result.metrics['step']}; the same command continues the run")
        return EXIT_STOPPED
    log_lineage(run, "exported model", lambda r: r.log_model_location(storage.uri("model"), step=result.metrics["step"]))
    if config.eval.suite != "off":
        # In an object store, the evaluation task fetches the model to its own node.
        failures[tracking.PREFIX_EVAL] = run_eval(config, storage.uri("model") if storage.remote else storage.path("model"),
                                                  tracking.PREFIX_EVAL, run, output_dir)
        if (output_dir / tracking.PREFIX_EVAL_BASE / "eval.json").is_file() and not failures[tracking.PREFIX_EVAL]:
            failures[tracking.PREFIX_DELTA] = log_changes(run, output_dir, config.scale.gpus_per_worker)
    failures = {what: why for what, why in failures.items() if why}
    finish(config, run, "FINISHED")
    print_summary(config, run, result, time.time() - psutil.Process().create_time(), rss_before_eval, failures)
    if failures:
        return _fail(EXIT_EVAL, "evaluation failed: " + "; ".join(f"{what}: {why}" for what, why in failures.items())
                     + "; the model is exported; the same command evaluates again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
