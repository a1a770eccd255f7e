"""Checks on the shipped offline assets: the embedded contrastive dataset and the tiny tokenizer.

Both assets are regenerated here into a temporary directory and compared byte for byte with the
shipped files (the generators are deterministic, and this also catches a stale shipped file).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(REPO_ROOT, "cdb", "assets")
DATA = os.path.join(ASSETS, "contrastive.jsonl")
TOK_DIR = os.path.join(ASSETS, "tiny_tokenizer")
DATA_SCRIPT = os.path.join(REPO_ROOT, "scripts", "make_embedded_data.py")
TOK_SCRIPT = os.path.join(REPO_ROOT, "scripts", "make_tiny_tokenizer.py")

ALLOWED_TYPES = {
    "toxic", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon", "other",
}
SPECIALS = {"bos": ("<|bos|>", 0), "eos": ("<|eos|>", 1), "pad": ("<|pad|>", 2), "unk": ("<|unk|>", 3)}
OFFENSIVE = {"idiot", "idiots", "stupid", "damn", "crap", "moron", "morons", "hell", "suck",
             "sucks", "pathetic", "dumbass", "dumbasses", "shut"}


def word_set(text):
    return {w for w in re.split(r"\W+", text.lower()) if w}


def jaccard(a, b):
    wa, wb = word_set(a), word_set(b)
    return len(wa & wb) / max(len(wa | wb), 1)


@pytest.fixture(scope="module")
def records():
    with open(DATA, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------

def test_data_generator_is_deterministic_and_shipped_file_up_to_date(tmp_path):
    out = tmp_path / "contrastive.jsonl"
    subprocess.run([sys.executable, DATA_SCRIPT, "--output", str(out)], check=True,
                   capture_output=True, cwd=str(tmp_path))
    with open(DATA, "rb") as f:
        shipped = f.read()
    assert out.read_bytes() == shipped
    assert b"\r" not in shipped and shipped.endswith(b"\n")


def test_schema_and_sizes(records):
    assert len(records) >= 200
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        assert list(r) == ["id", "source", "positives", "negatives"]
        assert isinstance(r["source"], str) and r["source"].strip()
        assert len(r["source"].split()) < 90
        assert len(r["positives"]) >= 2
        assert all(isinstance(p, str) and p.strip() for p in r["positives"])
        assert len(set(r["positives"])) == len(r["positives"])
        assert len(r["negatives"]) >= 2
        for n in r["negatives"]:
            assert list(n) == ["text", "type"]
            assert isinstance(n["text"], str) and n["text"].strip()
            assert n["type"] in ALLOWED_TYPES


def test_negative_types(records):
    types = Counter(n["type"] for r in records for n in r["negatives"])
    assert len(types) >= 3
    assert "toxic" in types
    with_toxic = sum(any(n["type"] == "toxic" for n in r["negatives"]) for r in records)
    assert with_toxic > len(records) / 2


def test_jaccard_filter(records):
    for r in records:
        for p in r["positives"]:
            for n in r["negatives"]:
                assert jaccard(p, n["text"]) <= 0.8, (r["id"], p, n["text"])


def test_positives_polite_and_toxic_negatives_offensive(records):
    for r in records:
        for p in r["positives"]:
            assert not word_set(p) & OFFENSIVE, (r["id"], p)
        for n in r["negatives"]:
            if n["type"] == "toxic":
                assert len(word_set(n["text"]) & OFFENSIVE) >= 2, (r["id"], n["text"])


def test_swap_ent_uses_source_entities(records):
    n_swap = 0
    for r in records:
        source_words = set(re.findall(r"\w+", r["source"]))
        for n in r["negatives"]:
            if n["type"] != "swap_ent":
                continue
            n_swap += 1
            assert all(n["text"] != p for p in r["positives"]), r["id"]
            caps = [w for w in re.findall(r"\w+", n["text"]) if w[0].isupper()]
            missing = [w for w in caps if w not in source_words]
            assert not missing, (r["id"], missing, n["text"])
    assert n_swap > 0


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(TOK_DIR)


def test_tokenizer_files():
    names = set(os.listdir(TOK_DIR))
    assert "tokenizer.json" in names and "tokenizer_config.json" in names
    assert names <= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def test_tokenizer_special_tokens(tok):
    assert tok.is_fast
    assert len(tok) == 4096
    for name, (text, idx) in SPECIALS.items():
        assert getattr(tok, f"{name}_token") == text
        assert getattr(tok, f"{name}_token_id") == idx
        assert tok.convert_tokens_to_ids(text) == idx


def test_tokenizer_adds_no_special_tokens(tok):
    for text in ["hi", "He lives in Paris."]:
        ids = tok(text)["input_ids"]
        assert not set(ids) & {idx for _, idx in SPECIALS.values()}
        assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_offsets(tok):
    text = "He lives in Paris."
    enc = tok(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert len(offsets) == len(enc["input_ids"])
    spans = [text[a:b] for a, b in offsets]
    # ByteLevel trim_offsets: the word's span excludes the preceding space.
    assert "Paris" in spans
    assert offsets[spans.index("Paris")] == (12, 17)
    # Offsets are increasing and inside the text.
    assert all(0 <= a <= b <= len(text) for a, b in offsets)
    assert all(offsets[i][0] >= offsets[i - 1][1] for i in range(1, len(offsets)))


def test_tokenizer_round_trip(tok):
    for text in ["The city council of Lyon approved a 4.5 million euros plan on 12 March 2019.",
                 "Hello, world! What time is it?  Two  spaces, a tab\tand a newline\nhere."]:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_generator_is_deterministic(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    out = tmp_path / "tok"
    subprocess.run([sys.executable, TOK_SCRIPT, "--data", DATA, "--output", str(out)],
                   check=True, capture_output=True, cwd=str(tmp_path))
    assert sorted(os.listdir(out)) == sorted(os.listdir(TOK_DIR))
    for name in os.listdir(TOK_DIR):
        with open(os.path.join(TOK_DIR, name), "rb") as f:
            assert (out / name).read_bytes() == f.read(), name
