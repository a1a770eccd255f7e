"""Evaluation as a Ray task on a training worker's resources, so that the driver (on a cluster, the
Ray head: one CPU, no GPU, little memory) never loads model weights.

    summary = evaluate_on_cluster(model, options, gpus=1, precision="bf16", prefix="eval", run_id=...)

The task asks Ray for one CPU and `gpus` GPUs (a training worker's share: free before training
starts and after it ends) and runs cdb.eval.evaluate there: the model loads in `precision` on the
task's GPU (device `auto`), spread over its GPUs when it has several. The task writes eval.json and
samples.jsonl to `output_dir`, which must be storage every node sees (cdb.train checks that first).
"""

from __future__ import annotations

from typing import Any

from cdb.eval.options import EvalOptions


def _evaluate(model_source: str, options: EvalOptions, kwargs: dict[str, Any]) -> dict[str, Any]:
    from cdb.eval import evaluate

    return evaluate(model_source, options, **kwargs)


def evaluate_on_cluster(model_source: str, options: EvalOptions, gpus: int, **kwargs: Any) -> dict[str, Any]:
    """cdb.eval.evaluate(model_source, options, **kwargs) in a Ray task with one CPU and `gpus` GPUs
    of the connected cluster; returns its summary. An exception in the task is raised here."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_evaluate)
    return ray.get(task.remote(model_source, options, kwargs))
