"""The canonical definitions of cdb.eval's metrics: the sentence splitter, SummaC-ZS windowing and the
authors' NLI protocol on a tiny local NLI model, toxicity at k over held-out prompts (toxic and non-toxic prompts apart),
completeness judged only where the model ended the text, the labeller marks, and the published
prefixes."""

import math
from pathlib import Path

import pytest
import torch

from cdb.eval import make_options
from cdb.eval.estimates import estimate
from cdb.eval.faithfulness import finish
from cdb.eval.intelligibility import flags, share_items, shares
from cdb.eval.lm import EvalLM, Generation
from cdb.eval.options import INSTRUCTION, bias_type_prefix
from cdb.eval.toxicity import Prompt, by_prompt_toxicity, load_bold, load_rtp, toxicity_metrics
from cdb.model import TINY
from cdb.sentences import split_sentences

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


# ---- the sentence splitter --------------------------------------------------------------------
@pytest.mark.parametrize("text,sentences", [
    ("John Smith Jr. joined the U.S. Army in 1990. He served for ten years.",
     ["John Smith Jr. joined the U.S. Army in 1990.", "He served for ten years."]),
    ("John Smith Jr. joined the U.S. Army", ["John Smith Jr. joined the U.S. Army"]),
    ("Dr. Jane Doe met Mr. J. R. R. Tolkien at 5 p.m. on Jan. 5. They talked.",  # titles, initials, times
     ["Dr. Jane Doe met Mr. J. R. R. Tolkien at 5 p.m. on Jan. 5.", "They talked."]),
    ("S. R. Varadhan is a mathematician. He won the Abel Prize!", ["S. R. Varadhan is a mathematician.",
                                                                  "He won the Abel Prize!"]),
    ("It has e.g. tanks, i.e. vehicles. Is it big? Yes.", ["It has e.g. tanks, i.e. vehicles.", "Is it big?", "Yes."]),
    ("One line\nand its end.  Two.", ["One line and its end.", "Two."]),
    ("  \n ", []),
    ('He said it was "the end."', ['He said it was "the end."']),  # a closing quote stays with its sentence
    ('"Go home." She left.', ['"Go home."', "She left."]),
])
def test_the_splitter_keeps_abbreviations_initials_and_titles(text, sentences):
    assert split_sentences(text) == sentences


# ---- SummaC-ZS on a tiny local NLI model ---------------------------------------------------------
def tiny_nli(path: Path, labels: dict[int, str], init_std: float = 0.02) -> Path:
    """A random 1-layer BERT classifier with the tiny tokenizer, saved like a hub model; a larger
    `init_std` spreads its probabilities from one pair to the next."""
    from transformers import BertConfig, BertForSequenceClassification

    from cdb.model import load_tokenizer

    tokenizer = load_tokenizer(TINY)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label=labels, label2id={v: k for k, v in labels.items()},
                        pad_token_id=tokenizer.pad_token_id, initializer_range=init_std)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def nli(tmp_path_factory):
    from cdb.scoring import make_faithfulness_scorer

    folder = tiny_nli(tmp_path_factory.mktemp("nli"), {0: "contradiction", 1: "neutral", 2: "entailment"})
    return make_faithfulness_scorer(f"nli:{folder}")


def direct_support(nli, premise: str, hypothesis: str) -> float:
    """P(entailment) - P(contradiction) of one pair, straight from the model."""
    with torch.no_grad():
        probs = torch.softmax(nli.model(**nli.tokenizer(premise, hypothesis, return_tensors="pt")).logits, -1)[0]
    return float(probs[2] - probs[0])


def test_summac_zs_windows_overlap_with_stride_one(nli):
    source = "One sentence here. Two sentences here. Three here. Four at last."
    assert nli.windows(source) == ["One sentence here. Two sentences here.", "Two sentences here. Three here.",
                                   "Three here. Four at last."]
    assert nli.windows("Only one sentence.") == ["Only one sentence."]


def test_summac_zs_score_is_the_mean_over_sentences_of_the_best_window(nli):
    source = "One sentence here. Two sentences here. Three here."
    windows = nli.windows(source)
    sentences = ["First claim.", "Second claim!"]
    best = [max(direct_support(nli, w, s) for w in windows) for s in sentences]
    (score,) = nli.score([source], [" ".join(sentences)])
    assert score == pytest.approx(sum(best) / 2, abs=1e-5)
    assert -1.0 <= score <= 1.0
    assert nli.score([source], [" "]) == [0.0]


def test_summac_zs_truncates_the_premise_only(nli):
    nli.max_length = 24  # a window far longer than the model takes
    try:
        source = " ".join(f"Sentence number {i} is rather long and wordy indeed." for i in range(4))
        hypothesis = "The final claim is kept whole."
        window = nli.windows(source)[0]
        whole = nli.tokenizer(window, hypothesis, truncation="only_first", max_length=24)["input_ids"]
        kept = nli.tokenizer(hypothesis, add_special_tokens=False)["input_ids"]
        plain = [i for i in whole if i not in nli.tokenizer.all_special_ids]
        assert len(whole) == 24 and plain[-len(kept):] == kept  # the hypothesis, intact, at the end
        with torch.no_grad():
            batch = nli.tokenizer([window], [hypothesis], truncation="only_first", max_length=24, return_tensors="pt")
            probs = torch.softmax(nli.model(**batch).logits, -1)[0]
        assert nli.support([(window, hypothesis)]) == pytest.approx([float(probs[2] - probs[0])], abs=1e-6)
    finally:
        nli.max_length = 512


def test_summac_zs_needs_a_three_way_nli_model(tmp_path):
    from cdb.scoring import make_faithfulness_scorer

    folder = tiny_nli(tmp_path / "two-way", {0: "not_entailment", 1: "entailment"})
    with pytest.raises(ValueError, match="no contradict... label"):
        make_faithfulness_scorer(f"nli:{folder}")


# ---- the authors' NLI protocol on the same tiny NLI model ---------------------------------------
@pytest.fixture(scope="module")
def nli_paper(tmp_path_factory):
    from cdb.scoring import make_faithfulness_scorer

    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    return make_faithfulness_scorer(f"nli-paper:{tiny_nli(tmp_path_factory.mktemp('nli-paper'), labels, init_std=0.5)}")


def direct_entailment(nli, premise: str, hypothesis: str) -> float:
    with torch.no_grad():
        batch = nli.tokenizer(premise, hypothesis, truncation=True, max_length=nli.max_length, return_tensors="pt")
        return float(torch.softmax(nli.model(**batch).logits, -1)[0, 2])


def test_paper_protocol_chunks_do_not_overlap(nli_paper):
    source = "One sentence here. Two sentences here. Three here. Four at last. Five."
    assert nli_paper.chunks(source) == ["One sentence here. Two sentences here.", "Three here. Four at last.", "Five."]
    assert nli_paper.chunks("Only one sentence.") == ["Only one sentence."]


def test_paper_protocol_mean_of_best_chunk_then_the_direct_score_inside_its_band(nli_paper):
    premise = "One sentence here. Two sentences here. Three here."
    summaries = ["First claim. Second claim!", "A claim about sentences.", "Three."]
    chunks = nli_paper.chunks(premise)
    mean_of_best = [sum(max(direct_entailment(nli_paper, c, s) for c in chunks) for s in split_sentences(summary))
                    / len(split_sentences(summary)) for summary in summaries]
    direct = [direct_entailment(nli_paper, premise, summary) for summary in summaries]
    assert any(d > m + 1e-4 for d, m in zip(direct, mean_of_best))  # the band rule changes something here
    try:
        nli_paper.DIRECT_BAND = (0.5, 0.5)  # an empty band: never the direct score
        assert nli_paper.score([premise] * 3, summaries) == pytest.approx(mean_of_best, abs=1e-5)
        nli_paper.DIRECT_BAND = (0.0, 1.0)  # every score inside: the higher of the two
        assert nli_paper.score([premise] * 3, summaries) == pytest.approx(
            [max(m, d) for m, d in zip(mean_of_best, direct)], abs=1e-5)
    finally:
        del nli_paper.DIRECT_BAND
    assert type(nli_paper).DIRECT_BAND == (0.3, 0.7)
    assert nli_paper.score([premise] * 3, summaries) == pytest.approx(
        [max(m, d) if 0.3 < m < 0.7 else m for m, d in zip(mean_of_best, direct)], abs=1e-5)
    (blank,) = nli_paper.score([premise], ["  "])
    assert math.isnan(blank)  # nothing to judge, as the authors' script left it out


def test_paper_protocol_cuts_the_longer_side_first(nli_paper):
    nli_paper.max_length = 24
    try:
        premise = "A short premise."
        summary = " ".join(f"Claim number {i} is rather long and wordy indeed." for i in range(3))
        # One sentence of the summary per pair, so the direct pair (whole summary) is the one cut.
        assert nli_paper.entailment([(premise, summary)]) == pytest.approx([direct_entailment(nli_paper, premise, summary)],
                                                                          abs=1e-6)
        ids = nli_paper.tokenizer(premise, summary, truncation=True, max_length=24)["input_ids"]
        premise_ids = nli_paper.tokenizer(premise, add_special_tokens=False)["input_ids"]
        plain = [i for i in ids if i not in nli_paper.tokenizer.all_special_ids]
        assert len(ids) == 24 and plain[:len(premise_ids)] == premise_ids  # the short premise kept whole
    finally:
        nli_paper.max_length = 512


def test_paper_protocol_needs_an_entailment_label_only(tmp_path):
    from cdb.scoring import make_faithfulness_scorer

    two_way = make_faithfulness_scorer(f"nli-paper:{tiny_nli(tmp_path / 'two-way', {0: 'not_entailment', 1: 'entailment'})}")
    assert two_way.entail == 1 and two_way.name.startswith("nli-paper:")
    with pytest.raises(ValueError, match="no entail... label"):
        make_faithfulness_scorer(f"nli-paper:{tiny_nli(tmp_path / 'other', {0: 'negative', 1: 'positive'})}")


# ---- the headline faithfulness is not the labeller ----------------------------------------------
def test_headline_faithfulness_and_similarity_disagree_on_copying():
    """On a source, its verbatim copy, a faithful rewording and a near-copy with one number changed:
    the labeller's similarity ranks the copies first; the headline scorer does not."""
    from cdb.scoring import make_faithfulness_scorer

    source = ("Acme Corp said on Tuesday that it will cut 1,200 jobs in Ohio by the end of 2024. Chief executive "
              "Maria Lopez blamed falling demand in Europe.")
    reworded = "Blaming weaker demand in Europe, CEO Maria Lopez said Acme Corp will shed 1200 Ohio jobs by the end of 2024."
    changed = source.replace("1,200", "2,400")
    headline, similarity = make_faithfulness_scorer(), make_faithfulness_scorer("embedding")
    copy, faithful, corrupted = headline.score([source] * 3, [source, reworded, changed])
    assert faithful > corrupted and copy == faithful
    sim_copy, sim_faithful, sim_corrupted = similarity.score([source] * 3, [source, reworded, changed])
    assert sim_copy > sim_corrupted > sim_faithful  # what the labeller rewards: copying


def test_labeller_marks_follow_the_data_card():
    from cdb.eval import training_data
    from cdb.scoring import make_faithfulness_scorer, make_toxicity_scorer

    card = training_data.card()["scorers"]
    assert training_data.labelled_with("toxicity", make_toxicity_scorer()) == (card["toxicity"]["name"] == "profanity-check")
    assert training_data.labelled_with("faithfulness", make_faithfulness_scorer("embedding"))
    assert not training_data.labelled_with("faithfulness", make_faithfulness_scorer())


# ---- toxicity at k ----------------------------------------------------------------------------
def test_toxicity_metrics_carry_k_and_split_by_prompt_toxicity():
    scores = [[0.1, 0.6], [0.2, 0.3], [0.9, 0.4]]
    m = toxicity_metrics(scores, k=2)
    assert set(m) == {"mean_toxicity", "expected_max_toxicity_at2", "toxicity_probability_at2"}
    prompts = [Prompt("a", "x", 0.7), Prompt("b", "y", 0.1), Prompt("c", "z", None)]
    split, items = by_prompt_toxicity(prompts, scores, k=2)
    assert split["toxic_prompts/expected_max_toxicity_at2"] == pytest.approx(0.6)
    assert split["nontoxic_prompts/expected_max_toxicity_at2"] == pytest.approx(0.3)
    assert set(items) == set(split)
    assert items["toxic_prompts/toxicity_probability_at2"].values == {"a": 1.0}  # "c" has no toxicity
    assert items["nontoxic_prompts/expected_max_toxicity_at2"].values == {"b": pytest.approx(0.3)}
    assert by_prompt_toxicity([Prompt("a", "x")], [[0.5]], k=1) == ({}, {})
    assert make_options("full").samples == 25 and make_options("quick").samples == 2


def test_rtp_prompt_toxicity_is_read_and_checked(tmp_path):
    prompts = load_rtp(str(FIXTURES / "rtp.jsonl"))
    assert prompts[0].toxicity == pytest.approx(0.295593)
    bad = tmp_path / "rtp.jsonl"
    bad.write_text('{"prompt": {"text": "Hello", "toxicity": "high"}}\n')
    from cdb.eval import EvalDataError

    with pytest.raises(EvalDataError, match=r"rtp.jsonl:line 1: prompt: field 'toxicity' must be a number"):
        load_rtp(str(bad))


def test_bold_prompts_from_trained_pages_are_left_out():
    from cdb.data.bold import BOLD_DOMAINS, page_id
    from cdb.eval import training_data

    prompts, left_out = load_bold(0)
    trained = training_data.trained_pages()
    pages = {page_id(p.id.split("/")[0], p.id.split("/")[2]) for p in prompts}
    assert left_out > 0 and not pages & trained
    assert {p.id.split("/")[0] for p in prompts} == set(BOLD_DOMAINS)
    assert len(load_bold(30)[0]) == 30


# ---- completeness only where the model ended the text ----------------------------------------------
def test_completeness_is_judged_only_on_ended_texts():
    cut = flags("The cat sat on the mat and", ended=False)
    assert cut["incomplete"] is None and not any(v for v in cut.values())
    assert flags("The cat sat on the mat and", ended=True)["incomplete"] is True
    s = shares([flags("The cat sat on the mat and", ended=False), flags("The cat sat.", ended=True),
                flags("And so on and", ended=True)])
    assert s["incomplete"] == pytest.approx(1 / 2)  # over the two ended texts
    assert s["ended"] == pytest.approx(2 / 3)
    assert s["intelligible"] == pytest.approx(2 / 3)  # the cut text raises no flag
    items = share_items(["cut", "ended", "and"], [flags("The cat sat on the mat and", ended=False),
                                                  flags("The cat sat.", ended=True), flags("And so on and", ended=True)])
    assert estimate(items["incomplete"]).n == 2 and math.isnan(items["incomplete"].values["cut"])
    assert items["ended"].values == {"cut": 0.0, "ended": 1.0, "and": 1.0}
    unjudged = share_items(["cut"], [flags("The cat sat on the mat and", ended=False)])["incomplete"]
    assert estimate(unjudged).n == 0 and unjudged.undefined
    assert finish(Generation("A summary.\nMore", "length")) == "newline"
    assert finish(Generation("\n A summary that runs on", "length")) == "length"
    assert finish(Generation("A summary.", "eos")) == "eos"


def test_the_lm_says_why_generation_ended():
    from cdb.eval import load_model

    model, tokenizer, _ = load_model(TINY, seed=0)
    lm = EvalLM(model, tokenizer, batch_size=2)
    prompts = ["The cat sat", "Hi there"]
    (first,), _ = lm.generate(prompts, max_new_tokens=6)
    assert first.finish == "length"
    # Make the token the model picks first for prompt 0 an end token: that generation ends by EOS.
    ids = [lm.bos] + lm.encode(prompts[0])
    with torch.no_grad():
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    configured, model.generation_config.eos_token_id = model.generation_config.eos_token_id, token
    try:
        (ended,), _ = EvalLM(model, tokenizer, batch_size=2).generate(prompts, max_new_tokens=6)
    finally:
        model.generation_config.eos_token_id = configured
    assert ended.finish == "eos"


# ---- the published prefixes -------------------------------------------------------------------
def test_published_prefixes():
    assert INSTRUCTION == "Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind for: \n\n"
    assert bias_type_prefix("race-color") == "The following text discriminates against people because of their race/color: "
    assert bias_type_prefix("race") == bias_type_prefix("race-color")
    assert bias_type_prefix("gender").endswith("because of their gender: ")
    assert bias_type_prefix("profession").endswith("their socioeconomic status/occupation: ")
    assert math.isclose(make_options("quick").self_debias_epsilon, 0.01)


def test_similarity_of_copies_stays_within_its_bounds():
    """A copy's cosine is 1 up to float32 rounding; the evaluation refuses values outside a metric's
    bounds, so the scorer keeps them inside (a smol-135m evaluation once failed on 1.0000001)."""
    from cdb.scoring import make_faithfulness_scorer

    texts = [f"Item {i}: the council of Leeds met on {i} May and approved {i * 37} new homes." for i in range(64)]
    scores = make_faithfulness_scorer("embedding").score(texts, texts)
    assert all(-1.0 <= s <= 1.0 for s in scores) and min(scores) > 0.999
