"""The training loop of one rank, the Trainer: micro-steps, metric reduction, validation, logging and
checkpoint cadence. It owns the loss (it asks the method's record for its objective); the Strategy
(cdb.strategy) owns DeepSpeed and every collective; cdb.worker sets a rank up and runs it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from cdb.config import Config


CheckpointSink = Callable[[str, dict], None]
"""(directory holding this rank's checkpoint shard, metrics of the step): hand the checkpoint over.
The sink owns the directory from then on: Ray Train's asynchronous report uploads it while the next
steps run and deletes it once uploaded."""


STAGING_PREFIX = "cdb-ckpt-"
"""A step's checkpoint shard is written to a local folder <tmp>/cdb-ckpt-<pid>-<random>, then handed to
the checkpoint sink, which uploads it and removes it."""


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


@dataclass
class Throughput:
    """Tokens over wall time since the last logged step (validation excluded), and the ETA's clock."""
    started: float
    first_step: int
    window_start: float
    window_tokens: float = 0.0


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
        from cdb.tracking import PREFIX_VAL, metric_key

        config, scale, strategy = self.config, self.config.scale, self.strategy
        per_epoch = micro_batches_per_epoch(len(self.sources), scale.micro_batch, self.world)
        step = strategy.global_step
        sums, tokens, in_row, names = None, 0, 0, []
        order: tuple[int, list] | None = None
        now = time.perf_counter()
        clock = Throughput(started=now, first_step=step, window_start=now)
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
            clock.window_tokens += packed[-2].item()
            stop = packed[-1].item() > 0
            sums, tokens = None, 0

            logged = {}
            if step % config.train.log_every == 0 or step == self.steps or stop:
                logged.update(self.train_row(step, averaged, stop, clock))
            if self.val_sources and (step % config.train.eval_every == 0 or step == self.steps or stop):
                validation_start = time.perf_counter()
                logged.update({metric_key(PREFIX_VAL, k): v for k, v in self.validate().items()})
                clock.window_start += time.perf_counter() - validation_start  # validating is not training time
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

    def train_row(self, step: int, averaged: dict[str, float], stop: bool, clock: Throughput) -> dict[str, float]:
        """The train/ metrics of a logged step (the last one with every rank's peak memory), and rank
        0's progress line; starts the next throughput window."""
        from cdb.perf import flops_per_token, mfu, peak_memory_bytes
        from cdb.tracking import PREFIX_TRAIN, metric_key

        scale, strategy = self.config.scale, self.strategy
        now = time.perf_counter()
        tokens_per_s = clock.window_tokens / max(now - clock.window_start, 1e-9)
        token_flops = flops_per_token(strategy.model_config, scale.max_source_tokens + scale.max_target_tokens)
        row = {**averaged, "lr": strategy.lr(), "grad_norm": strategy.grad_norm(),
               "tokens_per_s": tokens_per_s, "skipped_steps": self.skipped,
               "mfu": mfu(tokens_per_s / self.world, token_flops, self.peak_flops)}
        if step == self.steps or stop:  # every rank is here: gather each one's peak memory
            peaks = strategy.gather_objects(peak_memory_bytes(strategy.device))
            row.update({f"peak_memory_gib/rank{r}": b / 2**30 for r, b in enumerate(peaks)})
        if self.rank == 0:
            eta = (now - clock.started) / max(step - clock.first_step, 1) * (self.steps - step)
            terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in averaged.items() if k.startswith("loss_"))
            say(f"[cdb] step {step}/{self.steps} | loss {averaged['loss']:.4f}" + (f" ({terms})" if terms else "")
                + f" | {tokens_per_s:,.0f} tok/s | eta {timedelta(seconds=round(eta))}")
        clock.window_start, clock.window_tokens = now, 0.0
        return {metric_key(PREFIX_TRAIN, k): v for k, v in row.items()}


