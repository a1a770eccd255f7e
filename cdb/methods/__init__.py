"""The training methods as records, each in a module of this package with its own options.

    METHODS: name -> Method         every module here that defines METHOD, in name order
    ObjectiveConfig                 the config's `objective` section: method, label_smoothing, and one
                                    subsection per method with options (objective.contrastive.alpha,
                                    objective.dpo.beta, ...)
    LEGACY_KEYS                     where the options of configs saved before they moved now live

A method is one module: its options (a frozen dataclass, every field documented, rules checked in
__post_init__), its objective (composing the pure losses of cdb.objective) and `METHOD`, the record
the engine, the trainer, the memory planner and the sweep read; nothing branches on a method's name.
Importing this package loads no torch: an objective imports it when it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from cdb.settings import ConfigError

Objective = Callable[[dict, dict, Any], tuple[Any, dict]]
"""(outputs, batch, ObjectiveConfig) -> (loss, metrics to log). `outputs` of one forward pass: `logits`
[M,V] at the M scored positions (`score_positions(labels, method.scored_rows(positive))`), their
`targets` [M] and `target_rows` [M]; with a contrast head, `z` [K,P] at the K positions of `pool_mask`
[N,T]; with a reference model, `ref_logits` [M,V] at the same positions as `logits`."""


@dataclass(frozen=True)
class Method:
    """Everything the rest of cdb needs to know about a training method."""

    name: str
    """Its name in objective.method."""
    summary: str
    """One line for --help and docs."""
    objective: Objective
    """(outputs of one forward pass, batch, ObjectiveConfig) -> (loss, metrics to log)."""
    options: type | None = None
    """Its options (a frozen dataclass), the subsection objective.<name>; None: it has none."""
    contrast_head: bool = False
    """Trains a contrast head on the pooled tokens (its output arrives as outputs["z"])."""
    reference_model: bool = False
    """Needs a frozen copy of the starting model (its logits arrive as outputs["ref_logits"])."""
    scores_negatives: bool = False
    """The logits of negative rows' candidate tokens are needed too, not only the positives'."""
    transform_records: Callable[[list, Any], list] | None = None
    """(records, its options) -> the records to train on, before tokenization (e.g. counterfactual augmentation)."""
    policy_dropout: bool = True
    """False: the trained model runs with dropout off (every dropout probability 0, in train mode too),
    so its log-probabilities compare like with like against a reference in eval mode."""

    def scored_rows(self, positive):
        """Rows whose candidate tokens the forward pass must produce logits for (a bool tensor)."""
        import torch

        return torch.ones_like(positive, dtype=torch.bool) if self.scores_negatives else positive.bool()


def _discover() -> dict[str, Method]:
    found = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        method = getattr(importlib.import_module(f"{__name__}.{module.name}"), "METHOD", None)
        if isinstance(method, Method):
            found[method.name] = method
    return found


METHODS: dict[str, Method] = _discover()
"""Training methods by name (`objective.method`). Adding a method is adding a module here."""
DEFAULT_METHOD = "contrastive"


def _objective_config() -> type:
    """ObjectiveConfig: method, label_smoothing, and a subsection per method with options."""
    fields: list = [
        ("method", str, dataclasses.field(default=DEFAULT_METHOD)),
        ("label_smoothing", float, dataclasses.field(default=0.0)),
    ]
    fields += [(m.name, m.options, dataclasses.field(default_factory=m.options)) for m in METHODS.values() if m.options]
    docs = {
        "method": f"Training objective, one of {', '.join(METHODS)}: contrastive is the method, the others are "
                  "baselines (docs/METHOD.md).",
        "label_smoothing": "Label smoothing of the LM cross-entropy of the methods that have one (every method "
                           "but dpo); in [0, 1).",
        **{m.name: f"{m.name}'s options (used when method={m.name}; left at their defaults otherwise)."
           for m in METHODS.values() if m.options},
    }

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"objective.method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"objective.label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        for method in METHODS.values():
            if method.options is None or method.name == self.method:
                continue
            changed = [f.name for f in dataclasses.fields(method.options)
                       if getattr(getattr(self, method.name), f.name) != getattr(method.options(), f.name)]
            if changed:  # a setting that would be read by nothing
                raise ConfigError(f"objective.{method.name}.{changed[0]}: set, but objective.method is {self.method}; "
                                  f"it applies to method {method.name} only")

    cls = dataclasses.make_dataclass("ObjectiveConfig", fields, frozen=True, namespace={"__post_init__": check})
    cls.__module__ = __name__  # pickled by reference (Ray sends configs to workers) as cdb.methods.ObjectiveConfig
    cls.__doc__ = "The config's objective section: the method and its options."
    cls.__field_docs__ = docs  # read by cdb.settings.field_docs: a made class has no source to read them from
    return cls


ObjectiveConfig = _objective_config()


def options_of(config) -> Any:
    """The options of the config's method (an ObjectiveConfig), or None when it has none."""
    return getattr(config, config.method, None) if METHODS[config.method].options else None


LEGACY_KEYS: dict[str, str] = {
    **{f"objective.{name}": f"objective.contrastive.{name}" for name in (
        "alpha", "contrast_temperature", "pooling", "projection_dim", "scaling", "toxic_weight", "lm_normalization",
        "lm_positives", "head_init")},
    "objective.dpo_beta": "objective.dpo.beta",
    "objective.unlikelihood_weight": "objective.unlikelihood.weight",
    "data.cda_attributes": "objective.cda.attributes",
}
"""Old key -> its key now, for configs saved before each method's options moved under it."""
