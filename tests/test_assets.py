"""Checks on the shipped offline assets: the embedded contrastive dataset and the tiny tokenizer.

The dataset is a build of `python -m cdb.data build` (scripts/build_embedded_data.sh) over BOLD's
Wikipedia sentences: it is checked against its data card, against the BOLD text it came from, and
re-scored from scratch (scripts/check_built_data.py). The tokenizer is regenerated into a temporary
directory and compared byte for byte with the shipped files (the generator is deterministic).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(REPO_ROOT, "cdb", "assets")
DATA_DIR = os.path.join(ASSETS, "contrastive")
DATA = os.path.join(DATA_DIR, "records.jsonl")
TOK_DIR = os.path.join(ASSETS, "tiny_tokenizer")
BUILD_SCRIPT = os.path.join(REPO_ROOT, "scripts", "build_embedded_data.sh")
CHECK_SCRIPT = os.path.join(REPO_ROOT, "scripts", "check_built_data.py")
TOK_SCRIPT = os.path.join(REPO_ROOT, "scripts", "make_tiny_tokenizer.py")

NEGATIVE_TYPES = ("toxic", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon")
SPECIALS = {"bos": ("<|bos|>", 0), "eos": ("<|eos|>", 1), "pad": ("<|pad|>", 2), "unk": ("<|unk|>", 3)}


@pytest.fixture(scope="module")
def records():
    with open(DATA, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(DATA_DIR, "card.json"), encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------

def test_embedded_dataset_is_the_default_and_loads_clean():
    from cdb.data.records import embedded_dataset_path, load_records

    assert str(embedded_dataset_path()) == DATA
    loaded, rejected = load_records(DATA)
    assert len(loaded) >= 200 and rejected == []
    assert len({r.id for r in loaded}) == len(loaded)


def test_card_describes_the_shipped_records(records, card):
    counts = card["counts"]
    assert counts["records"] == len(records)
    types = Counter(n["type"] for r in records for n in r["negatives"])
    assert dict(types) == counts["negatives_by_type"]
    assert set(types) == set(NEGATIVE_TYPES)
    assert counts["positives"] == sum(len(r["positives"]) for r in records)
    assert card["input"]["origin"]["licence"] == "CC BY-SA 4.0"
    # The card's command is the one the shipped script runs (the output folder aside).
    with open(BUILD_SCRIPT, encoding="utf-8") as f:
        script = f.read().replace("\\\n", " ")
    script_call = next(line for line in script.splitlines() if line.startswith('"$py" -m cdb.data build'))
    assert build_flags(card["command"]) == build_flags(script_call)


def build_flags(command: str) -> list[str]:
    """The arguments after `cdb.data build`, without `--output DIR`."""
    words = shlex.split(command)
    words = words[words.index("build") + 1:]
    at = words.index("--output")
    return words[:at] + words[at + 2:]


def test_shortcut_probe_of_the_card_is_the_shipped_records_and_holds(card):
    """The shortcut probe (cdb/data/construct/probe.py) recomputed from the shipped records with the
    tagger training uses is the card's, and meets its targets: few tagged spans in positives and toxic
    negatives that the source lacks, a bag of the pooled tokens tells positives from negatives no
    better than the source's entities do, and what a causal LM has read at the pooled positions does not
    give the toxic negatives away at all of them."""
    from cdb.data.construct.probe import probe_holds, shortcut_probe
    from cdb.data.entities import DEFAULT_TAGGER, make_tagger
    from cdb.data.records import load_records

    assert card["entity_tagger"] == DEFAULT_TAGGER
    loaded, _ = load_records(DATA)
    probe = shortcut_probe(loaded, make_tagger())
    assert probe == card["shortcut_probe"]
    spans = probe["spans_not_in_source"]
    assert spans["spans"] >= 1000 and spans["share"] <= spans["target_max_share"] == 0.05
    bag = probe["bag_of_pooled_tokens"]
    assert bag["held_out_rows"] >= 200
    assert bag["accuracy_pooled_tokens"] <= bag["accuracy_source_entities"] + bag["target_max_accuracy_over_source"]
    # What a causal LM has read at each pooled position, out of fold by source: the toxic negatives are not
    # found at every one of their pooled positions (a fixed opening frame let a probe find all of them).
    causal = probe["causal_prefix"]
    for task in ("negative_vs_positive", "toxic_vs_positive"):
        assert causal[task]["sources"] == len(loaded) and causal[task]["positions"] >= 2000
        for estimate in ("accuracy", "majority_share", "accuracy_toxic_rows"):
            low, high = causal[task][estimate]["interval"]
            assert low <= causal[task][estimate]["value"] <= high
    toxic_rows = causal["negative_vs_positive"]["accuracy_toxic_rows"]
    assert toxic_rows["n"] >= 500 and toxic_rows["interval"][1] <= causal["target_max_toxic_rows"] == 0.9
    assert probe_holds(probe)
    # The regex tagger fails it on the same records: template words are tagged as entities.
    assert not probe_holds(shortcut_probe(loaded, make_tagger("regex")))


def test_card_counts_positives_per_generator_and_their_openings(records, card):
    from cdb.data.construct.card import openings

    generators = card["positives_by_generator"]
    assert sum(g["count"] for g in generators.values()) == card["counts"]["positives"]
    assert generators["reference"]["count"] == len(records)
    assert generators["paraphrase:lm"]["count"] > generators["paraphrase:rules"]["count"]  # LM paraphrases first
    generated = [p for r in records for p in r["positives"][1:]]  # the reference comes first
    assert card["positive_openings"] == openings(generated)
    # No opening is a frame shared by many positives.
    assert card["positive_openings"][0][2] <= 0.1


def test_toxic_negatives_vary_and_share_no_opening(records, card):
    """No four-word opening is shared by more than 5% of the toxic negatives, and their rule-based
    rewrites use every form (before, around, inside and after the reference), none for most of them."""
    from cdb.data.construct.augmenters.toxic import FORMS
    from cdb.data.construct.card import openings

    toxic = [n["text"] for r in records for n in r["negatives"] if n["type"] == "toxic"]
    section = card["toxic_negatives"]
    assert section["openings"] == openings(toxic, 4)
    assert section["max_opening_share"] == section["openings"][0][2] <= section["target_max_opening_share"] == 0.05
    by_form = Counter()
    for origin, n in card["counts"]["negatives_by_origin"].items():
        if origin.startswith("toxic:"):
            by_form[origin.split(":")[2]] += n
    assert sum(by_form.values()) == len(toxic) and set(by_form) == set(FORMS)
    assert max(by_form.values()) <= 0.4 * len(toxic)
    made = section["by_origin"]
    assert all(v["toxicity_at_least_min"] <= v["candidates"] for v in made.values())
    first_drafts = [v["candidates"] for o, v in made.items() if o.count(":") == 2]
    assert len(first_drafts) == len(FORMS) and sum(first_drafts) >= card["counts"]["records"]


def test_sources_are_bold_text(records, card):
    from cdb.data.bold import bold_corpus

    corpus = {item.id: item for item in bold_corpus(limit=card["input"]["limit"]).items}
    for r in records:
        assert r["id"] in corpus, r["id"]
        assert r["source"] == corpus[r["id"]].source


@pytest.mark.integration
def test_rescored_records_pass_the_methods_checks():
    proc = subprocess.run([sys.executable, CHECK_SCRIPT, DATA_DIR], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout[:proc.stdout.rindex("}") + 1])
    assert report["negatives"]["toxic"]["toxicity"] >= 0.4
    assert report["positives"]["toxicity"] <= 0.2
    assert report["positives"]["faithfulness"] > report["negatives"]["swap_ent"]["faithfulness"]


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
    # ByteLevel trim_offsets: the word's tokens exclude the preceding space (offset 11).
    assert not any(a <= 11 < b for a, b in offsets)
    assert [a for a, b in offsets if a <= 12 < b] == [12]
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
