"""Toxicity instruments: P(toxic) of each text, in 0..1."""

from __future__ import annotations

import re
from typing import Sequence

from cdb.scoring.versions import model_version, package_version


class ProfanityCheckScorer:
    """alt-profanity-check: a linear SVM over words, offline, fast; blind to toxicity without profanity."""

    name = "profanity-check"

    def __init__(self):
        from profanity_check import predict_prob

        self._predict = predict_prob
        self.version = f"alt-profanity-check=={package_version('alt-profanity-check')}"

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
        self.version = model_version(self.model)

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
