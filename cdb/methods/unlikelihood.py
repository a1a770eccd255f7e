"""unlikelihood: the LM loss on the positives plus unlikelihood (Welleck et al. 2020) on the negative
candidates' tokens."""

from __future__ import annotations

from dataclasses import dataclass

from cdb.methods import Method
from cdb.settings import ConfigError


@dataclass(frozen=True)
class UnlikelihoodOptions:
    weight: float = 1.0
    """Weight of the unlikelihood term on negative candidates' tokens; >= 0."""

    def __post_init__(self):
        if not self.weight >= 0:
            raise ConfigError(f"objective.unlikelihood.weight: must be >= 0, got {self.weight!r}")


def objective(outputs: dict, batch: dict, cfg) -> tuple:
    from cdb.objective import lm_loss, unlikelihood_loss

    targets, rows = outputs["targets"], outputs["target_rows"]
    on_positive = batch["positive"].bool()[rows]
    loss_ce = lm_loss(outputs["logits"][on_positive], targets[on_positive], int(on_positive.sum()), cfg.label_smoothing)
    loss_ul = unlikelihood_loss(outputs["logits"][~on_positive], targets[~on_positive], int((~on_positive).sum()))
    loss = loss_ce + cfg.unlikelihood.weight * loss_ul
    return loss, {"loss": loss.detach(), "loss_ce": loss_ce.detach(), "loss_unlikelihood": loss_ul.detach()}


METHOD = Method("unlikelihood", "LM loss on positives + unlikelihood on negatives' tokens", objective,
                UnlikelihoodOptions, scores_negatives=True)
