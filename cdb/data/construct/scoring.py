"""The toxicity and faithfulness scorers of the labelling rule, built once per process.

They come from `cdb.eval.scorers` (make_toxicity_scorer / make_faithfulness_scorer): offline defaults
alt-profanity-check and the cosine of all-MiniLM-L6-v2 embeddings; `hf:MODEL` and `nli:MODEL` for
model-based ones. Each has `name` and `version`, recorded in the data card.
"""

from __future__ import annotations

import threading
from typing import Sequence

_LOCK = threading.Lock()
_BUILT: dict[tuple[str, str, str], object] = {}


def _built_once(kind: str, make, spec: str, device: str):
    """One scorer per (kind, spec, device) per process: models load once, also across threads."""
    with _LOCK:
        key = (kind, spec, device)
        if key not in _BUILT:
            _BUILT[key] = make(spec, device=device)
        return _BUILT[key]


def toxicity_scorer(spec: str = "profanity-check", device: str = "cpu"):
    from cdb.eval.scorers import make_toxicity_scorer

    return _built_once("toxicity", make_toxicity_scorer, spec, device)


def faithfulness_scorer(spec: str = "embedding", device: str = "cpu"):
    from cdb.eval.scorers import make_faithfulness_scorer

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
