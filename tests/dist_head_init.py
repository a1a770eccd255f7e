"""Run by tests/test_head_init_zero3.py under torchrun (2 gloo processes): the Strategy builds the contrast
head with objective.contrastive.head_init=authors inside zero.Init; rank 0 writes the gathered head's statistics to
the JSON file in argv[1]."""

import json
import os
import sys

os.environ["DS_ACCELERATOR"] = "cpu"

import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cdb import config as cfg  # noqa: E402
from cdb.strategy import Strategy  # noqa: E402
from cdb.strategy import use_deepspeeds_ninja  # noqa: E402
from cdb.model import TINY, load_tokenizer  # noqa: E402
from cdb.methods import METHODS  # noqa: E402


def main(out_path: str, workdir: str) -> None:
    use_deepspeeds_ninja()  # as the training workers do: one ninja builds DeepSpeed's op
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = cfg.resolve(flags={"scale.num_workers": world, "train.output_dir": workdir,
                                "objective.contrastive.head_init": "authors"})
    strategy = Strategy(config, TINY, load_tokenizer(TINY), world, rank, 4, METHODS["contrastive"])
    head = strategy.engine.module.head
    sharded = all(p.numel() == 0 for p in head.parameters())
    params = dict(head.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        stats = {name: {"std": p.float().std().item(), "mean": p.float().mean().item(),
                        "max_abs": p.float().abs().max().item(), "numel": p.numel()} for name, p in params.items()}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"sharded": sharded, "hidden": strategy.model_config.hidden_size, "params": stats}, f)
    strategy.close()
    dist.destroy_process_group()  # gloo's threads joined before exit, as in dist_zero3.py


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
