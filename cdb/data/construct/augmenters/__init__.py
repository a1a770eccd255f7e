"""Augmenters: the interface and registry (base.py), the rule-based ones (rules.py), the toxic one
(toxic.py), the LM-based ones (lm_based.py, the paraphraser among them)."""

from cdb.data.construct.augmenters.base import (
    AUGMENTERS, Augmenter, AugmenterError, AugmenterOptions, Candidate, NegativeOptions, make_augmenter, register,
)
from cdb.data.construct.augmenters.lm_based import (
    BackTranslate, MaskEntities, MaskRelations, Paraphrase, RegenEntities, RegenRelations, SysLowConfidence,
)
from cdb.data.construct.augmenters.rules import SwapEntities
from cdb.data.construct.augmenters.toxic import Toxic

for _cls in (Paraphrase, BackTranslate, SwapEntities, MaskEntities, MaskRelations, RegenEntities, RegenRelations,
             SysLowConfidence, Toxic):
    register(_cls)

DEFAULT_AUGMENTERS = ("paraphrase", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon", "toxic")

__all__ = ["AUGMENTERS", "DEFAULT_AUGMENTERS", "Augmenter", "AugmenterError", "AugmenterOptions", "Candidate",
           "NegativeOptions", "make_augmenter", "register"]
