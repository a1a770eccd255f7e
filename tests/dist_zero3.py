"""Run by tests/test_engine.py under torchrun (2 gloo processes): ZeRO-3 partitioning, training on a
fixed batch, checkpoint save/load and export. Rank 0 writes what it saw to the JSON file in argv[1]."""

import json
import os
import sys

os.environ["DS_ACCELERATOR"] = "cpu"

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cdb import config as cfg  # noqa: E402
from cdb.data.batch import collate, special_ids, tokenize_records  # noqa: E402
from cdb.data.entities import regex_tagger  # noqa: E402
from cdb.data.records import load_records  # noqa: E402
from cdb.engine import Strategy  # noqa: E402
from cdb.model import TINY, load_tokenizer  # noqa: E402


def gathered(strategy, engine=None):
    params = list((engine or strategy.engine).module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        return {name: p.detach().clone() for name, p in params}


def main(out_path: str, workdir: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": workdir})
    tokenizer = load_tokenizer(TINY)
    records, _ = load_records()
    sources = tokenize_records(records[:4], tokenizer, regex_tagger, 64, 32)
    batch = collate(sources[rank * 2:(rank + 1) * 2], special_ids(tokenizer)[2])

    strategy = Strategy(config, TINY, tokenizer, world, rank, total_steps=40)
    embed = strategy.engine.module.lm.get_input_embeddings().weight
    local, total = strategy.param_counts()
    partition = {"local": local, "total": total, "embed_numel_outside_forward": embed.numel(),
                 "embed_shard": embed.ds_tensor.numel(), "embed_full": embed.ds_numel}

    losses = [float(strategy.micro_step(batch)[0]["loss"]) for _ in range(12)]
    strategy.save_checkpoint(os.path.join(workdir, "ckpt"), {"step": 12})
    saved = gathered(strategy)
    after_save = float(strategy.micro_step(batch)[0]["loss"])

    torch.manual_seed(1234)  # a different init: the load must overwrite it
    restored = Strategy(config, TINY, tokenizer, world, rank, total_steps=40)
    client = restored.load_checkpoint(os.path.join(workdir, "ckpt"))
    loaded = gathered(restored)
    max_diff = max((saved[k] - loaded[k]).abs().max().item() for k in saved)
    after_load = float(restored.micro_step(batch)[0]["loss"])
    restored.export(os.path.join(workdir, "model"))

    # DPO: the frozen reference is its own stage-3 engine and never changes while the policy trains.
    dpo_config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": workdir, "objective.method": "dpo"})
    dpo = Strategy(dpo_config, TINY, tokenizer, world, rank, total_steps=40)
    reference_before, policy_before = gathered(dpo, dpo.reference), gathered(dpo)
    reference_is_sharded = all(p.numel() == 0 for p in dpo.reference.module.parameters())
    dpo_losses = [float(dpo.micro_step(batch)[0]["loss"]) for _ in range(3)]
    reference_after, policy_after = gathered(dpo, dpo.reference), gathered(dpo)
    dpo_result = {
        "losses": dpo_losses,
        "reference_sharded": reference_is_sharded,
        "reference_max_change": max((reference_before[k] - reference_after[k]).abs().max().item() for k in reference_before),
        "policy_max_change": max((policy_before[k] - policy_after[k]).abs().max().item() for k in policy_before),
        "policy_started_as_reference": max((policy_before[f"lm.{k[3:]}"] - reference_before[k]).abs().max().item()
                                           for k in reference_before),
    }

    shards = [None] * world
    dist.all_gather_object(shards, partition)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump({"world": world, "partition": shards, "losses": losses, "client_step": client["step"],
                       "max_weight_diff_after_load": max_diff, "loss_after_save": after_save,
                       "loss_after_load": after_load, "lr": restored.lr(), "dpo": dpo_result}, handle)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
