"""Records -> training rows -> micro-batches of whole sources -> padded tensors.

Row = [BOS] + source (cut at a sentence boundary to max_source_tokens) + candidate (<= max_target
tokens, EOS last). Labels are -100 on BOS and source. All rows of a source sit in one micro-batch,
so one forward pass serves the LM loss and the within-source contrast (docs/METHOD.md, "Rows and micro-batches").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from cdb.data.entities import Tagger, candidate_form, entity_token_mask
from cdb.data.records import NEGATIVE_TYPES, Record

IGNORE = -100
TOXIC = NEGATIVE_TYPES.index("toxic")
SENTENCE_ENDS = ".!?"


@dataclass(frozen=True)
class Row:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    entity: tuple[bool, ...]
    positive: bool
    neg_type: int
    """Index in NEGATIVE_TYPES; -1 for a positive."""


@dataclass(frozen=True)
class SourceRows:
    record_id: str
    rows: tuple[Row, ...]

    @property
    def longest(self) -> int:
        return max(len(r.input_ids) for r in self.rows)

    @property
    def tokens(self) -> int:
        return sum(len(r.input_ids) for r in self.rows)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) ids; models without a BOS or PAD token reuse EOS (labels mask padding anyway)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def cut_source(ids: list[int], offsets: list[tuple[int, int]], text: str, limit: int) -> list[int]:
    """The longest prefix of <= limit tokens that ends a sentence; a hard cut when none does."""
    if len(ids) <= limit:
        return ids
    for k in range(limit, 0, -1):
        end = offsets[k - 1][1]
        if end > 0 and text[end - 1] in SENTENCE_ENDS:
            return ids[:k]
    return ids[:limit]


def tokenize_records(records: Sequence[Record], tokenizer, tagger: Tagger, max_source: int, max_target: int) -> list[SourceRows]:
    bos, eos, _ = special_ids(tokenizer)
    sources = tokenizer([r.source for r in records], add_special_tokens=False, return_offsets_mapping=True)
    candidates = [(text, True, -1) for r in records for text in r.positives]
    candidates += [(n.text, False, NEGATIVE_TYPES.index(n.type)) for r in records for n in r.negatives]
    # Candidates follow the source after a space; tag and tokenize them in that form.
    texts = [candidate_form(c[0]) for c in candidates]
    spans = tagger(texts)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)

    rows_by_record: list[list[Row]] = [[] for _ in records]
    owner = [i for i, r in enumerate(records) for _ in r.positives] + [i for i, r in enumerate(records) for _ in r.negatives]
    for index, (_, positive, neg_type) in enumerate(candidates):
        record = owner[index]
        source_ids = cut_source(sources["input_ids"][record], sources["offset_mapping"][record], records[record].source, max_source)
        ids = encoded["input_ids"][index][: max_target - 1] + [eos]
        entity = entity_token_mask(encoded["offset_mapping"][index][: max_target - 1], spans[index]) + [False]
        prefix = 1 + len(source_ids)
        rows_by_record[record].append(Row(
            input_ids=tuple([bos] + source_ids + ids),
            labels=tuple([IGNORE] * prefix + ids),
            entity=tuple([False] * prefix + entity),
            positive=positive,
            neg_type=neg_type,
        ))
    return [SourceRows(r.id, tuple(rows)) for r, rows in zip(records, rows_by_record)]


def assign_micro_batches(sources: Sequence[SourceRows], micro_batch: int, seed: int, epoch: int, rank: int, world: int, group_size: int = 64) -> list[list[SourceRows]]:
    """This rank's micro-batches for one epoch: shuffled, length-grouped, equal count on every rank.

    Sources are shuffled, then sorted by length inside windows of `group_size` micro-batches so
    that a micro-batch holds rows of similar length (little padding) while the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(sources)))
    rng.shuffle(order)
    window = micro_batch * group_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: sources[i].longest)
        batches += [chunk[i:i + micro_batch] for i in range(0, len(chunk), micro_batch)]
    batches = [b for b in batches if len(b) == micro_batch]
    rng.shuffle(batches)
    per_rank = len(batches) // world
    mine = batches[rank * per_rank:(rank + 1) * per_rank]
    return [[sources[i] for i in b] for b in mine]


def micro_batches_per_epoch(n_sources: int, micro_batch: int, world: int) -> int:
    """Micro-batches each rank gets per epoch (as assign_micro_batches makes them)."""
    return (n_sources // micro_batch) // world


def collate(sources: Sequence[SourceRows], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [row for s in sources for row in s.rows]
    width = max(len(r.input_ids) for r in rows)

    def padded(values, fill):
        return torch.tensor([list(v) + [fill] * (width - len(v)) for v in values])

    labels = padded([r.labels for r in rows], IGNORE)
    neg_type = torch.tensor([r.neg_type for r in rows], dtype=torch.long)
    return {
        "input_ids": padded([r.input_ids for r in rows], pad_id),
        "attention_mask": padded([[1] * len(r.input_ids) for r in rows], 0),
        "labels": labels,
        "target_mask": labels != IGNORE,
        "entity_mask": padded([r.entity for r in rows], False).bool(),
        "group": torch.tensor([g for g, s in enumerate(sources) for _ in s.rows], dtype=torch.long),
        "positive": torch.tensor([r.positive for r in rows], dtype=torch.bool),
        "neg_type": neg_type,
        "has_toxic": (neg_type == TOXIC).any(),
    }
