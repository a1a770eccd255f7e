"""The scorers shared by data construction (the labelling rule) and evaluation: toxicity and
faithfulness of a text against its source.

    ToxicityScorer.score(texts) -> [P(toxic) in 0..1]
    FaithfulnessScorer.score(sources, candidates) -> [faithfulness, higher = more faithful; NaN = nothing to judge]
    toxicity_scorer(spec) / faithfulness_scorer(spec): one scorer per spec and device per process
    score_groups(tox, faith, groups): (toxicity, faithfulness) of candidate texts against their source

Each has a `name` and a `version`, recorded beside every score so that numbers from different
scorers are never compared unknowingly; a toxicity scorer also has a `measure`, the word its numbers
go by ("toxicity" for a learned classifier, "profanity" for a profanity filter). Specs (make_*_scorer):
  toxicity:      "profanity-check" (alt-profanity-check's linear model over words: a profanity
                 filter; the data build's default, the labeller of the embedded dataset)
                 "tox-block" (tox-block's Jigsaw-trained bidirectional LSTM, its weights read from
                 the installed package into torch: evaluation's offline default)
                 "hf:MODEL_ID_OR_DIR" (a text-classification model; P of its toxic label; the GPU
                 scales evaluate with hf:s-nlp/roberta_toxicity_classifier, the authors' scorer)
  faithfulness:  "entity" (offline default: entity-level factual consistency, precision-source:
                 the share of the candidate's entities of every type, numbers and dates included,
                 that the source supports; NaN when it names none; cdb.scoring.entities, which also
                 computes Nan et al. 2021's variant, recall and F1)
                 "embedding" (cosine of all-MiniLM-L6-v2 sentence embeddings: the similarity the
                 embedded dataset was labelled with; it rewards copying, so evaluation reports it
                 as "similarity (MiniLM)", never as faithfulness)
                 "embedding:MODEL_ID_OR_DIR" (another sentence-transformers model)
                 "nli:MODEL_ID_OR_DIR" (SummaC-ZS: see NLIFaithfulness)
                 "nli-paper:MODEL_ID_OR_DIR" (the authors' protocol: see NLIPaperFaithfulness)
Sentences are split by cdb.sentences.split_sentences.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence

# torch and the model libraries load on first use: data construction imports this module.


class ToxicityScorer(Protocol):
    name: str
    version: str
    measure: str

    def score(self, texts: Sequence[str]) -> list[float]: ...


class FaithfulnessScorer(Protocol):
    name: str
    version: str
    bounds: tuple[float, float]  # the range of its scores (what an interval over a few of them relies on)

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]: ...


# ---- specs -> scorers (torch and the model libraries load on first use) ----------------------
def make_toxicity_scorer(spec: str = "profanity-check", device: str = "cpu") -> ToxicityScorer:
    if spec in ("", "profanity-check"):
        from cdb.scoring.toxicity import ProfanityCheckScorer

        return ProfanityCheckScorer()
    if spec == "tox-block":
        from cdb.scoring.toxicity import ToxBlockScorer

        return ToxBlockScorer(device=device)
    kind, _, name = spec.partition(":")
    if kind == "hf" and name:
        from cdb.scoring.toxicity import HFToxicityScorer

        return HFToxicityScorer(name, device=device)
    raise ValueError(f"toxicity scorer {spec!r}: expected 'tox-block', 'profanity-check' or "
                     "'hf:MODEL_ID_OR_DIR'")


def make_faithfulness_scorer(spec: str = "entity", device: str = "cpu") -> FaithfulnessScorer:
    kind, _, name = spec.partition(":")
    if kind in ("", "entity") and not name:
        from cdb.scoring.entities import EntityConsistency

        return EntityConsistency()
    if kind == "embedding":
        from cdb.scoring.faithfulness import EmbeddingFaithfulness

        return EmbeddingFaithfulness(name, device=device)
    if kind == "nli" and name:
        from cdb.scoring.faithfulness import NLIFaithfulness

        return NLIFaithfulness(name, device=device)
    if kind == "nli-paper" and name:
        from cdb.scoring.faithfulness import NLIPaperFaithfulness

        return NLIPaperFaithfulness(name, device=device)
    raise ValueError(f"faithfulness scorer {spec!r}: expected 'entity', 'embedding', 'embedding:MODEL', "
                     "'nli:MODEL_ID_OR_DIR' or 'nli-paper:MODEL_ID_OR_DIR'")


# ---- built once per process, and scoring candidates against their sources ----------------------
_LOCK = threading.Lock()
_BUILT: dict[tuple[str, str, str], object] = {}


def _built_once(kind: str, make, spec: str, device: str):
    """One scorer per (kind, spec, device) per process: models load once, also across threads."""
    with _LOCK:
        key = (kind, spec, device)
        if key not in _BUILT:
            _BUILT[key] = make(spec, device=device)
        return _BUILT[key]


def toxicity_scorer(spec: str = "profanity-check", device: str = "cpu") -> ToxicityScorer:
    return _built_once("toxicity", make_toxicity_scorer, spec, device)


def faithfulness_scorer(spec: str = "entity", device: str = "cpu") -> FaithfulnessScorer:
    return _built_once("faithfulness", make_faithfulness_scorer, spec, device)


def describe(scorer) -> dict:
    return {"name": scorer.name, "version": scorer.version}


def score_groups(tox, faith, groups: Sequence[tuple[str, Sequence[str]]]) -> list[list[tuple[float, float]]]:
    """For each (source, candidate texts) group: (toxicity, faithfulness to the source) per text,
    rounded to 6 decimals (scores are data: rounding keeps files stable across BLAS builds)."""
    texts = [t for _, cands in groups for t in cands]
    sources = [s for s, cands in groups for _ in cands]
    if not texts:
        return [[] for _ in groups]
    toxicity = tox.score(texts)
    if callable(getattr(faith, "embed", None)) and getattr(faith, "name", "").startswith("embedding"):
        # Cosine of embeddings: embed each distinct source once, not once per candidate.
        import torch

        unique = list(dict.fromkeys(sources))
        src = faith.embed(unique)
        index = torch.tensor([unique.index(s) for s in sources])
        cosine = (src[index] * faith.embed(texts)).sum(-1).tolist()
        faithfulness = [c if t.strip() else 0.0 for c, t in zip(cosine, texts)]
    else:
        faithfulness = faith.score(sources, texts)
    out, k = [], 0
    for _, cands in groups:
        out.append([(round(float(toxicity[k + j]), 6), round(float(faithfulness[k + j]), 6)) for j in range(len(cands))])
        k += len(cands)
    return out
