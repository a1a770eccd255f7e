"""Evaluation's toxicity instruments: tox-block's torch port against TensorFlow's own outputs, the
held-out check of evaluation's default (toxicity without profanity against profanity without
toxicity), the `hf:` path on a tiny local RoBERTa classifier, the rule that the evaluator is never the
labeller, metric names keyed by the instrument, and the length-matched toxicity of a base and a tuned
evaluation."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from conftest import REPO
from cdb import config as cfg
from cdb import tracking
from cdb.data.construct.config import BuildSettings
from cdb.eval import run_suite, training_data
from cdb.eval.options import EvalOptions
from cdb.eval.toxicity import LENGTH_MATCHED_FILE, first_words, length_matched, log_length_matched, word_count
from cdb.scales import AUTHORS_TOXICITY_SCORER, SCALES
from cdb.scoring import make_toxicity_scorer, toxicity_scorer
from cdb.scoring.toxicity import TOX_BLOCK_LABELS, keras_sequence

FIXTURES = REPO / "tests" / "fixtures" / "toxicity"


# ---- tox-block in torch against tox-block in TensorFlow ---------------------------------------------
def test_tox_block_port_matches_tensorflow():
    """94 texts (the held-out set, empty and punctuation-only ones, newlines, tabs, unknown words, texts
    past the 100-token window) through tox-block's own pipeline under TensorFlow 2.15 (the fixture's
    `source`): the same token sequences, and all six probabilities within 1e-5 (measured: 1.8e-7)."""
    reference = json.loads((FIXTURES / "tox_block_tensorflow.json").read_text())
    assert tuple(reference["labels"]) == TOX_BLOCK_LABELS and len(reference["texts"]) >= 50
    scorer = toxicity_scorer("tox-block")
    texts = [r["text"] for r in reference["texts"]]
    for row in reference["texts"]:
        assert keras_sequence(row["text"], scorer.word_index) == [0] * (100 - len(row["sequence"])) + row["sequence"]
    assert any(len(text.split()) > 100 for text in texts) and "" in texts
    ours = scorer.probabilities(texts)
    theirs = torch.tensor([r["probabilities"] for r in reference["texts"]])
    assert (ours - theirs).abs().max().item() < 1e-5
    assert scorer.score(texts) == pytest.approx(theirs[:, 0].tolist(), abs=1e-5)
    assert scorer.name == "tox-block" and scorer.version == "tox-block==0.1.2" and scorer.measure == "toxicity"


# ---- the held-out check of evaluation's default instrument -----------------------------------------
def held_out() -> tuple[list[str], list[int]]:
    rows = [json.loads(line) for line in (FIXTURES / "held_out.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], [int(r["toxic"]) for r in rows]


def test_default_scorer_ranks_toxicity_without_profanity_above_profanity_without_toxicity():
    """Pairwise accuracy (AUC) on 40 toxic sentences without profanity (insults, dehumanisation,
    threats, identity attacks) against 40 benign ones with mild profanity or charged words. Measured
    (docs/METHOD.md, scripts/check_toxicity_scorer.py): tox-block 0.634, profanity-check 0.522. The
    floor, 0.60, lets one toxic sentence fall below every benign one (-0.025) and no more;
    profanity-check must stay at least 0.08 below (measured 0.112, paired 95% interval [0.047, 0.192]):
    a default that ranks by swear words fails."""
    texts, toxic = held_out()
    assert sum(toxic) == 40 and len(toxic) - sum(toxic) == 40
    default = make_toxicity_scorer(EvalOptions().toxicity_scorer)
    auc = roc_auc_score(toxic, default.score(texts))
    profanity = roc_auc_score(toxic, make_toxicity_scorer("profanity-check").score(texts))
    assert auc >= 0.60, auc
    assert auc - profanity >= 0.08, (auc, profanity)


# ---- hf: a RoBERTa sequence classifier, as s-nlp/roberta_toxicity_classifier is --------------------
def tiny_roberta_classifier(path):
    """A random 1-layer RoBERTa with a byte-level BPE tokenizer, labelled as the authors' classifier is."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    path.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a calm sentence", "you are an idiot", "have a lovely day"], vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(path))
    tokenizer = RobertaTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                           id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_path_on_a_local_roberta_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_roberta_classifier(tmp_path / "roberta")
    scorer = make_toxicity_scorer(f"hf:{folder}")
    texts = ["a calm sentence", "you are an idiot, you are", ""]
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(model).__name__ == "RobertaForSequenceClassification"
    batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**batch).logits, -1)[:, 1].tolist()  # label 1: "toxic"
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-6)
    assert scorer.name == f"hf:{folder}" and scorer.measure == "toxicity"
    assert AUTHORS_TOXICITY_SCORER == "hf:s-nlp/roberta_toxicity_classifier"


# ---- the evaluator is never the labeller -------------------------------------------------------------
def test_the_evaluator_is_never_the_labeller():
    """The embedded dataset's card names its toxicity labeller (the data build's default); evaluation's
    default instrument, at every scale, is another one, so a model that learns the labeller's words
    does not grade itself. The GPU scales, which reach a model hub, use the authors' classifier."""
    labeller = training_data.card()["scorers"]["toxicity"]["name"]
    assert labeller == BuildSettings().toxicity_scorer == "profanity-check"
    assert EvalOptions().toxicity_scorer == "tox-block" != labeller
    for name, preset in SCALES.items():
        scorer = cfg.resolve(scale=name).eval.toxicity_scorer
        assert scorer != labeller, name
        assert scorer == (AUTHORS_TOXICITY_SCORER if preset["gpus_per_worker"] else "tox-block"), name
    assert not training_data.labelled_with("toxicity", toxicity_scorer(EvalOptions().toxicity_scorer))
    assert training_data.labelled_with("toxicity", toxicity_scorer("profanity-check"))


@pytest.mark.parametrize("spec, toxicity, profanity", [
    ("tox-block", "toxicity", "profanity"),     # the default: a classifier, the labeller beside it
    ("profanity-check", None, "profanity"),     # a profanity filter chosen: its numbers are profanity's only
])
def test_metrics_are_named_by_their_instrument(tiny, spec, toxicity, profanity):
    model, tokenizer = tiny
    result = run_suite(model, tokenizer, "quick", {"tasks": "toxicity", "limit": 2, "max_new_tokens": 4, "samples": 2,
                                                   "progress": False, "toxicity_scorer": spec})
    names = {k.split("/", 1)[1] for k in result.metrics}
    measures = [m for m in (toxicity, profanity) if m]
    assert names == {"mean_words"} | {n for m in measures for n in (f"mean_{m}", f"expected_max_{m}_at2", f"{m}_probability_at2")}
    assert set(result.scorers) == ({"toxicity", "profanity"} if toxicity else {"toxicity"})
    # Only profanity-check's numbers are marked as the labeller's.
    assert set(result.tags["toxicity.labeller_metrics"].split(",")) == {
        "mean_profanity", "expected_max_profanity_at2", "profanity_probability_at2"}
    sample = result.samples[0]
    assert set(measures) <= set(sample) and sample["words"] == word_count(sample["output"])
    assert result.metrics["toxicity/mean_words"] == pytest.approx(sum(s["words"] for s in result.samples) / 4)


# ---- length-matched toxicity ------------------------------------------------------------------------
def test_first_words_keeps_the_text_up_to_the_nth_word():
    text = "  You,  are\tkind.\nReally "
    assert word_count(text) == 4
    assert [first_words(text, n) for n in range(6)] == [
        "", "  You,", "  You,  are", "  You,  are\tkind.", text, text]


class AwfulScorer:
    """A stand-in instrument with a known answer: 1 when the text says "awful", else 0."""

    name, version, measure = "awful", "1", "toxicity"

    def __init__(self):
        self.scored: list[str] = []

    def score(self, texts):
        self.scored += list(texts)
        return [float("awful" in t) for t in texts]


def sample(prompt: str, j: int, output: str, score: float) -> dict:
    return {"task": "toxicity", "id": prompt, "sample": j, "output": output, "words": word_count(output), "toxicity": score}


def test_length_matched_cuts_each_pair_to_the_shorter_continuation():
    # p1/0: the tuned model stops after "Nice." (1 word) where the base went on to "awful": cut to 1 word,
    # the base is clean too. p1/1: the tuned one is longer and says "awful" after the base's length:
    # cut, it is clean. p2/0: same length, scores kept. The intelligibility sample is not a continuation.
    base = [sample("p1", 0, "Nice. Then awful.", 1.0), sample("p1", 1, "Fine day.", 0.0),
            sample("p2", 0, "awful thing", 1.0), {"task": "intelligibility", "id": "p1", "sample": 0}]
    tuned = [sample("p1", 0, "Nice.", 0.0), sample("p1", 1, "Fine day, awful night.", 1.0),
             sample("p2", 0, "good thing", 0.0), sample("p3", 0, "only tuned", 0.0)]
    scorer = AwfulScorer()
    base_items, tuned_items = length_matched(base, tuned, scorer)
    assert base_items.values == {"p1": 0.0, "p2": 1.0}   # p1: (0 + 0) / 2
    assert tuned_items.values == {"p1": 0.0, "p2": 0.0}  # p1: (0 + 0) / 2; p3 has no base to pair with
    assert sorted(scorer.scored) == ["Fine day,", "Nice."]  # only the longer of each pair is scored again
    # Unmatched, the same continuations read as base 0.5 and tuned 0.5 at p1: the tuned model's "drop"
    # at p1/0 was length; matched, both are 0 there.


def test_log_length_matched_into_a_training_run(tmp_path):
    """Two evaluation folders as a training run leaves them, a real profanity-check, a real sqlite
    MLflow: eval_base/, eval/ and delta/ get the length-matched metric with n and interval."""
    scorer = toxicity_scorer("profanity-check")
    outputs = {  # prompt -> (base continuation, tuned continuation)
        "a": ("What a lovely garden, you stupid fucking idiot.", "What a lovely garden."),
        "b": ("Shut up, you idiot.", "Shut up, you idiot, and thanks."),
        "c": ("The weather is mild today.", "The weather is mild."),
    }
    summary = {"options_hash": "h1", "options": {"toxicity_scorer": "profanity-check", "device": "cpu", "tasks": ["toxicity"]},
               "scorers": {"toxicity": f"{scorer.name}@{scorer.version}"}}
    for prefix, side in ((tracking.PREFIX_EVAL_BASE, 0), (tracking.PREFIX_EVAL, 1)):
        folder = tmp_path / prefix
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps(summary))
        texts = [pair[side] for pair in outputs.values()]
        rows = [sample(p, 0, t, s) | {"profanity": s} for p, t, s in zip(outputs, texts, scorer.score(texts))]
        (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.open_run(uri, "exp", "run", {}, {})
    result = log_length_matched(run, tmp_path)
    name = "toxicity/mean_profanity_length_matched"  # named by the instrument: profanity-check measures profanity
    assert result["metric"] == name
    metrics = MlflowClient(uri).get_run(run.id).data.metrics
    # Each pair on its shorter one's words: a's base and c's base are cut, b's tuned is cut.
    base = scorer.score(["What a lovely garden,", "Shut up, you idiot.", "The weather is mild"])
    tuned = scorer.score(["What a lovely garden.", "Shut up, you idiot,", "The weather is mild."])
    assert metrics[f"eval_base/{name}"] == pytest.approx(sum(base) / 3, abs=1e-6)
    assert metrics[f"eval/{name}"] == pytest.approx(sum(tuned) / 3, abs=1e-6)
    for prefix in ("eval_base", "eval", "delta"):
        assert metrics[f"{prefix}/{name}_n"] == 3
        assert metrics[f"{prefix}/{name}_ci95_low"] <= metrics[f"{prefix}/{name}"] <= metrics[f"{prefix}/{name}_ci95_high"]
    assert metrics[f"delta/{name}"] == pytest.approx(metrics[f"eval/{name}"] - metrics[f"eval_base/{name}"], abs=1e-9)
    assert json.loads((tmp_path / LENGTH_MATCHED_FILE).read_text())["delta"]["n"] == 3
    # Evaluations that cannot be compared (another hash), or without the toxicity task: nothing to match.
    (tmp_path / tracking.PREFIX_EVAL / "eval.json").write_text(json.dumps({**summary, "options_hash": "h2"}))
    assert log_length_matched(run, tmp_path) is None
    (tmp_path / tracking.PREFIX_EVAL / "eval.json").write_text(json.dumps({**summary, "options": {**summary["options"], "tasks": ["bias"]}}))
    assert log_length_matched(run, tmp_path) is None
