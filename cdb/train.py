"""`python -m cdb.train`: the contrastive objective (or a baseline) on Ray Train workers running DeepSpeed ZeRO-3.

Driver: resolve the config, validate the data, check the scale fits the cluster and the disk,
create the MLflow run, evaluate the starting model, start a TorchTrainer, evaluate the result.
Workers: tokenize, build the engine, train, checkpoint through Ray Train, export the model. With no RAY_ADDRESS a local Ray is started; under `ray job submit` the
same command joins the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import typing
import warnings
from datetime import timedelta
from pathlib import Path

from cdb import config as cfg
from cdb.data.records import DataError, load_records, write_rejected
from cdb.model import cache_dir, count_parameters, load_tokenizer, prepare_model_source
from cdb.scales import ALIASES, SCALES

EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RESOURCES = 4
EXIT_FAILED = 1
EXIT_STOPPED = 75  # SIGTERM/SIGINT: checkpointed and stopped cleanly; rerun with --resume
STOP_FILE = ".stop-requested"

METHODS = typing.get_args(typing.get_type_hints(cfg.ObjectiveConfig)["method"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    scales = ", ".join(list(SCALES) + list(ALIASES))
    p = argparse.ArgumentParser(prog="python -m cdb.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", help=f"scale preset ({scales}); default tiny")
    p.add_argument("--model", help="HF hub id or local directory, overriding the scale's model (scale.model)")
    p.add_argument("--data", help="JSONL/parquet file, save_to_disk directory or HF dataset id (data.path); default: the embedded dataset")
    p.add_argument("--method", choices=METHODS, help="training objective (objective.method)")
    p.add_argument("--max-steps", type=int, help="optimizer steps; 0 = as many as --epochs take (train.max_steps)")
    p.add_argument("--epochs", type=int, help="passes over the data when --max-steps is 0 (train.epochs)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers, one DeepSpeed rank each (scale.num_workers)")
    p.add_argument("--no-gpu", action="store_true", help="train on CPU whatever the scale says (scale.gpus_per_worker=0)")
    p.add_argument("--output-dir", help="run folder: config, checkpoints, model (train.output_dir); default runs/<scale>-<method>")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (tracking.uri); default $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db")
    p.add_argument("--experiment", help="MLflow experiment (tracking.experiment)")
    p.add_argument("--run-name", help="MLflow run name (tracking.run_name)")
    p.add_argument("--config", help="YAML file with config sections (scale, data, objective, optim, train, eval, tracking)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override any config field; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its latest checkpoint, with its saved config.yaml")
    return p.parse_args(argv)


FLAG_KEYS = {
    "model": "scale.model", "data": "data.path", "method": "objective.method", "max_steps": "train.max_steps",
    "epochs": "train.epochs", "num_workers": "scale.num_workers", "output_dir": "train.output_dir",
    "tracking_uri": "tracking.uri", "experiment": "tracking.experiment", "run_name": "tracking.run_name",
}


def config_from_args(args: argparse.Namespace) -> cfg.Config:
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None}
    if args.no_gpu:
        flags["scale.gpus_per_worker"] = 0
    config = cfg.resolve(config_file=args.config, flags=flags, sets=args.set, scale=args.scale)
    if args.resume and not args.config:
        # The run's own resolved config, with this command's flags and --set on top.
        saved = Path(config.train.output_dir) / "config.yaml"
        if not saved.is_file():
            raise cfg.ConfigError(f"--resume: {saved} not found; nothing to resume in {config.train.output_dir}")
        config = cfg.resolve(config_file=str(saved), flags=flags, sets=args.set, scale=args.scale)
    return config


def check_batches(config: cfg.Config, n_records: int) -> str | None:
    """A message when the data cannot fill one optimizer step on every worker, else None."""
    from cdb.data.batch import micro_batches_per_epoch

    scale = config.scale
    n_sources = min(n_records, config.data.max_records or n_records)
    if micro_batches_per_epoch(n_sources, scale.micro_batch, scale.num_workers) < scale.grad_accum:
        return (f"{n_sources} sources cannot fill one optimizer step: it takes micro_batch {scale.micro_batch} x "
                f"grad_accum {scale.grad_accum} x {scale.num_workers} workers = "
                f"{scale.micro_batch * scale.grad_accum * scale.num_workers} sources")
    return None


def preflight_output(config: cfg.Config, parameters: int) -> str | None:
    """A message if the output folder cannot be written or cannot hold the checkpoints, else None."""
    target = Path(config.train.output_dir)
    existing = next(p for p in [target, *target.parents] if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):  # a real write: permission bits do not bind root
            pass
    except OSError as exc:
        return f"train.output_dir: {target} cannot be created or written ({existing}: {exc.strerror})"
    # fp32 master weights + Adam moments + weights: ~16 bytes per parameter per kept checkpoint
    # (plus one being written), and the exported model.
    need = parameters * (16 * (config.train.keep_checkpoints + 1) + 4)
    free = shutil.disk_usage(existing).free
    if need > free:
        return (f"train.output_dir: {target} has {free / 2**30:.1f} GiB free, the run needs about "
                f"{need / 2**30:.1f} GiB for {config.train.keep_checkpoints} checkpoints and the model")
    return None


def total_steps(config: cfg.Config, micro_batches_per_epoch: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    return max(1, config.train.epochs * micro_batches_per_epoch // config.scale.grad_accum)


# --- the worker ---------------------------------------------------------------------------------


def _say(text: str) -> None:
    """A worker's progress line. Straight to the process's stdout: Ray Train's print() patch in
    workers tees to stdout and to its logger, which shows every line twice on the driver."""
    print(text, file=sys.__stdout__, flush=True)


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker = one DeepSpeed rank."""
    if loop["cpu"]:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before deepspeed is imported
    # A dead tracking server must cost seconds, not minutes of retries: metrics get spooled.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", loop["torch_extensions_dir"])
    # DeepSpeed 0.19 calls collectives torch 2.13 deprecates, once per step: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*", category=FutureWarning)
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist

    from cdb.data.batch import collate, micro_batches_per_epoch, assign_micro_batches, special_ids, tokenize_records
    from cdb.data.entities import make_tagger
    from cdb.engine import Strategy
    from cdb.tracking import SPOOL_FILE, RunLogger

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    deepspeed.init_distributed(dist_backend="gloo" if loop["cpu"] else "nccl")
    config = cfg.from_dict(loop["config"])
    scale = config.scale

    tokenizer = load_tokenizer(loop["model_source"], scale.trust_remote_code)
    records, _ = load_records(config.data.path, config.data.split, "skip")
    if config.data.max_records:
        records = records[: config.data.max_records]
    if config.objective.method == "cda":
        from cdb.data.cda import counterfactual_records

        records = counterfactual_records(records)
    sources = tokenize_records(records, tokenizer, make_tagger(config.data.entity_tagger), scale.max_source_tokens, scale.max_target_tokens)
    per_epoch = micro_batches_per_epoch(len(sources), scale.micro_batch, world)
    steps = total_steps(config, per_epoch)
    _, _, pad_id = special_ids(tokenizer)

    strategy = Strategy(config, loop["model_source"], tokenizer, world, rank, steps)
    if rank == 0:
        local, total = strategy.param_counts()
        _say(f"[cdb] {total:,} parameters, {local:,} on rank 0 (ZeRO-3 over {world} ranks); {steps} steps")
    output_dir = Path(config.train.output_dir)
    logger = RunLogger(loop["tracking_uri"], loop["run_id"], rank, output_dir / SPOOL_FILE)
    micro, skipped = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = strategy.load_checkpoint(directory)
        micro, skipped = state["consumed_micro_batches"], state["skipped_micro_batches"]
        if rank == 0:
            _say(f"[cdb] resumed at step {strategy.global_step} from {checkpoint.path}")

    # After a worker-group restart the run may hold steps past the checkpoint: log none twice.
    logger.skip_logged_steps()
    from cdb.perf import device_peak_flops, flops_per_token, mfu, peak_memory_bytes

    # FLOPs per token from the model's shape, against the device's peak (measured once on CPU).
    token_flops = flops_per_token(strategy.engine.module.lm.config, scale.max_source_tokens + scale.max_target_tokens)
    peak_flops = device_peak_flops("cpu" if loop["cpu"] else torch.cuda.get_device_name(), scale.precision)
    step = strategy.global_step
    sums, tokens, in_row, metric_names = None, 0, 0, []
    epoch_plan: tuple[int, list] | None = None
    started = window_start = time.perf_counter()
    first_step, window_tokens = step, 0.0
    while step < steps:
        epoch, index = divmod(micro, per_epoch)
        if epoch_plan is None or epoch_plan[0] != epoch:
            epoch_plan = (epoch, assign_micro_batches(sources, scale.micro_batch, config.train.seed, epoch, rank, world))
        batch = collate(epoch_plan[1][index], pad_id)
        metrics, applied = strategy.micro_step(batch)
        micro += 1
        if not applied:
            skipped, in_row = skipped + 1, in_row + 1
            if in_row >= config.train.max_nonfinite_in_row:
                terms = ", ".join(f"{k}={float(metrics[k]):.4g}" for k in ("loss", "loss_ce", "loss_contrast"))
                raise NonFiniteLoss(f"step {step + 1}: non-finite loss in {in_row} micro-batches in a row ({terms}); "
                                    "lower optim.lr or check the data")
            continue
        in_row = 0
        tokens += int(batch["attention_mask"].sum())
        values = torch.stack([v.float().reshape(()).cpu() for v in metrics.values()])
        metric_names = list(metrics)
        sums = values if sums is None else sums + values
        if strategy.global_step == step:
            continue  # inside an accumulation window
        step = strategy.global_step

        # One small all-reduce per step: metrics averaged over ranks, tokens summed, stop flag.
        stop_requested = float(rank == 0 and (output_dir / STOP_FILE).exists())
        packed = torch.cat([sums / scale.grad_accum, torch.tensor([float(tokens), stop_requested])]).to(strategy.device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        averaged = dict(zip(metric_names, (packed[:-2] / world).tolist()))
        window_tokens += packed[-2].item()
        stop = packed[-1].item() > 0
        sums, tokens = None, 0

        if step % config.train.log_every == 0 or step == steps or stop:
            now = time.perf_counter()
            tokens_per_s = window_tokens / max(now - window_start, 1e-9)
            row = {f"train/{k}": v for k, v in averaged.items()}
            row.update({"train/lr": strategy.lr(), "train/grad_norm": strategy.grad_norm(),
                        "train/tokens_per_s": tokens_per_s, "train/skipped_steps": skipped,
                        "train/mfu": mfu(tokens_per_s / world, token_flops, peak_flops)})
            if step == steps or stop:  # every rank is here: gather each one's peak memory
                peaks = [None] * world
                dist.all_gather_object(peaks, peak_memory_bytes(strategy.device))
                row.update({f"train/peak_memory_gib/rank{r}": b / 2**30 for r, b in enumerate(peaks)})
            logger.log_metrics(row, step)
            if rank == 0:
                eta = (now - started) / max(step - first_step, 1) * (steps - step)
                terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in averaged.items() if k.startswith("loss_"))
                _say(f"[cdb] step {step}/{steps} | loss {averaged['loss']:.4f}" + (f" ({terms})" if terms else "")
                     + f" | {tokens_per_s:,.0f} tok/s | eta {timedelta(seconds=round(eta))}")
            window_start, window_tokens = now, 0.0

        if step % config.train.checkpoint_every == 0 or step == steps or stop:
            with tempfile.TemporaryDirectory(prefix="cdb-ckpt-") as directory:
                strategy.save_checkpoint(directory, {"step": step, "consumed_micro_batches": micro,
                                                     "skipped_micro_batches": skipped})
                ray.train.report({"step": step, "loss": averaged["loss"], "stopped": stop},
                                 checkpoint=ray.train.Checkpoint.from_directory(directory),
                                 checkpoint_dir_name=f"step_{step:07d}")
        if stop:
            if rank == 0:
                _say(f"[cdb] stop requested: checkpointed step {step}, exiting")
            return

    strategy.export(output_dir / "model")
    strategy.close()


class NonFiniteLoss(RuntimeError):
    """Too many micro-batches in a row had a non-finite loss."""


# --- the driver ---------------------------------------------------------------------------------


def _root_cause(exc: Exception) -> str:
    """The worker's own exception line out of Ray's wrapped error (the traceback is printed above)."""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith((" ", "Traceback", "["))]
    return lines[-1] if lines else type(exc).__name__


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _ray_init(config: cfg.Config) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # One folder per driver: two local clusters sharing one would find each other and clash.
    temp_dir = Path(tempfile.gettempdir()) / f"cdb-ray-{os.getuid()}" / str(os.getpid())
    ray.init(num_cpus=max(os.cpu_count() or 1, config.scale.num_workers), include_dashboard=False,
             _temp_dir=str(temp_dir), configure_logging=False, log_to_driver=True)


def run_eval(config: cfg.Config, model: str, prefix: str, run: dict, output_dir: Path) -> None:
    """cdb.eval on the driver, into this run under `prefix/` (eval_base: before, eval: after)."""
    from cdb.eval import evaluate

    if not run["run_id"]:
        print(f"[cdb] warning: no MLflow run to log {prefix}/ into (server unreachable); skipping it", flush=True)
        return
    print(f"[cdb] evaluating {model} ({config.eval.suite} suite) as {prefix}/...", flush=True)
    try:
        summary = evaluate(model, config.eval, prefix=prefix, run_id=run["run_id"],
                           tracking_uri=run["tracking_uri"], output_dir=output_dir / prefix,
                           experiment=config.tracking.experiment)
    except Exception as exc:  # an evaluation problem must not cost the training run
        print(f"[cdb] warning: {prefix} evaluation failed: {type(exc).__name__}: {exc}", flush=True)
        return
    shown = ("toxicity/mean_toxicity", "faithfulness/faithfulness", "bias/crows_stereo_share")
    print(f"[cdb] {prefix}: " + ", ".join(f"{k} {summary['metrics'][f'{prefix}/{k}']:.4f}" for k in shown
                                          if f"{prefix}/{k}" in summary["metrics"]), flush=True)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except cfg.ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc))

    # Validate everything the user gave before writing anything: a bad run must not touch a good one.
    try:
        records, rejected = load_records(config.data.path, config.data.split, config.data.on_bad_record)
    except DataError as exc:
        return _fail(EXIT_DATA, str(exc))
    problem = check_batches(config, len(records))
    if problem:
        return _fail(EXIT_DATA, problem)
    try:
        from cdb.engine import build_ds_config

        build_ds_config(config, config.scale.num_workers)
    except cfg.ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc))

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cdb import tracking

    _ray_init(config)
    # MLflow's default (7 retries, backoff 2) waits ~4 minutes per request on a dead server; the
    # driver's few requests get 2 retries, and what cannot reach the server waits for `cdb.sync`.
    # Set after ray.init so that local workers keep their own, stricter defaults (no retries).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    problem = None if config.train.autoscaling else check_resources(config, ray.cluster_resources())
    if problem:
        return _fail(EXIT_RESOURCES, problem)

    try:
        model_source = prepare_model_source(config.scale.model)
        tokenizer = load_tokenizer(model_source, config.scale.trust_remote_code)
        parameters = count_parameters(model_source, len(tokenizer), config.scale.trust_remote_code)
    except (OSError, ValueError) as exc:
        return _fail(EXIT_CONFIG, f"scale.model {config.scale.model!r}: {exc}")
    problem = preflight_output(config, parameters)
    if problem:
        return _fail(EXIT_CONFIG, problem)
    from cdb.memory import estimate_memory

    memory = estimate_memory(config, config.scale.num_workers * max(config.scale.gpus_per_worker, 1), None)
    if not memory.fits:
        return _fail(EXIT_RESOURCES, memory.message)

    output_dir = Path(config.train.output_dir)
    run_file = output_dir / tracking.RUN_FILE
    if args.resume and not run_file.is_file():
        return _fail(EXIT_CONFIG, f"--resume: {run_file} not found; nothing to resume")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STOP_FILE).unlink(missing_ok=True)
    config.save(output_dir / "config.yaml")
    if rejected:
        write_rejected(rejected, output_dir / "rejected.jsonl")

    uri = tracking.resolve_uri(config.tracking.uri)
    scale = config.scale
    params = {
        "scale": scale.name, "method": config.objective.method, "model": scale.model,
        "world_size": scale.num_workers, "zero_stage": 3, "records": len(records), "rejected_records": len(rejected),
        "parameters": parameters, **config.flat(),
    }
    tags = {"cdb.scale": scale.name, "cdb.method": config.objective.method}
    if config.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = config.tracking.parent_run_id
    if args.resume:
        run = json.loads(run_file.read_text())
    else:
        run = {"run_id": None, "ray_name": f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
               "tracking_uri": uri, "experiment": config.tracking.experiment,
               "run_name": config.tracking.run_name, "params": {k: str(v) for k, v in params.items()}, "tags": tags}
    run["run_id"] = tracking.ensure_run(run, output_dir)
    tracking.write_run_file(run, output_dir)

    cpu = scale.gpus_per_worker == 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(), "model_source": model_source, "cpu": cpu,
            "tracking_uri": run["tracking_uri"], "run_id": run["run_id"],
            "torch_extensions_dir": str(cache_dir() / "torch_extensions"),
        },
        torch_config=TorchConfig(backend="gloo" if cpu else "nccl"),
        scaling_config=ScalingConfig(
            num_workers=scale.num_workers, use_gpu=not cpu,
            resources_per_worker={"CPU": 1, **({} if cpu else {"GPU": scale.gpus_per_worker})},
        ),
        run_config=RunConfig(
            name=run["ray_name"],  # the same name on --resume: Ray Train restores its latest checkpoint
            storage_path=str(output_dir / "checkpoints"),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
        ),
    )

    stop_signals = []

    def request_stop(signum, _frame):
        # Workers see the file at the next step boundary, checkpoint, and return.
        (output_dir / STOP_FILE).touch()
        stop_signals.append(signum)
        print(f"\n[cdb] {signal.Signals(signum).name}: checkpointing at the next step, then stopping", flush=True)

    if config.eval.suite != "off" and not (output_dir / "eval_base" / "eval.json").exists():
        run_eval(config, model_source, "eval_base", run, output_dir)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; the run is marked failed, the message shown
        tracking.finish_run(run, output_dir, "FAILED")
        return _fail(EXIT_FAILED, f"training failed: {_root_cause(exc)}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        (output_dir / STOP_FILE).unlink(missing_ok=True)
    if stop_signals and result.metrics.get("stopped"):
        tracking.finish_run(run, output_dir, "KILLED")
        print(f"[cdb] stopped at step {result.metrics['step']}; continue with: python -m cdb.train --output-dir {output_dir} --resume")
        return EXIT_STOPPED
    if config.eval.suite != "off":
        run_eval(config, str(output_dir / "model"), "eval", run, output_dir)
    tracking.finish_run(run, output_dir, "FINISHED")

    elapsed = timedelta(seconds=round(time.perf_counter() - started))
    checkpoint = result.checkpoint.path if result.checkpoint else "(none)"
    db_hint = f"--backend-store-uri {uri}" if uri.startswith(("sqlite:", "file:", "postgresql:", "mysql:")) else ""
    print(f"\n[cdb] done in {elapsed}: final loss {result.metrics.get('loss', float('nan')):.4f}")
    print(f"  model:       {output_dir / 'model'}")
    print(f"  checkpoints: {checkpoint}")
    print(f"  config:      {output_dir / 'config.yaml'}")
    print(f"  MLflow run:  {run['run_id']} (experiment '{config.tracking.experiment}', {uri})")
    if db_hint:
        print(f"  MLflow UI:   mlflow ui {db_hint} --host 127.0.0.1 --port 5000, then open http://127.0.0.1:5000")
    else:
        print(f"  MLflow UI:   open {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
