"""What a build reads: sources (`Item`: text, reference, where it came from), a reader's result
(`InputData`), the bad lines it skipped (`BadInput`), and the lead-sentence reference of a source.
Shared by the file readers (cdb.data.construct.inputs) and the offline BOLD corpus (cdb.data.bold).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cdb.data.text import clean_spaces, has_finite_verb
from cdb.sentences import split_sentences


@dataclass(frozen=True)
class Item:
    id: str
    source: str
    reference: str
    where: str


@dataclass(frozen=True)
class BadInput:
    where: str
    reason: str


@dataclass
class InputData:
    items: list[Item]
    bad: list[BadInput]
    sha256: str
    location: str
    origin: dict = field(default_factory=dict)


# --- references -----------------------------------------------------------------------------------

def lead_reference(text: str, max_words: int = 24, min_words: int = 5) -> str | None:
    """The first sentence of `text`, compressed: parentheses and bracketed notes removed and, when
    still longer than `max_words`, cut at the last clause boundary (comma, semicolon, dash, or a
    relative pronoun) that keeps >= min_words words. None when no such cut exists."""
    sentences = split_sentences(text)
    if not sentences:
        return None
    first = sentences[0]
    first = re.sub(r"\s*\([^()]*\)", "", first)
    first = re.sub(r"\s*\[[^\]]*\]", "", first)
    first = clean_spaces(first)
    tokens = first.split()
    if len(tokens) < min_words:
        return None
    if len(tokens) <= max_words:
        if not has_finite_verb(first):
            return None
        return first if first.endswith((".", "!", "?")) else first.rstrip(",;:") + "."
    head = " ".join(tokens[: max_words + 1])
    cuts = [m.start() for m in re.finditer(r",|;| –| —| - | who | which | whose | where | while | and | but ", head)]
    cuts = [c for c in cuts if len(head[:c].split()) >= max(min_words, 8) and has_finite_verb(head[:c])]
    if not cuts:
        return None
    return head[: cuts[0]].rstrip(" ,;:–—-") + "."
