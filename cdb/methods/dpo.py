"""dpo: Direct Preference Optimization (Rafailov et al. 2023) over every same-source (positive, negative)
pair, against a frozen copy of the starting model."""

from __future__ import annotations

from dataclasses import dataclass

from cdb.methods import Method
from cdb.settings import ConfigError


@dataclass(frozen=True)
class DPOOptions:
    beta: float = 0.1
    """Strength of the implicit KL constraint to the frozen reference; > 0."""

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"objective.dpo.beta: must be > 0, got {self.beta!r}")


def objective(outputs: dict, batch: dict, cfg) -> tuple:
    """DPO over every (positive, negative) pair of each source; `outputs["ref_logits"]` from the reference."""
    from cdb.objective import dpo_loss, preference_pairs, sequence_logprobs

    targets, rows = outputs["targets"], outputs["target_rows"]
    n = batch["positive"].shape[0]
    policy = sequence_logprobs(outputs["logits"], targets, rows, n)
    reference = sequence_logprobs(outputs["ref_logits"], targets, rows, n)
    chosen, rejected = preference_pairs(batch["group"], batch["positive"])
    loss, reward_chosen, reward_rejected = dpo_loss(policy[chosen], policy[rejected], reference[chosen],
                                                    reference[rejected], cfg.dpo.beta)
    zero = loss.detach() * 0.0
    mean = lambda x: x.float().mean() if x.numel() else zero  # noqa: E731
    # TRL's DPOTrainer names, where users of TRL look for them; log-probs summed over each row's tokens.
    return loss, {
        "loss": loss.detach(),
        "rewards/chosen": mean(reward_chosen),
        "rewards/rejected": mean(reward_rejected),
        "rewards/margins": mean(reward_chosen - reward_rejected),
        "rewards/accuracies": mean((reward_chosen > reward_rejected).float()),
        "logps/chosen": mean(policy[chosen].detach()),
        "logps/rejected": mean(policy[rejected].detach()),
    }


METHOD = Method("dpo", "DPO over same-source (positive, negative) pairs against a frozen reference", objective, DPOOptions,
                reference_model=True, scores_negatives=True, policy_dropout=False)
