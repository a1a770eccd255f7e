"""Shared by the bench/ scripts: environment, single-process distributed set-up, real data, engine
memory accounting, statistics. Not a benchmark itself."""

from __future__ import annotations

import os
import socket
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def setup_env(cpu: bool = True) -> None:
    """Offline caches in the repo, DeepSpeed on CPU, no telemetry; before deepspeed is imported."""
    os.environ.setdefault("CDB_CACHE_DIR", str(REPO / ".cache"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # One thread unless told otherwise (Ray workers run with one; accelerate would otherwise
    # raise a "distributed" CPU process to all physical cores).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process(backend: str = "gloo") -> None:
    """torch.distributed with world 1 (what a one-worker run has), without torchrun."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)


def scale_config(scale: str, world: int, method: str = "contrastive", workdir: str = "/tmp/cdb-bench", **flags):
    from cdb import config as cfg

    values = {"scale.num_workers": world, "objective.method": method, "train.output_dir": workdir, **flags}
    return cfg.resolve(flags=values, scale=scale)


def load_sources(config, tokenizer):
    """The embedded dataset as the trainer tokenizes it (cdb.worker.prepare_sources)."""
    from cdb.data.batch import tokenize_records
    from cdb.data.entities import make_tagger
    from cdb.data.records import load_records

    records, _ = load_records(config.data.path, config.data.split, "skip")
    scale = config.scale
    return tokenize_records(records, tokenizer, make_tagger(config.data.entity_tagger), scale.max_source_tokens,
                            scale.max_target_tokens)


def model_source_and_tokenizer(config):
    from cdb.model import load_tokenizer, prepare_model_source

    source = prepare_model_source(config.scale.model)
    return source, load_tokenizer(source, config.scale.trust_remote_code)


def engine_state_bytes(strategy) -> dict:
    """Bytes of this rank's model states, read from the DeepSpeed engine: parameter partitions
    (ds_tensor) plus the whole of persistent parameters, the gradient partition buffer, the
    optimizer's fp32 partitions and its state tensors (Adam m, v)."""
    import torch

    module = strategy.engine.module
    params = 0
    persistent = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            params += p.ds_tensor.numel() * p.ds_tensor.element_size()
            if getattr(p, "ds_persist", False):
                persistent += p.data.numel() * p.data.element_size()
        else:
            params += p.numel() * p.element_size()
    opt = strategy.engine.optimizer
    size = lambda t: t.numel() * t.element_size() if torch.is_tensor(t) else 0  # noqa: E731
    grads = size(getattr(opt, "grad_partitions_flat_buffer", None))
    master = sum(size(t) for t in getattr(opt, "fp32_partitioned_groups_flat", []))
    states = 0
    inner = getattr(opt, "optimizer", None)
    if inner is not None:
        for state in inner.state.values():
            states += sum(size(v) for k, v in state.items() if k != "step")
    return {"params": params, "persistent": persistent, "grads": grads, "optimizer_master": master,
            "optimizer_states": states, "total": params + persistent + grads + master + states}


def median(values):
    return statistics.median(values)


def summary(name: str, value: str, target: str) -> None:
    print(f"{name}: {value} (target {target})", flush=True)
