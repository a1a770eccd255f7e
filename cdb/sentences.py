"""The sentence splitter of evaluation and the scorers: pysbd (rule-based sentence boundary
disambiguation, pinned in pyproject.toml), which keeps abbreviations, initials and titles inside
their sentence ("John Smith Jr. joined the U.S. Army.", "Dr. J. R. Tolkien", "at 5 p.m. on Jan. 5").

    split_sentences(text) -> [sentence, ...]   (stripped, none empty; [] for blank text)

Line breaks count as spaces. Data construction cuts its BOLD sources with its own splitter
(cdb.data.text.split_build_sentences): the embedded dataset was built with it, and it stays as built.
"""

from __future__ import annotations

import re


def split_sentences(text: str) -> list[str]:
    import pysbd

    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    # A segmenter keeps per-call state: one per call (they cost nothing to build) is thread-safe.
    segmenter = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for s in segmenter.segment(text) if s.strip()]
