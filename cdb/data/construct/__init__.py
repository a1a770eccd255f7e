"""Data construction: sources -> candidates (augmenters) -> scores -> labelled, filtered records.

    python -m cdb.data build --output DIR [--input PATH_OR_HF_ID] [--augmenters a,b] [--ray] [--set k=v]

See pipeline.py (the stages, cache and Ray path), augmenters.py (one class per augmenter),
label.py (the labelling rule and filters, docs/METHOD.md), inputs.py (readers, the offline BOLD corpus).
"""

from cdb.data.construct.augmenters import AUGMENTERS, DEFAULT_AUGMENTERS, Augmenter, Candidate, make_augmenter, register
from cdb.data.construct.label import LabelConfig, Scored, is_positive, label_source
from cdb.data.construct.pipeline import BuildConfig, BuildResult, SettingsError, run_build

__all__ = [
    "AUGMENTERS", "DEFAULT_AUGMENTERS", "Augmenter", "Candidate", "make_augmenter", "register",
    "LabelConfig", "Scored", "is_positive", "label_source",
    "BuildConfig", "BuildResult", "SettingsError", "run_build",
]
