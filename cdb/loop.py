"""The training loop of one rank: micro-steps, metric reduction, logging and checkpoint cadence.

`run_worker` is what a Ray Train worker runs (cdb.train hands it a WorkerArgs); it needs no Ray, so
tests run it under plain torch.distributed. The Trainer owns the loss (it asks the method's record
for its objective); the Strategy (cdb.engine) owns DeepSpeed and every collective.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

from cdb.config import Config
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


CheckpointSink = Callable[[str, dict], None]
"""(directory holding this rank's checkpoint shard, metrics of the step): hand the checkpoint over.
The sink owns the directory from then on: Ray Train's asynchronous report uploads it while the next
steps run and deletes it once uploaded."""


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


class NonFiniteLoss(RuntimeError):
    """Too many micro-batches in a row had a non-finite loss."""


def say(text: str) -> None:
    """A worker's progress line. Straight to the process's stdout: Ray Train's print() patch in
    workers tees to stdout and to its logger, which shows every line twice on the driver."""
    print(text, file=sys.__stdout__, flush=True)


def total_steps(config: Config, micro_batches_per_epoch: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    return max(1, config.train.epochs * micro_batches_per_epoch // config.scale.grad_accum)


def micro_step(strategy, spec, objective_config, batch: dict) -> tuple[dict, bool]:
    """Forward once, the method's loss, backward and step (applied by DeepSpeed at accumulation
    boundaries). A non-finite loss on any rank skips backward and step on every rank.
    Returns (the loss terms, whether the micro-batch was applied)."""
    from cdb.objective import pooling_mask, score_positions

    batch = {k: v.to(strategy.device) for k, v in batch.items()}
    score_mask, targets = score_positions(batch["labels"], spec.scored_rows(batch["positive"]))
    pool_mask = None
    if spec.contrast_head:
        pool_mask = pooling_mask(batch["entity_mask"], batch["target_mask"], objective_config.contrastive.pooling)
    outputs = strategy.forward(batch["input_ids"], batch["attention_mask"], score_mask, pool_mask)
    outputs.update(targets=targets, target_rows=score_mask.nonzero(as_tuple=True)[0], pool_mask=pool_mask)
    loss, metrics = spec.objective(outputs, batch, objective_config)
    if strategy.any_rank(not bool(loss.isfinite())):
        return metrics, False
    strategy.backward_and_step(loss)
    return metrics, True


def validation_metrics(strategy, spec, objective_config, sources: list, micro_batch: int, pad_id: int, rank: int,
                       world: int) -> dict[str, float]:
    """The val/ metrics every method shares, over the held-out `sources` (each rank scores
    sources[rank::world]; the sums are added over ranks, so every rank returns the same numbers):

    - `lm_loss`: token NLL of the positives' candidate tokens;
    - `pref_accuracy`: the share of same-source (positive, negative) pairs whose positive has the higher
      length-normalised log-likelihood (mean token log-prob), and `pref_accuracy/<negative type>` for
      the types present.

    Collective: every rank runs as many forward passes as rank 0 (the most loaded); a rank short of
    sources repeats one and counts nothing from it. No gradients; dropout off while it runs."""
    import torch

    from cdb import objective
    from cdb.data.batch import collate
    from cdb.data.records import NEGATIVE_TYPES

    mine, n_types = sources[rank::world], len(NEGATIVE_TYPES)
    # NLL sum, NLL tokens, then per negative type: pairs ranked right, pairs
    sums = torch.zeros(2 + 2 * n_types, dtype=torch.float64)
    with strategy.evaluating():
        for start in range(0, len(sources[0::world]), micro_batch):
            chunk = mine[start:start + micro_batch]
            batch = {k: v.to(strategy.device) for k, v in collate(chunk or sources[:1], pad_id).items()}
            score_mask, targets = objective.score_positions(batch["labels"], torch.ones_like(batch["positive"]))
            pool_mask = None
            if spec.contrast_head:  # the same forward as in training, head included, on every rank
                pool_mask = objective.pooling_mask(batch["entity_mask"], batch["target_mask"],
                                                   objective_config.contrastive.pooling)
            outputs = strategy.forward(batch["input_ids"], batch["attention_mask"], score_mask, pool_mask)
            if not chunk:
                continue
            rows, positive = score_mask.nonzero(as_tuple=True)[0], batch["positive"]
            logp = objective.sequence_logprobs(outputs["logits"], targets, rows, len(positive)).double()
            tokens = torch.bincount(rows, minlength=len(positive)).double()
            mean_logp = logp / tokens.clamp_min(1)
            chosen, rejected = objective.preference_pairs(batch["group"], positive)
            kind = batch["neg_type"][rejected]
            right = (mean_logp[chosen] > mean_logp[rejected]).double()
            sums += torch.cat([torch.stack([-logp[positive].sum(), tokens[positive].sum()]),
                               torch.bincount(kind, weights=right, minlength=n_types),
                               torch.bincount(kind, minlength=n_types).double()]).cpu()
    total = strategy.sum_over_ranks(sums.float()).double()
    right, pairs = total[2:2 + n_types], total[2 + n_types:]
    metrics = {"lm_loss": (total[0] / total[1].clamp_min(1)).item(),
               "pref_accuracy": (right.sum() / pairs.sum().clamp_min(1)).item()}
    metrics.update({f"pref_accuracy/{name}": (right[t] / pairs[t]).item()
                    for t, name in enumerate(NEGATIVE_TYPES) if pairs[t] > 0})
    return metrics


class Trainer:
    """Runs `steps` optimizer steps of one method on one rank's share of the sources, validating on
    the held-out `val_sources` every train.eval_every steps and at the last."""

    def __init__(self, config: Config, strategy, spec, sources: list, val_sources: list, pad_id: int, rank: int,
                 world: int, steps: int, logger, peak_flops: float):
        self.config, self.strategy, self.spec = config, strategy, spec
        self.sources, self.val_sources = sources, val_sources
        self.pad_id, self.rank, self.world, self.steps = pad_id, rank, world, steps
        self.logger, self.peak_flops = logger, peak_flops
        self.consumed, self.skipped = 0, 0  # micro-batches taken from the data order / skipped as non-finite

    def state(self, step: int) -> dict:
        """What a checkpoint must carry to continue the data order exactly."""
        return {"step": step, "consumed_micro_batches": self.consumed, "skipped_micro_batches": self.skipped}

    def restore(self, state: dict) -> None:
        self.consumed, self.skipped = state["consumed_micro_batches"], state["skipped_micro_batches"]

    def micro_step(self, batch: dict) -> tuple[dict, bool]:
        return micro_step(self.strategy, self.spec, self.config.objective, batch)

    def validate(self) -> dict[str, float]:
        """The val/ metrics now (collective: every rank calls it at the same step)."""
        return validation_metrics(self.strategy, self.spec, self.config.objective, self.val_sources,
                                  self.config.scale.micro_batch, self.pad_id, self.rank, self.world)

    def fit(self, save: CheckpointSink, stop_requested: Callable[[], bool]) -> bool:
        """Train to the last step; True when stopped early on request (after a checkpoint)."""
        import torch

        from cdb.data.batch import assign_micro_batches, collate, micro_batches_per_epoch
        from cdb.perf import flops_per_token, mfu, peak_memory_bytes
        from cdb.tracking import PREFIX_TRAIN, PREFIX_VAL, metric_key

        config, scale, strategy = self.config, self.config.scale, self.strategy
        per_epoch = micro_batches_per_epoch(len(self.sources), scale.micro_batch, self.world)
        token_flops = flops_per_token(strategy.model_config, scale.max_source_tokens + scale.max_target_tokens)
        step = strategy.global_step
        sums, tokens, in_row, names = None, 0, 0, []
        order: tuple[int, list] | None = None
        started = window_start = time.perf_counter()
        first_step, window_tokens = step, 0.0
        while step < self.steps:
            epoch, index = divmod(self.consumed, per_epoch)
            if order is None or order[0] != epoch:
                order = (epoch, assign_micro_batches(self.sources, scale.micro_batch, config.train.seed, epoch,
                                                     self.rank, self.world))
            batch = collate(order[1][index], self.pad_id)
            metrics, applied = self.micro_step(batch)
            self.consumed += 1
            if not applied:
                self.skipped, in_row = self.skipped + 1, in_row + 1
                if in_row >= config.train.max_nonfinite_in_row:
                    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if k.startswith("loss"))
                    raise NonFiniteLoss(f"step {step + 1}: non-finite loss in {in_row} micro-batches in a row ({terms}); "
                                        "lower optim.lr or check the data")
                continue
            in_row = 0
            tokens += int(batch["attention_mask"].sum())
            values = torch.stack([v.float().reshape(()).cpu() for v in metrics.values()])
            names = list(metrics)
            sums = values if sums is None else sums + values
            if strategy.global_step == step:
                continue  # inside an accumulation window
            step = strategy.global_step

            # One small all-reduce per step: metrics averaged over ranks, tokens summed, stop flag.
            stop_flag = float(self.rank == 0 and stop_requested())
            packed = strategy.sum_over_ranks(torch.cat([sums / scale.grad_accum, torch.tensor([float(tokens), stop_flag])]))
            averaged = dict(zip(names, (packed[:-2] / self.world).tolist()))
            window_tokens += packed[-2].item()
            stop = packed[-1].item() > 0
            sums, tokens = None, 0

            logged = {}
            if step % config.train.log_every == 0 or step == self.steps or stop:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                row = {**averaged, "lr": strategy.lr(), "grad_norm": strategy.grad_norm(),
                       "tokens_per_s": tokens_per_s, "skipped_steps": self.skipped,
                       "mfu": mfu(tokens_per_s / self.world, token_flops, self.peak_flops)}
                if step == self.steps or stop:  # every rank is here: gather each one's peak memory
                    peaks = strategy.gather_objects(peak_memory_bytes(strategy.device))
                    row.update({f"peak_memory_gib/rank{r}": b / 2**30 for r, b in enumerate(peaks)})
                logged.update({metric_key(PREFIX_TRAIN, k): v for k, v in row.items()})
                if self.rank == 0:
                    eta = (now - started) / max(step - first_step, 1) * (self.steps - step)
                    terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in averaged.items() if k.startswith("loss_"))
                    say(f"[cdb] step {step}/{self.steps} | loss {averaged['loss']:.4f}" + (f" ({terms})" if terms else "")
                        + f" | {tokens_per_s:,.0f} tok/s | eta {timedelta(seconds=round(eta))}")
                window_start, window_tokens = now, 0.0
            if self.val_sources and (step % config.train.eval_every == 0 or step == self.steps or stop):
                validation_start = time.perf_counter()
                logged.update({metric_key(PREFIX_VAL, k): v for k, v in self.validate().items()})
                window_start += time.perf_counter() - validation_start  # validating is not training time
            if logged:  # one call per step: the logger logs a step once
                self.logger.log_metrics(logged, step)

            if step % config.train.checkpoint_every == 0 or step == self.steps or stop:
                directory = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
                strategy.save_checkpoint(directory, self.state(step))
                save(directory, {"step": step, "loss": averaged["loss"], "stopped": stop})
            if stop:
                if self.rank == 0:
                    say(f"[cdb] stop requested: checkpointed step {step}, exiting")
                return True
        return False


STAGING_PREFIX = "cdb-ckpt-"
"""A step's checkpoint shard is written to a local folder <tmp>/cdb-ckpt-<pid>-<random>, then handed to
the checkpoint sink, which uploads it and removes it."""


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


def _worker_environment(args: WorkerArgs) -> None:
    """Process settings that must be in place before DeepSpeed or MLflow are imported."""
    if args.cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    # A dead tracking server must cost seconds, not minutes of retries: metrics get spooled.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", args.torch_extensions_dir)
    use_deepspeeds_ninja()
    remove_orphaned_staging()
    # DeepSpeed 0.19 calls collectives torch 2.13 deprecates, once per step: not the user's concern.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*", category=FutureWarning)


def use_deepspeeds_ninja() -> None:
    """Build DeepSpeed's JIT ops with the ninja DeepSpeed depends on, whatever the PATH says.

    A system ninja (1.11, build log v5) and the PyPI one (1.13, log v7) each discard the other's log,
    so processes that find different ones on PATH rebuild the op every time they alternate; a process
    killed during a build leaves torch's lock file, and later builds wait on it forever. (`BIN_DIR` is
    empty where the package's script is not beside the interpreter: then PATH decides.)
    """
    import ninja

    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR and not path.startswith(ninja.BIN_DIR + os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR")  # unset: torch's default, not cdb's cache
    for lock in Path(extensions).glob("*/lock") if extensions else []:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:  # its build just finished
            continue
        if age > 1800:
            print(f"[cdb] warning: {lock} is {age / 60:.0f} minutes old; DeepSpeed will wait on it. If no other "
                  "process is building that op, a killed build left it: remove the file.", file=sys.stderr, flush=True)


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
    _worker_environment(args)
    from cdb.data.batch import micro_batches_per_epoch, special_ids
    from cdb.engine import Strategy
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
