"""The settings of a build (`python -m cdb.data build`), in the grammar of cdb.settings: a frozen
dataclass, filled from its defaults, `--config FILE.yaml`, the CLI's flags, then `--set key=value`.

Top-level keys set the input, the output and how the build runs (`chunk_size`, `torch_threads`,
the scorers, ...); `label.*` the labelling rule's thresholds; `bold.*` how the offline BOLD corpus
is grouped; `ray.*` the Ray path; and each augmenter has its own section of options, named as the
augmenter (`mask_ent.fraction`, `toxic.model`). A negative augmenter's `guard_jaccard` follows
`label.max_jaccard` unless set.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from cdb import settings
from cdb.data.construct.augmenters import AUGMENTERS, DEFAULT_AUGMENTERS, AugmenterOptions, NegativeOptions
from cdb.data.construct.augmenters.lm_based import (
    BackTranslateOptions, MaskFillOptions, ParaphraseOptions, RegenerateOptions, SysLowConfidenceOptions,
)
from cdb.data.construct.augmenters.rules import SwapOptions
from cdb.data.construct.augmenters.toxic import ToxicOptions
from cdb.data.construct.label import LabelConfig
from cdb.data.entities import DEFAULT_TAGGER, valid_tagger_spec
from cdb.settings import ConfigError


@dataclass(frozen=True)
class BoldSettings:
    min_sentences: int = 2
    """A page gives a source only with at least this many consecutive usable sentences."""
    max_sentences: int = 4
    """Sentences per source (at most)."""
    max_source_words: int = 110
    """Words per source (at most)."""


@dataclass(frozen=True)
class RaySettings:
    enabled: bool = False
    """Run the model-based stages as Ray Data actor pools (also on when RAY_ADDRESS is set)."""
    concurrency: int = 1
    """Actors per stage."""
    num_cpus: float = 1.0
    """CPUs per actor."""
    num_gpus: float = -1.0
    """GPUs per actor; -1 = 1 when the cluster has GPUs, else 0."""


@dataclass(frozen=True)
class BuildSettings:
    output: str = ""
    """Output folder (records.jsonl, card.json, card.md, scores.jsonl, rejected.jsonl, .cache/); required."""
    input: str = ""
    """JSONL, CSV, parquet, a dataset folder or a HF dataset id; empty = the offline BOLD corpus."""
    source_field: str = "source"
    """Field with the source text."""
    reference_field: str = "reference"
    """Field with the reference (the first positive); empty = the lead sentence of the source."""
    id_field: str = "id"
    """Field with a record id (missing: FILE-ROW)."""
    split: str = "train"
    """Split of a HF dataset."""
    seed: int = 0
    """Seed of every random choice; the same seed gives the same bytes."""
    limit: int = 0
    """Use the first N valid sources; 0 = all."""
    augmenters: tuple[str, ...] = DEFAULT_AUGMENTERS
    """Augmenters to run, in order (comma-separated on the command line)."""
    chunk_size: int = 16
    """Sources per chunk: the unit of caching, resuming and Ray batches."""
    device: str = "cpu"
    """Device of the models run locally (Ray actors use a GPU when they get one)."""
    torch_threads: int = 0
    """torch CPU threads; 0 = torch's default (1 is fastest on a busy 2-core machine)."""
    toxicity_scorer: str = "profanity-check"
    """The labeller's toxicity instrument (cdb.scoring): `profanity-check`, `tox-block` or
    `hf:MODEL_ID_OR_DIR`; evaluation's default is another one, so the labeller never grades the model."""
    faithfulness_scorer: str = "embedding"
    """`embedding`, `embedding:MODEL` or `nli:MODEL_ID_OR_DIR` (cdb.scoring)."""
    entity_tagger: str = DEFAULT_TAGGER
    """Entity tagger of the early-entity filter and of the card's shortcut probe: the same choices and
    default as training's `data.entity_tagger` (cdb/data/entities.py)."""
    max_reference_words: int = 24
    """Length limit of a reference taken from the lead sentence of a source, in words."""
    progress: bool = True
    """Progress bars on stderr."""
    label: LabelConfig = field(default_factory=LabelConfig)
    """The labelling rule's thresholds (cdb/data/construct/label.py)."""
    bold: BoldSettings = field(default_factory=BoldSettings)
    """Grouping of the offline BOLD corpus into sources."""
    ray: RaySettings = field(default_factory=RaySettings)
    """The Ray path."""
    paraphrase: ParaphraseOptions = field(default_factory=ParaphraseOptions)
    """Options of the paraphrase augmenter."""
    backtranslate: BackTranslateOptions = field(default_factory=BackTranslateOptions)
    """Options of the backtranslate augmenter."""
    swap_ent: SwapOptions = field(default_factory=SwapOptions)
    """Options of the swap_ent augmenter."""
    mask_ent: MaskFillOptions = field(default_factory=MaskFillOptions)
    """Options of the mask_ent augmenter."""
    mask_rel: MaskFillOptions = field(default_factory=MaskFillOptions)
    """Options of the mask_rel augmenter."""
    regen_ent: RegenerateOptions = field(default_factory=RegenerateOptions)
    """Options of the regen_ent augmenter."""
    regen_rel: RegenerateOptions = field(default_factory=RegenerateOptions)
    """Options of the regen_rel augmenter."""
    sys_lowcon: SysLowConfidenceOptions = field(default_factory=SysLowConfidenceOptions)
    """Options of the sys_lowcon augmenter."""
    toxic: ToxicOptions = field(default_factory=ToxicOptions)
    """Options of the toxic augmenter."""

    def augmenter_options(self, name: str):
        """The options of augmenter `name`: its section, or its defaults for one registered at run time."""
        names = {f.name for f in dataclasses.fields(self)}
        return getattr(self, name) if name in names else AUGMENTERS[name].Options()


AUGMENTER_SECTIONS = tuple(name for name, hint in typing.get_type_hints(BuildSettings).items()
                           if isinstance(hint, type) and issubclass(hint, AugmenterOptions))


def resolve(config_file: str | None = None, flags: dict[str, Any] | None = None, sets=()) -> BuildSettings:
    """Defaults <- YAML file <- flags (dotted keys, None = not given) <- `--set key=value`, checked."""
    values = settings.load_yaml(config_file) if config_file else {}
    set_pairs = settings.parse_sets(sets)
    for key, value in (flags or {}).items():
        if value is not None:
            settings.set_dotted(values, key, value)
    for key, value in set_pairs:
        settings.set_dotted(values, key, value)
    label = values.get("label")
    max_jaccard = label.get("max_jaccard", LabelConfig.max_jaccard) if isinstance(label, dict) else LabelConfig.max_jaccard
    for name in AUGMENTER_SECTIONS:
        section = values.setdefault(name, {})
        if isinstance(section, dict) and issubclass(AUGMENTERS[name].Options, NegativeOptions):
            section.setdefault("guard_jaccard", max_jaccard)
    built = settings.build(BuildSettings, values, "", {key for key, _ in set_pairs})
    check(built)
    return built


def check(s: BuildSettings) -> None:
    """Rules the types alone cannot state; a ConfigError names the key and the rule."""
    rules = {
        "output": (bool(s.output.strip()), "required (the output folder)"),
        "limit": (s.limit >= 0, "must be >= 0"),
        "chunk_size": (s.chunk_size >= 1, "must be >= 1"),
        "torch_threads": (s.torch_threads >= 0, "must be >= 0"),
        "max_reference_words": (s.max_reference_words >= 1, "must be >= 1"),
        "label.min_positives": (s.label.min_positives >= 1, "must be >= 1"),
        "label.max_positives": (s.label.max_positives >= s.label.min_positives, "must be >= label.min_positives"),
        "label.max_per_type": (s.label.max_per_type >= 1, "must be >= 1"),
        "bold.max_sentences": (s.bold.max_sentences >= s.bold.min_sentences, "must be >= bold.min_sentences"),
        "ray.concurrency": (s.ray.concurrency >= 1, "must be >= 1"),
        "entity_tagger": (valid_tagger_spec(s.entity_tagger), "must be 'regex', 'spacy:MODEL' or 'hf:MODEL_ID_OR_DIR'"),
    }
    for key, (ok, rule) in rules.items():
        if not ok:
            section, _, name = key.rpartition(".")
            value = getattr(getattr(s, section) if section else s, name)
            raise ConfigError(f"{key}: {rule}, got {value!r}")
    unknown = [n for n in s.augmenters if n not in AUGMENTERS]
    if unknown:
        raise ConfigError(f"augmenters: unknown augmenter {unknown[0]!r} (known: {', '.join(sorted(AUGMENTERS))})")
    if len(set(s.augmenters)) != len(s.augmenters):
        raise ConfigError(f"augmenters: {','.join(s.augmenters)} names one twice")
    for name in AUGMENTER_SECTIONS:
        options = getattr(s, name)
        if not 0.0 <= options.fraction <= 1.0:
            raise ConfigError(f"{name}.fraction: must be in [0, 1], got {options.fraction!r}")
        if options.n < 1:
            raise ConfigError(f"{name}.n: must be >= 1, got {options.n!r}")
