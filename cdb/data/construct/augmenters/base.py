"""The augmenter interface and registry.

An augmenter turns a batch of sources (with their references) into candidate texts:
    name      registry name, used by --augmenters and as its settings section (`--set NAME.option=value`)
    kind      "positive" or a negative type of cdb.data.records.NEGATIVE_TYPES
    Options   a frozen dataclass of its options, a docstring under each (AugmenterOptions, or
              NegativeOptions for negatives, plus its own fields)
    __call__(items, rng) -> one list of Candidate per item (possibly empty)

Every augmenter takes `fraction` and `n`; negative ones also take `guard_jaccard`, since the
labelling rule drops a whole source for any positive-negative pair above label.max_jaccard.
The augmenters: rules.py (paraphrase, swap_ent), toxic.py (toxic), lm_based.py (backtranslate,
mask_ent, mask_rel, regen_ent, regen_rel, sys_lowcon; lm.py loads their models).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cdb import settings
from cdb.data.sources import Item
from cdb.data.construct.label import LabelConfig
from cdb.data.text import normalise, word_jaccard
from cdb.data.records import NEGATIVE_TYPES
from cdb.settings import ConfigError


class AugmenterError(ConfigError):
    """A bad augmenter name or option; the message names it."""


@dataclass(frozen=True)
class Candidate:
    text: str
    origin: str
    """Which augmenter (and, where it has several ways, which way) made it, e.g. `toxic:rules`."""


@dataclass(frozen=True)
class AugmenterOptions:
    fraction: float = 1.0
    """Share of the sources it runs on, chosen by a hash of the seed and the source id (so
    independent of chunking)."""
    n: int = 1
    """Candidates per source (at most)."""


@dataclass(frozen=True)
class NegativeOptions(AugmenterOptions):
    guard_jaccard: float = LabelConfig.max_jaccard
    """A candidate whose word Jaccard with the reference exceeds this is re-drawn, or not produced;
    in a build it follows label.max_jaccard unless set."""


class Augmenter:
    name = ""
    kind = ""
    uses_model = False
    version = "1"
    Options: type[AugmenterOptions] = AugmenterOptions

    def __init__(self, options: AugmenterOptions | Mapping[str, Any] | None = None, device: str = "cpu"):
        if options is None or isinstance(options, Mapping):
            options = settings.build(self.Options, dict(options or {}), f"{self.name}.")
        elif not isinstance(options, self.Options):
            raise AugmenterError(f"{self.name}: options must be {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        self.device = device

    def config(self) -> dict:
        """What the cache key and the data card record about this augmenter."""
        return {"name": self.name, "kind": self.kind, "class": type(self).__name__, "version": self.version,
                "options": dict(sorted(dataclasses.asdict(self.options).items()))}

    @property
    def guard(self) -> float:
        return getattr(self.options, "guard_jaccard", 1.0)

    def ok_negative(self, text: str, reference: str) -> bool:
        return bool(text.strip()) and normalise(text) != normalise(reference) and word_jaccard(text, reference) <= self.guard

    def __call__(self, items: Sequence[Item], rng: random.Random) -> list[list[Candidate]]:
        raise NotImplementedError


AUGMENTERS: dict[str, type[Augmenter]] = {}


def register(cls: type[Augmenter]) -> type[Augmenter]:
    if cls.kind != "positive" and cls.kind not in NEGATIVE_TYPES:
        raise AugmenterError(f"augmenter {cls.name}: kind {cls.kind!r} is not 'positive' or one of {', '.join(NEGATIVE_TYPES)}")
    if (cls.kind == "positive") == issubclass(cls.Options, NegativeOptions):
        raise AugmenterError(f"augmenter {cls.name}: a {cls.kind} augmenter's Options must "
                             f"{'not ' if cls.kind == 'positive' else ''}extend NegativeOptions")
    AUGMENTERS[cls.name] = cls
    return cls


def make_augmenter(name: str, options: AugmenterOptions | Mapping[str, Any] | None = None, device: str = "cpu") -> Augmenter:
    if name not in AUGMENTERS:
        raise AugmenterError(f"unknown augmenter {name!r} (known: {', '.join(sorted(AUGMENTERS))})")
    return AUGMENTERS[name](options, device)
