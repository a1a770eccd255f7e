"""Faithfulness (and toxicity) of greedy summaries of held-out sources.

Sources: a JSON/JSONL file with a `source` field (options.summary_data), else N BOLD Wikipedia pages
that the embedded dataset was not built from (the pages after the build's `--limit`, grouped the same
way), so a model tuned on the embedded dataset is scored on text it has not seen.
Prompt: options.summary_prompt ("{source}\\nTL;DR:"); the summary is the first non-empty line.
Samples record `prompt` and `fed_prompt` (what the model was given: instruction + prompt under
decoding instructive).
Metrics: faithfulness (the faithfulness scorer: embedding cosine offline, SummaC-style NLI with
`nli:MODEL`), entity_precision (share of the summary's entities found in the source, over
summaries with entities), summary_toxicity (mean toxicity of the summaries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdb.data.entities import regex_spans
from cdb.data.records import DataError, embedded_dataset_path
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

    card = json.loads((embedded_dataset_path().parent / "card.json").read_text(encoding="utf-8"))
    with embedded_dataset_path().open(encoding="utf-8") as f:
        trained = {json.loads(line)["id"] for line in f}
    try:
        items = bold_corpus().items[card["input"]["limit"]:]
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


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def entity_precision(summary: str, source: str) -> float | None:
    """Share of the summary's entities (regex tagger: names, numbers, dates) that occur in the
    source, case- and spacing-insensitively; None when the summary names no entity."""
    entities = [summary[s:e] for s, e in regex_spans(summary)]
    if not entities:
        return None
    haystack = _norm(source)
    return sum(_norm(e) in haystack for e in entities) / len(entities)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


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
        summaries = [first_line(o) for o in outputs]
        faithful = resources.faithfulness.score([s.text for s in sources], summaries)
        toxic = resources.toxicity.score(summaries)
        precision = [entity_precision(m, s.text) for m, s in zip(summaries, sources)]
        samples = [
            {"task": self.name, "id": s.id, "prompt": p, "fed_prompt": lm.generation_prompt(p), "raw_output": o,
             "output": m, "reference": s.reference,
             "faithfulness": f, "entity_precision": e, "toxicity": t}
            for s, p, o, m, f, e, t in zip(sources, prompts, outputs, summaries, faithful, precision, toxic)
        ]
        metrics = {
            "faithfulness": mean(faithful),
            "entity_precision": mean([e for e in precision if e is not None]),
            "summary_toxicity": mean(toxic),
        }
        ids = [s.id for s in sources]
        items = {"faithfulness": per_item(self.name, ids, faithful),
                 "entity_precision": per_item(self.name, ids, precision, undefined="no summary names an entity"),
                 "summary_toxicity": per_item(self.name, ids, toxic)}
        return TaskResult(metrics, samples, items)

