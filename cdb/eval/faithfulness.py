"""Faithfulness (and toxicity) of greedy summaries of held-out sources.

Sources: a JSON/JSONL file with a `source` field (options.summary_data), else N BOLD Wikipedia pages
that the embedded dataset was not built from (the pages after the build's `--limit`, grouped the same
way), so a model tuned on the embedded dataset is scored on text it has not seen.
Prompt: options.summary_prompt ("{source}\\nTL;DR:"); the summary is the first non-empty line.
Samples record `prompt` and `fed_prompt` (what the model was given: instruction + prompt under
decoding instructive), and `finish`: "newline" or "eos" when the model ended the summary, "length"
when it was cut at summary_max_new_tokens.
Metrics:
  faithfulness        options.faithfulness_scorer: entity-level factual consistency by default (the
                      share of the summary's entities, numbers and dates the source supports), or
                      SummaC-ZS with `nli:MODEL`; the mean over summaries it can judge (a summary
                      naming no entity has nothing to check)
  similarity_minilm   "similarity (MiniLM)": cosine of all-MiniLM-L6-v2 embeddings of source and
                      summary, the rule the embedded dataset was labelled with; it rewards copying
  summary_toxicity    mean toxicity of the summaries
Each metric per source in `items` (faithfulness undefined for a summary naming no entity).
Tags: labeller_metrics (the metrics scored by a scorer the training data was labelled with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cdb.data.records import DataError
from cdb.eval import training_data
from cdb.eval.base import EvalDataError, Resources, TaskResult, mean, per_item, progress
from cdb.eval.options import EvalOptions
from cdb.eval.sources import field, read_local


@dataclass(frozen=True)
class Source:
    id: str
    text: str
    reference: str = ""


def held_out_bold_sources(limit: int) -> list[Source]:
    """`limit` BOLD pages (all when 0) after those the embedded dataset was built from."""
    from cdb.data.bold import bold_corpus

    trained = training_data.trained_pages()
    try:
        items = bold_corpus().items[training_data.card()["input"]["limit"]:]
    except DataError as exc:
        raise EvalDataError(f"no summary data given and the held-out BOLD pages are unavailable ({exc}); "
                            "pass --summary-data FILE") from exc
    items = [item for item in items if item.id not in trained][:limit or None]
    return [Source(item.id, item.source, item.reference) for item in items]


def load_sources(spec: str = "", limit: int = 0) -> list[Source]:
    """The LAST `limit` sources of `spec` (the end of a file is the usual held-out slice); with no
    `spec`, held-out BOLD pages."""
    if not spec:
        return held_out_bold_sources(limit)
    rows = read_local(spec)
    if limit > 0:
        rows = rows[-limit:]
    sources = []
    for where, row in rows:
        text = field(where, row, "source")
        reference = row.get("reference") or row.get("summary") or (row.get("positives") or [""])[0]
        sources.append(Source(str(row.get("id", where)), text, str(reference or "")))
    return sources


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def finish(generation) -> str:
    """Why the summary (the first non-empty line) ended: "newline" when the model went on to another
    line, else the generation's own reason ("eos" or "length")."""
    return "newline" if "\n" in generation.text.lstrip() else generation.finish


class FaithfulnessTask:
    name = "faithfulness"

    def run(self, lm, options: EvalOptions, resources: Resources) -> TaskResult:
        if "{source}" not in options.summary_prompt:
            raise EvalDataError(f"summary_prompt {options.summary_prompt!r} has no '{{source}}' placeholder")
        sources = load_sources(options.summary_data, options.summary_limit)
        prompts = [options.summary_prompt.replace("{source}", s.text) for s in sources]
        bar = progress(options, len(prompts), "faithfulness")
        outputs = [g[0] for g in lm.generate(prompts, options.summary_max_new_tokens, samples=1, do_sample=False,
                                              seed=options.seed, on_batch=bar.update)]
        bar.close()
        summaries = [first_line(o.text) for o in outputs]
        texts = [s.text for s in sources]
        faithful = resources.faithfulness.score(texts, summaries)
        similar = resources.similarity.score(texts, summaries)
        toxic = resources.toxicity.score(summaries)
        samples = [
            {"task": self.name, "id": s.id, "prompt": p, "fed_prompt": lm.generation_prompt(p), "raw_output": o.text,
             "output": m, "finish": finish(o), "reference": s.reference,
             "faithfulness": None if math.isnan(f) else f, "similarity_minilm": sim, "toxicity": t}
            for s, p, o, m, f, sim, t in zip(sources, prompts, outputs, summaries, faithful, similar, toxic)
        ]
        metrics = {
            "faithfulness": mean([f for f in faithful if not math.isnan(f)]),
            "similarity_minilm": mean(similar),
            "summary_toxicity": mean(toxic),
        }
        ids = [s.id for s in sources]
        items = {"faithfulness": per_item(self.name, ids, [None if math.isnan(f) else f for f in faithful],
                                          undefined="no summary names an entity", bounds=resources.faithfulness.bounds),
                 "similarity_minilm": per_item(self.name, ids, similar, bounds=resources.similarity.bounds),
                 "summary_toxicity": per_item(self.name, ids, toxic)}
        scorers = {"faithfulness": ("faithfulness", resources.faithfulness),
                   "similarity_minilm": ("faithfulness", resources.similarity),
                   "summary_toxicity": ("toxicity", resources.toxicity)}
        labelled = [m for m, (kind, scorer) in scorers.items() if training_data.labelled_with(kind, scorer)]
        tags = {"labeller_metrics": ",".join(labelled)} if labelled else {}
        return TaskResult(metrics, samples, items, tags)
