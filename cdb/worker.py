"""A training worker, one DeepSpeed rank, from start-up to export: what a Ray Train worker runs.

cdb.train hands every worker a WorkerArgs; `train_loop_per_worker` is the Ray Train entry point and
`run_worker` the rank's whole life (it needs no Ray, so tests run it under plain torch.distributed):
the process's environment (cdb.strategy), checkpoint staging left by killed processes, the run's
sources, the Strategy and the Trainer (cdb.loop), then the model's export. `StopRequest` is the
actor through which the driver asks every rank to checkpoint and stop.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cdb.config import Config
from cdb.loop import STAGING_PREFIX, CheckpointSink, Trainer, say, total_steps
from cdb.storage import Storage


class StopRequest:
    """A request to checkpoint and stop that every node can read: held by a Ray actor (no CPU) that the
    driver sets on SIGTERM/SIGINT; rank 0 reads it at every step and all-reduces it to the other ranks."""

    def __init__(self):
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def is_requested(self) -> bool:
        return self.requested


@dataclass(frozen=True)
class WorkerArgs:
    """What the driver hands every worker."""

    config: Config
    """The resolved run configuration."""
    model_source: str
    """Local directory (or builtin name) the model and tokenizer load from."""
    cpu: bool
    """Train on CPU (gloo) instead of GPUs (NCCL)."""
    tracking_uri: str
    """MLflow store the run lives in."""
    run_id: str | None
    """The MLflow run to log into; None while the server is unreachable (metrics are spooled)."""
    torch_extensions_dir: str
    """Where DeepSpeed's compiled ops are cached."""


def remove_orphaned_staging() -> list[Path]:
    """Remove the checkpoint staging folders of processes that are gone (killed with an upload pending):
    one rank's shard each, so on a large model's node they would fill the disk over restarts."""
    import shutil

    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def prepare_sources(config: Config, spec, tokenizer) -> tuple[list, list]:
    """(training sources, validation sources), tokenized into rows: the run's records split
    (data.val_share), the training ones transformed as the method asks; the held-out ones as they
    are, so every method is validated on the same rows."""
    from cdb.data.batch import tokenize_records
    from cdb.data.entities import make_tagger
    from cdb.data.records import load_records, split_validation
    from cdb.methods import options_of

    records, _ = load_records(config.data.path, config.data.split, "skip")
    if config.data.max_records:
        records = records[: config.data.max_records]
    records, held_out = split_validation(records, config.data.val_share)
    if spec.transform_records is not None:
        records = spec.transform_records(records, options_of(config.objective))
    scale, tagger = config.scale, make_tagger(config.data.entity_tagger)
    return tuple(tokenize_records(part, tokenizer, tagger, scale.max_source_tokens, scale.max_target_tokens)
                 if part else [] for part in (records, held_out))


def export_model(strategy, storage) -> None:
    """The trained model to the run's storage, `model/` (collective; rank 0 writes): in place into a
    folder, or through a local staging folder into an object store."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Writing model shards" bar, one shard long, on the console
    if not storage.remote:
        strategy.export(Path(storage.path("model")))
        return
    with tempfile.TemporaryDirectory(prefix="cdb-model-") as local:
        exported = strategy.export(Path(local) / "model")
        if exported is not None:
            storage.upload(exported, "model")


def run_worker(args: WorkerArgs, rank: int, world: int, checkpoint, save: CheckpointSink,
               stop_requested: Callable[[], bool]) -> bool:
    """One rank from set-up to export; `checkpoint` (with `.as_directory()` and `.path`) to resume
    from, or None; `stop_requested` asked by rank 0 at every step. Returns True when stopped on
    request. Process group: the caller's (Ray Train sets it up; a test uses torchrun)."""
    from cdb.strategy import Strategy, deepspeed_environment

    deepspeed_environment(args.cpu, args.torch_extensions_dir)
    remove_orphaned_staging()
    from cdb.data.batch import micro_batches_per_epoch, special_ids
    from cdb.methods import METHODS
    from cdb.model import load_tokenizer
    from cdb.perf import device_peak_flops
    from cdb.tracking import SPOOL_FILE, RunLogger, system_metrics

    Strategy.init_distributed(args.cpu)
    config, scale = args.config, args.config.scale
    spec = METHODS[config.objective.method]
    output_dir = Path(config.train.output_dir)
    tokenizer = load_tokenizer(args.model_source, scale.trust_remote_code)
    sources, val_sources = prepare_sources(config, spec, tokenizer)
    steps = total_steps(config, micro_batches_per_epoch(len(sources), scale.micro_batch, world))
    strategy = Strategy(config, args.model_source, tokenizer, world, rank, steps, spec)
    if rank == 0:
        local, total = strategy.param_counts()
        say(f"[cdb] {total:,} parameters, {local:,} on rank 0 (ZeRO-3 over {world} ranks); {steps} steps")
    logger = RunLogger(args.tracking_uri, args.run_id, rank, output_dir / SPOOL_FILE)
    peak = device_peak_flops("cpu" if args.cpu else strategy.device_name(), scale.precision)
    trainer = Trainer(config, strategy, spec, sources, val_sources, special_ids(tokenizer)[2], rank, world, steps,
                      logger, peak)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(strategy.load_checkpoint(directory))
        if rank == 0:
            say(f"[cdb] resumed at step {strategy.global_step} from {checkpoint.path}")
    # After a worker-group restart the run may hold steps past the checkpoint: log none twice.
    logger.skip_logged_steps()
    with system_metrics(args.tracking_uri, args.run_id, config.tracking.system_metrics_interval):
        stopped = trainer.fit(save, stop_requested)
    if not stopped:
        export_model(strategy, Storage.of(config))
    strategy.close()
    return stopped


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker = one DeepSpeed rank: cdb.loop.run_worker with Ray Train's checkpoints."""
    import ray
    import ray.train

    from cdb.strategy import quiet_op_loads

    context = ray.train.get_context()
    stop = loop["stop"]

    def save(directory: str, metrics: dict) -> None:
        # Uploaded (and the local copy deleted) in the background while the next steps train; Ray
        # Train waits for pending uploads before the worker ends, and only an uploaded checkpoint
        # becomes the one a rerun resumes from.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"step_{metrics['step']:07d}",
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)

    with quiet_op_loads():
        run_worker(loop["args"], context.get_world_rank(), context.get_world_size(), ray.train.get_checkpoint(), save,
                   lambda: ray.get(stop.is_requested.remote()))
