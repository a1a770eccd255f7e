"""Data construction: sources -> candidates (augmenters) -> scores -> labelled, filtered records.

    python -m cdb.data build --output DIR [--input PATH_OR_HF_ID] [--augmenters a,b] [--ray] [--set k=v]

See config.py (the settings), pipeline.py (the stages, cache and Ray path), augmenters/ (the
interface, registry and each augmenter), label.py (the labelling rule and filters, docs/METHOD.md),
inputs.py (the file readers; cdb.data.bold is the offline default corpus).
"""

from cdb.data.construct.augmenters import AUGMENTERS, DEFAULT_AUGMENTERS, Augmenter, Candidate, make_augmenter, register
from cdb.data.construct.config import BuildSettings, resolve
from cdb.data.construct.label import LabelConfig, Scored, is_positive, label_source
from cdb.data.construct.pipeline import BuildResult, run_build

__all__ = [
    "AUGMENTERS", "DEFAULT_AUGMENTERS", "Augmenter", "Candidate", "make_augmenter", "register",
    "BuildSettings", "resolve",
    "LabelConfig", "Scored", "is_positive", "label_source",
    "BuildResult", "run_build",
]
