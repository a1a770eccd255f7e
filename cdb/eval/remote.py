"""Evaluation on a Ray cluster's workers, so that the driver (on a cluster, the Ray head: one CPU, no
GPU, little memory) never loads model weights, data-parallel over the items.

    summary = evaluate_on_cluster(model, options, workers=2, gpus=1, precision="bf16", prefix="eval", ...)

`evaluate_on_cluster` runs cdb.eval.evaluate in a Ray task with one CPU and `gpus` GPUs (a training
worker's share: free before training starts and after it ends). There the model loads in
`precision` on the task's GPUs (device `auto`; spread over them when it has several), and with
`workers` > 1 it starts `workers - 1` replicas (Ray actors of the same size): every LM call of a
task (log-likelihoods, generations) is split into one contiguous part per replica, run at once, and
the results put back in order, so the tasks and their scoring are unchanged. A sampled generation
depends on its prompt, its sample index and the seed only (cdb.eval.lm.ItemSampler), so the items
split over any number of copies get the samples one copy draws. The task writes eval.json and
samples.jsonl to `output_dir`, which must be storage every node sees (cdb.train checks that first),
or to an object store (`storage`). A model in that object store is fetched by every copy itself, the
task's and each replica's, into its own node's temporary folder (`model_copy`): no node is handed a
path on another node's disk.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

from cdb.eval.options import EvalOptions


@contextmanager
def model_copy(model_source: str, storage=None):
    """The model source to load on this node: an object-store model (`model_source` under the URI of
    `storage`, a cdb.storage.Storage) fetched into a temporary folder of this node, removed when the
    block ends (load the model inside it); anything else as it is (a builtin, a hub id, a folder)."""
    if storage is None or not model_source.startswith(storage.uri() + "/"):
        yield model_source
        return
    part = model_source[len(storage.uri()):].strip("/")
    with tempfile.TemporaryDirectory(prefix="cdb-model-") as folder:
        local = Path(folder) / Path(part).name
        storage.download(local, part)
        yield str(local)


class Replica:
    """One copy of the evaluated LM in a Ray actor; `call` runs one EvalLM method on its part. It
    loads `model_source` on its own node (fetched from `storage` there when it lies in it)."""

    def __init__(self, model_source: str, options: EvalOptions, precision: str, storage=None):
        import torch

        from cdb.eval import make_lm

        if options.threads > 0:
            torch.set_num_threads(options.threads)
        with model_copy(model_source, storage) as local:
            self.lm = make_lm(local, options, precision)

    def call(self, method: str, items: list, kwargs: dict) -> list:
        return getattr(self.lm, method)(items, **kwargs)


def start_replicas(count: int, gpus: int, model_source: str, options: EvalOptions, precision: str,
                   storage=None) -> list:
    """`count` Replica actors of one CPU and `gpus` GPUs each (on the connected cluster), each loading
    `model_source` itself (from `storage` when it lies there)."""
    import ray

    actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(Replica)
    return [actor.remote(model_source, options, precision, storage) for _ in range(count)]


def stop_replicas(replicas: list) -> None:
    import ray

    for replica in replicas:
        ray.kill(replica)


def split(items: list, parts: int) -> list[list]:
    """`parts` contiguous slices, sizes differing by at most one, in order."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


class ShardedLM:
    """EvalLM's interface over this process's EvalLM and its replicas: each call's items are split,
    one part per copy, run at the same time, results concatenated in order. Everything else (the
    tokenizer, encode, generation_prompt) is the local LM's."""

    def __init__(self, local, replicas: list):
        self.local, self.replicas = local, replicas

    def __getattr__(self, name: str):
        return getattr(self.local, name)

    def loglikelihood(self, requests: Sequence, on_batch: Callable[[int], None] | None = None,
                      prefixes: Sequence | None = None) -> list:
        return self._spread("loglikelihood", list(requests), {}, on_batch, {"prefixes": prefixes})

    def loglikelihood_tokens(self, encoded: Sequence, on_batch: Callable[[int], None] | None = None,
                             prefix_ids: Sequence | None = None) -> list:
        return self._spread("loglikelihood_tokens", list(encoded), {}, on_batch, {"prefix_ids": prefix_ids})

    def generate(self, prompts: Sequence[str], max_new_tokens: int, on_batch: Callable[[int], None] | None = None,
                 **kwargs: Any) -> list:
        return self._spread("generate", list(prompts), {"max_new_tokens": max_new_tokens, **kwargs}, on_batch)

    def _spread(self, method: str, items: list, kwargs: dict, on_batch, aligned: dict | None = None) -> list:
        """`aligned`: keyword arguments holding one entry per item (or None), split with the items."""
        import ray

        copies = 1 + len(self.replicas)
        parts = split(items, copies)
        given = {key: split(list(value), copies) for key, value in (aligned or {}).items() if value is not None}
        args = [{**kwargs, **{key: value[i] for key, value in given.items()}} for i in range(copies)]
        pending = [replica.call.remote(method, part, args[i]) for i, (replica, part) in
                   enumerate(zip(self.replicas, parts[1:]), 1) if part]
        results = list(getattr(self.local, method)(parts[0], on_batch=on_batch, **args[0]))
        for part, result in zip([p for p in parts[1:] if p], ray.get(pending)):
            results += result
            if on_batch:
                on_batch(len(part))
        return results


def _evaluate(model_source: str, options: EvalOptions, kwargs: dict[str, Any], storage) -> dict[str, Any]:
    from cdb.eval import evaluate

    if storage is None:
        return evaluate(model_source, options, **kwargs)
    with tempfile.TemporaryDirectory(prefix="cdb-eval-") as folder:
        local = Path(folder) / kwargs["prefix"]
        summary = evaluate(model_source, options, storage=storage, **{**kwargs, "output_dir": local})
        storage.upload(local, kwargs["prefix"])
        return summary


def on_cluster(function: Callable, gpus: int = 0) -> Callable:
    """`function`, called in a Ray task with one CPU and `gpus` GPUs of the connected cluster (as an
    evaluation runs): the driver loads no model. Its result, or its exception, comes back here."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(function)
    return lambda *args: ray.get(task.remote(*args))


def evaluate_on_cluster(model_source: str, options: EvalOptions, workers: int = 1, gpus: int = 0, storage=None,
                        **kwargs: Any) -> dict[str, Any]:
    """cdb.eval.evaluate(model_source, options, workers=..., gpus_per_worker=..., **kwargs) in a Ray
    task with one CPU and `gpus` GPUs of the connected cluster; returns its summary. An exception in
    the task is raised here. With `storage` (a cdb.storage.Storage in an object store), the task
    writes its files to `<storage>/<prefix>/` and reads a `model_source` under the storage's URI
    from there."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_evaluate)
    return ray.get(task.remote(model_source, options, {**kwargs, "workers": workers, "gpus_per_worker": gpus},
                               storage))
