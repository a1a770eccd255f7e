"""cda: counterfactual data augmentation (Zmigrod et al. 2019 style): the LM loss on the positives and
on their demographic counterfactuals (cdb.data.cda swaps the terms)."""

from __future__ import annotations

from dataclasses import dataclass

from cdb.data.cda import ATTRIBUTES
from cdb.methods import Method
from cdb.methods.sft import lm_only_objective
from cdb.settings import ConfigError


@dataclass(frozen=True)
class CDAOptions:
    attributes: tuple[str, ...] = ("gender", "race", "religion")
    """The attributes whose terms are swapped (any non-empty subset of gender, race, religion; one run per
    attribute gives the published CDA-gender, -race and -religion)."""

    def __post_init__(self):
        if not self.attributes or len(set(self.attributes)) != len(self.attributes) or not set(self.attributes) <= set(ATTRIBUTES):
            raise ConfigError(f"objective.cda.attributes: must be a non-empty list of distinct attributes out of "
                              f"{', '.join(ATTRIBUTES)}, got {list(self.attributes)!r}")


def counterfactual(records: list, options: CDAOptions) -> list:
    from cdb.data.cda import counterfactual_records  # data-side transform, imported on use

    return counterfactual_records(records, options.attributes)


METHOD = Method("cda", "LM loss on positives plus their demographic counterfactuals", lm_only_objective, CDAOptions,
                transform_records=counterfactual)
