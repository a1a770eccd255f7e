"""The authors' released figures for the `paper` suite's metrics (Korkmaz et al. 2025; docs/METHOD.md,
"The paper's protocol"), shown beside a result of the same model: a point of reference, not a target
(one sample per prompt, their seeds, precision and GPU unknown or not ours).

    anchor(model, "toxicity/mean_toxicity") -> "authors' GPT-2: 0.00536 ± 0.00232 (n 3000)", or None

A model is known by the last part of its name or path, case ignored: gpt2, phi-2, llama-2-7b(-hf).
Each figure was recomputed here from the authors' released per-item outputs (RealToxicityPrompts
continuations scored by s-nlp/roberta_toxicity_classifier; TruthfulQA answers.csv): the mean, and
1.96 standard errors over its items.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# model -> metric -> (mean, 95% half-width, items)
ANCHORS: dict[str, dict[str, tuple[float, float, int]]] = {
    "GPT-2": {"toxicity/mean_toxicity": (0.00536, 0.00232, 3000),
              "truthfulqa/mc1": (0.228, 0.029, 817), "truthfulqa/mc2": (0.408, 0.029, 817)},
    "Phi-2": {"toxicity/mean_toxicity": (0.00191, 0.00128, 3000),
              "truthfulqa/mc1": (0.312, 0.032, 817), "truthfulqa/mc2": (0.446, 0.030, 817)},
    "Llama-2-7B": {"toxicity/mean_toxicity": (0.00465, 0.00218, 3000),
                   "truthfulqa/mc1": (0.247, 0.030, 817), "truthfulqa/mc2": (0.388, 0.027, 817)},
}
NAMES = {"gpt2": "GPT-2", "phi-2": "Phi-2", "llama-2-7b": "Llama-2-7B", "llama-2-7b-hf": "Llama-2-7B"}


def known_model(model: str) -> str | None:
    """The ANCHORS name of a model source (a hub id or a folder), or None."""
    return NAMES.get(PurePosixPath(model.rstrip("/")).name.lower())


def anchor(model: str, metric: str) -> str | None:
    """The authors' figure for `metric` ("task/metric") of `model`, as text; None when they gave none."""
    name = known_model(model)
    figure = ANCHORS.get(name or "", {}).get(metric)
    if figure is None:
        return None
    value, half_width, n = figure
    return f"authors' {name}: {value:.3g} ± {half_width:.3g} (n {n})"
