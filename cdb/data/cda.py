"""Counterfactual data augmentation (the `cda` baseline): demographic terms swapped, both versions kept.

Word lists: gender pairs in the manner of Zhao et al. (2018, "Gender Bias in Coreference
Resolution"), race and religion triples in the manner of the bias-bench lists of Meade et al.
(2022, "An Empirical Survey of the Effectiveness of Debiasing Techniques"). They are short lists
written for cdb, not copies; extend them here. A term is replaced by the next one of its tuple
(two-sided for pairs, a rotation for triples), keeping its capitalisation.
"""

from __future__ import annotations

import re
from dataclasses import replace

from cdb.data.records import Negative, Record

ATTRIBUTES: dict[str, list[tuple[str, ...]]] = {
    "gender": [
        ("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"), ("man", "woman"), ("men", "women"),
        ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("fathers", "mothers"), ("son", "daughter"),
        ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"), ("husband", "wife"),
        ("husbands", "wives"), ("king", "queen"), ("mr", "mrs"), ("male", "female"), ("actor", "actress"),
        ("uncle", "aunt"), ("nephew", "niece"), ("gentleman", "lady"), ("gentlemen", "ladies"),
        ("boyfriend", "girlfriend"), ("grandfather", "grandmother"), ("dad", "mom"), ("sir", "madam"),
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


def _swap_table(groups: list[tuple[str, ...]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for group in groups:
        for i, word in enumerate(group):
            table.setdefault(word, group[(i + 1) % len(group)])  # first mapping wins ("her" -> "him")
    return table


TABLES = {name: _swap_table(groups) for name, groups in ATTRIBUTES.items()}


def _match_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def swap_terms(text: str, attribute: str) -> str:
    """`text` with every term of `attribute` replaced by its counterpart (whole words only)."""
    table = TABLES[attribute]
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")\b", re.IGNORECASE)

    def counterpart(match: re.Match) -> str:
        word = match.group(0).lower()
        if word == "her" and attribute == "gender":
            # "her" is possessive before a word ("her son" -> "his son"), an object otherwise ("met her" -> "met him").
            word_follows = re.match(r"\s+[A-Za-z]", text[match.end():]) is not None
            return _match_case(match.group(0), "his" if word_follows else "him")
        return _match_case(match.group(0), table[word])

    return pattern.sub(counterpart, text)


def counterfactual_records(records: list[Record], attributes: tuple[str, ...] = tuple(ATTRIBUTES)) -> list[Record]:
    """The records plus, for each attribute that changes a record, its counterfactual copy."""
    out = list(records)
    for record in records:
        for attribute in attributes:
            source = swap_terms(record.source, attribute)
            positives = tuple(swap_terms(p, attribute) for p in record.positives)
            if source == record.source and positives == record.positives:
                continue
            negatives = tuple(Negative(swap_terms(n.text, attribute), n.type) for n in record.negatives)
            out.append(replace(record, id=f"{record.id}~cda-{attribute}", source=source, positives=positives, negatives=negatives))
    return out
