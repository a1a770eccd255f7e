"""Run under torchrun by bench/plan_vs_measured.py and bench/zero3_memory.py: one rank of a real
ZeRO-3 run of a scale on CPU (gloo), the trainer's data path (tokenize_records ->
assign_micro_batches -> collate -> cdb.loop.micro_step), a few steps on the rank's largest
micro-batches. Rank 0 writes every rank's figures as JSON to argv.

    torchrun --nproc-per-node N bench/_zero3_worker.py SCALE STEPS OUT.json
"""

import json
import sys

import _common

_common.setup_env(cpu=True)

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cdb.data.batch import collate, assign_micro_batches, special_ids  # noqa: E402
from cdb.strategy import Strategy  # noqa: E402
from cdb.loop import micro_step  # noqa: E402
from cdb.methods import METHODS  # noqa: E402
from cdb.perf import current_rss_bytes, peak_memory_bytes  # noqa: E402


def main(scale: str, steps: int, out: str) -> None:
    rss_after_imports = current_rss_bytes()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = _common.scale_config(scale, world)
    source, tokenizer = _common.model_source_and_tokenizer(config)
    sources = _common.load_sources(config, tokenizer)
    _, _, pad = special_ids(tokenizer)
    plan = assign_micro_batches(sources, config.scale.micro_batch, config.train.seed, 0, rank, world)
    # The largest micro-batches first: the peak the plan sizes for happens on them.
    plan.sort(key=lambda b: -sum(len(s.rows) for s in b) * max(s.longest for s in b))
    batches = [collate(b, pad) for b in plan[:steps]]
    # Load the code the engine build will use (DeepSpeed's engine and ZeRO-3, the model's modeling
    # module) so that the baseline holds the whole runtime and "model-related" is tensors only.
    import importlib

    importlib.import_module("deepspeed.runtime.engine")
    importlib.import_module("deepspeed.runtime.zero.stage3")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = "llama" if source.startswith("builtin:") else AutoConfig.from_pretrained(source).model_type
    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    assert model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    rss_before_model = current_rss_bytes()

    spec = METHODS[config.objective.method]
    strategy = Strategy(config, source, tokenizer, world, rank, steps, spec)
    after_build = current_rss_bytes()
    for batch in batches:
        micro_step(strategy, spec, config.objective, batch)
    states = _common.engine_state_bytes(strategy)
    local, total = strategy.param_counts()
    figures = {
        "rank": rank, "world": world, "scale": scale, "steps": len(batches),
        "rss_after_imports": rss_after_imports, "rss_before_model": rss_before_model,
        "rss_after_build": after_build, "peak_rss": peak_memory_bytes(), "states": states,
        "params_local": local, "params_total": total,
        "batch_rows": [int(b["input_ids"].shape[0]) for b in batches],
        "batch_width": [int(b["input_ids"].shape[1]) for b in batches],
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, figures)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(gathered, handle, indent=1)
    dist.barrier()
    strategy.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
