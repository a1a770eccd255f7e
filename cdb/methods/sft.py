"""sft: supervised fine-tuning, the LM loss on the positives only."""

from __future__ import annotations

from cdb.methods import Method


def lm_only_objective(outputs: dict, batch: dict, cfg) -> tuple:
    """Token NLL on positive rows only (cda's counterfactual rows are positives too)."""
    from cdb.objective import lm_loss

    targets = outputs["targets"]
    loss = lm_loss(outputs["logits"], targets, targets.numel(), cfg.label_smoothing)
    return loss, {"loss": loss.detach(), "loss_ce": loss.detach()}


METHOD = Method("sft", "LM loss on the positives only", lm_only_objective)
