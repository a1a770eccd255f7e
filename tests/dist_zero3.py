"""Run by tests/test_strategy.py under torchrun (2 gloo processes, no Ray): ZeRO-3 partitioning, training
on a fixed batch, checkpoint save/load and export, DPO's frozen reference, and the Trainer's loop
(cdb.worker.run_worker: logging, checkpoint cadence, stop and resume). Rank 0 writes what it saw to
the JSON file in argv[1]."""

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ["DS_ACCELERATOR"] = "cpu"

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cdb import config as cfg  # noqa: E402
from cdb.data.batch import collate, special_ids, tokenize_records  # noqa: E402
from cdb.data.entities import regex_tagger  # noqa: E402
from cdb.data.records import load_records  # noqa: E402
from cdb.strategy import Strategy  # noqa: E402
from cdb.loop import micro_step  # noqa: E402
from cdb.strategy import use_deepspeeds_ninja  # noqa: E402
from cdb.worker import WorkerArgs, run_worker  # noqa: E402
from cdb.model import TINY, cache_dir, load_tokenizer  # noqa: E402
from cdb.methods import METHODS  # noqa: E402


# Below the tiny preset's 0.01, at which the contrastive term of a random tiny model swings from step
# to step on one fixed batch; the CE still falls at 0.01.
LR = 0.003


def gathered(strategy, engine=None):
    params = list((engine or strategy.engine).module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        return {name: p.detach().clone() for name, p in params}


def main(out_path: str, workdir: str) -> None:
    use_deepspeeds_ninja()  # as the training workers do: one ninja builds DeepSpeed's op
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": workdir, "optim.lr": LR})
    tokenizer = load_tokenizer(TINY)
    records, _ = load_records()
    sources = tokenize_records(records[:4], tokenizer, regex_tagger, 64, 32)
    batch = collate(sources[rank * 2:(rank + 1) * 2], special_ids(tokenizer)[2])

    contrastive = METHODS["contrastive"]
    strategy = Strategy(config, TINY, tokenizer, world, rank, 40, contrastive)
    embed = strategy.engine.module.lm.get_input_embeddings().weight
    local, total = strategy.param_counts()
    partition = {"local": local, "total": total, "embed_numel_outside_forward": embed.numel(),
                 "embed_shard": embed.ds_tensor.numel(), "embed_full": embed.ds_numel}

    def step(s, spec=contrastive, c=config):
        return float(micro_step(s, spec, c.objective, batch)[0]["loss"])

    losses = [step(strategy) for _ in range(12)]
    strategy.save_checkpoint(os.path.join(workdir, "ckpt"), {"step": 12})
    saved = gathered(strategy)
    after_save = step(strategy)

    torch.manual_seed(1234)  # a different init: the load must overwrite it
    restored = Strategy(config, TINY, tokenizer, world, rank, 40, contrastive)
    client = restored.load_checkpoint(os.path.join(workdir, "ckpt"))
    loaded = gathered(restored)
    max_diff = max((saved[k] - loaded[k]).abs().max().item() for k in saved)
    after_load = step(restored)
    restored.export(os.path.join(workdir, "model"))

    # DPO: the frozen reference is its own stage-3 engine and never changes while the policy trains.
    dpo_config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": workdir, "objective.method": "dpo"})
    dpo = Strategy(dpo_config, TINY, tokenizer, world, rank, 40, METHODS["dpo"])
    reference_before, policy_before = gathered(dpo, dpo.reference), gathered(dpo)
    reference_is_sharded = all(p.numel() == 0 for p in dpo.reference.module.parameters())
    dpo_losses = [step(dpo, METHODS["dpo"], dpo_config) for _ in range(3)]
    reference_after, policy_after = gathered(dpo, dpo.reference), gathered(dpo)
    dpo_result = {
        "losses": dpo_losses,
        "reference_sharded": reference_is_sharded,
        "reference_max_change": max((reference_before[k] - reference_after[k]).abs().max().item() for k in reference_before),
        "policy_max_change": max((policy_before[k] - policy_after[k]).abs().max().item() for k in policy_before),
        "policy_started_as_reference": max((policy_before[f"lm.{k[3:]}"] - reference_before[k]).abs().max().item()
                                           for k in reference_before),
    }

    trainer_result = trainer_stop_and_resume(workdir, rank, world)

    shards = [None] * world
    dist.all_gather_object(shards, partition)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump({"world": world, "partition": shards, "losses": losses, "client_step": client["step"],
                       "max_weight_diff_after_load": max_diff, "loss_after_save": after_save,
                       "loss_after_load": after_load, "lr": restored.lr(), "dpo": dpo_result,
                       "trainer": trainer_result}, handle)
    dist.barrier()
    # Gloo's threads are joined here, not torn down at interpreter exit (which aborted a rank once:
    # "terminate called without an active exception").
    dist.destroy_process_group()


class SavedCheckpoint:
    """A checkpoint folder in the shape run_worker takes (Ray Train's Checkpoint has the same two members)."""

    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def as_directory(self):
        yield str(self.path)


def trainer_stop_and_resume(workdir: str, rank: int, world: int) -> dict:
    """run_worker for 4 steps, checkpointing every 2, stopped on request after step 3, then resumed
    from that checkpoint to the end; and the same 4 steps straight, uninterrupted, into a run of their
    own; metrics go to a real sqlite MLflow store."""
    from mlflow.tracking import MlflowClient

    from cdb import tracking

    uri = f"sqlite:///{Path(workdir) / 'mlflow.db'}"

    def worker_args(folder: Path, name: str) -> WorkerArgs:
        config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": str(folder), "train.max_steps": 4,
                                    "train.checkpoint_every": 2, "data.max_records": 8, "eval.suite": "off"})
        run_id = [tracking.open_run(uri, "trainer", name, {}, {}).id if rank == 0 else None]
        dist.broadcast_object_list(run_id, src=0)
        return WorkerArgs(config=config, model_source=TINY, cpu=True, tracking_uri=uri, run_id=run_id[0],
                          torch_extensions_dir=str(cache_dir() / "torch_extensions"))

    out = Path(workdir) / "trainer"
    args = worker_args(out, "trainer")
    run_id = [args.run_id]
    saved = []

    def save(directory: str, metrics: dict) -> None:  # what Ray Train's report does: keep every rank's files
        saved.append(metrics["step"])
        shutil.copytree(directory, out / f"step_{metrics['step']}", dirs_exist_ok=True)
        shutil.rmtree(directory)  # the sink owns the directory

    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) >= 3

    stopped = run_worker(args, rank, world, None, save, stop_after_three)
    exported_after_stop = (out / "model").exists()
    dist.barrier()
    finished_stopped = run_worker(args, rank, world, SavedCheckpoint(out / "step_3"), save, lambda: False)
    dist.barrier()

    straight = worker_args(Path(workdir) / "straight", "straight")
    run_worker(straight, rank, world, None, lambda directory, _: shutil.rmtree(directory), lambda: False)
    dist.barrier()
    history = MlflowClient(uri).get_metric_history(run_id[0], "train/loss") if rank == 0 else []
    validated = MlflowClient(uri).get_metric_history(run_id[0], "val/pref_accuracy") if rank == 0 else []
    straight_history = MlflowClient(uri).get_metric_history(straight.run_id, "train/loss") if rank == 0 else []
    return {"stopped": stopped, "exported_after_stop": exported_after_stop, "resumed_stopped": finished_stopped,
            "checkpoints": saved, "logged_steps": sorted(m.step for m in history),
            "validated_steps": sorted(m.step for m in validated),
            "exported": (out / "model" / "config.json").exists(),
            "losses": [m.value for m in sorted(history, key=lambda m: m.step)],
            "straight_losses": [m.value for m in sorted(straight_history, key=lambda m: m.step)],
            "weights_equal_straight": same_tensors(out / "model", Path(workdir) / "straight" / "model") if rank == 0 else None}


def same_tensors(first: Path, second: Path) -> dict:
    """file -> whether every tensor of the exported model's safetensors files is bit-identical in both folders."""
    from safetensors.torch import load_file

    result = {}
    for path in sorted(first.glob("*.safetensors")):
        a, b = load_file(path), load_file(second / path.name)
        result[path.name] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
