"""contrastive, the method: the LM loss plus a contrast over entity-pooled rows, dynamically scaled
(docs/METHOD.md, "The objective")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdb.methods import Method
from cdb.settings import ConfigError


@dataclass(frozen=True)
class ContrastiveOptions:
    alpha: float = 16.0
    """Weight of the contrastive term against the LM loss (16 in the authors' final run); >= 0."""
    contrast_temperature: float = 1.0
    """InfoNCE temperature tau (cosine similarities are divided by it); > 0."""
    pooling: Literal["entity_or_last", "entity_or_target_mean", "target_mean", "last"] = "entity_or_last"
    """The candidate tokens a row's representation is the mean of: `entity_or_last` its entity tokens, else
    its last token; `entity_or_target_mean` its entity tokens, else all its tokens; `target_mean` all its
    tokens; `last` its last token."""
    projection_dim: int = 0
    """Output size of the contrast head; 0 = the model's hidden size; >= 0."""
    scaling: Literal["constant", "ne_density"] = "constant"
    """Loss weights per micro-batch: `constant` c_ce = c_cl = 1; `ne_density` (the authors') c_ce = 0.1 and
    c_cl = min(0.9, 45 x rho_NE). rho_NE = tagged entity tokens / non-padding tokens of the micro-batch;
    only candidate tokens are tagged while BOS and source tokens count in the denominator (docs/METHOD.md,
    "Dynamic loss scaling")."""
    toxic_weight: float = 1.5
    """w_tox, the factor on the contrastive term when a micro-batch holds a `toxic` negative (1 otherwise);
    >= 0."""
    lm_normalization: Literal["scored", "all_targets"] = "scored"
    """Divide the summed LM loss by the tokens it scores (positives), or (the authors' choice) by all rows'
    target tokens, negatives included."""
    lm_positives: Literal["all", "last"] = "all"
    """The positives the LM loss scores: `all`, or `last` = only the last positive of each source (the
    authors' choice; with lm_normalization=all_targets it is their LM loss)."""
    head_init: Literal["default", "authors"] = "default"
    """The contrast head's initial weights: `default` = torch's Linear init; `authors` = W1 ~ N(0, 0.01^2),
    W2 ~ N(0, (1/H)^2), zero biases."""

    def __post_init__(self):
        for name, ok, rule in (("alpha", self.alpha >= 0, ">= 0"), ("contrast_temperature", self.contrast_temperature > 0, "> 0"),
                               ("projection_dim", self.projection_dim >= 0, ">= 0"),
                               ("toxic_weight", self.toxic_weight >= 0, ">= 0")):
            if not ok:
                raise ConfigError(f"objective.contrastive.{name}: must be {rule}, got {getattr(self, name)!r}")


def objective(outputs: dict, batch: dict, cfg) -> tuple:
    """The full loss of one micro-batch and every factor of it, for logging."""
    from cdb.objective import (combine_losses, contrastive_loss, dynamic_scales, last_positive_rows, lm_loss,
                               pool_representations, similarity_stats)

    options: ContrastiveOptions = cfg.contrastive
    logits, targets = outputs["logits"], outputs["targets"]
    if options.lm_positives == "last":  # the authors' choice: one positive per source in the LM loss
        kept = last_positive_rows(batch["group"], batch["positive"])[outputs["target_rows"]]
        logits, targets = logits[kept], targets[kept]
    if options.lm_normalization == "scored":
        normaliser = targets.numel()
    else:  # the authors' choice: all rows' target tokens, negatives included
        normaliser = batch["target_mask"].sum()
    loss_ce = lm_loss(logits, targets, normaliser, cfg.label_smoothing)

    reps = pool_representations(outputs["z"].float(), outputs["pool_mask"])
    loss_cl = contrastive_loss(reps, batch["group"], batch["positive"], options.contrast_temperature)

    # rho_NE: tagged (candidate) entity tokens over every non-padding token, BOS and sources included.
    entity_density = batch["entity_mask"].sum() / batch["attention_mask"].sum().clamp_min(1)
    scales = dynamic_scales(batch["has_toxic"], entity_density, options.scaling, options.toxic_weight)
    loss = combine_losses(loss_ce, loss_cl, scales, options.alpha)
    sim_pos_pos, sim_pos_neg = similarity_stats(reps, batch["group"], batch["positive"])
    metrics = {
        "loss": loss.detach(),
        "loss_ce": loss_ce.detach(),
        "loss_contrast": loss_cl.detach(),
        "scale_ce": scales["c_ce"],
        "scale_contrast": options.alpha * scales["c_cl"] * scales["w_tox"],
        "w_tox": scales["w_tox"],
        "entity_density": entity_density.detach().float(),
        "sim_pos_pos": sim_pos_pos,
        "sim_pos_neg": sim_pos_neg,
    }
    return loss, metrics


METHOD = Method("contrastive", "the method: LM loss + contrast over entity-pooled rows, dynamically scaled",
                objective, ContrastiveOptions, contrast_head=True)
