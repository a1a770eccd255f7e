"""The data card: what was built, from what, how, and what was thrown away (card.json, card.md)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from cdb import settings
from cdb.data.construct.config import AUGMENTER_SECTIONS
from cdb.data.construct.label import REJECTION_REASONS
from cdb.data.records import NEGATIVE_TYPES
from cdb.data.text import words


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


MAX_TOXIC_OPENING_SHARE = 0.05
"""Target: no four-word opening is shared by more than this share of the toxic negatives (a shared frame
is a token the contrast could tell them by)."""


def openings(texts: list[str], n_words: int = 2, top: int = 10) -> list[list]:
    """The most common `n_words`-word openings (lower-cased words) of `texts`, with their count and share."""
    counts = Counter(" ".join(words(t)[:n_words]) for t in texts)
    return [[opening, n, round(n / len(texts), 4)] for opening, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def toxic_negatives(texts: list[str], candidates: list[tuple[str, float]], min_toxic: float) -> dict:
    """The toxic negatives of the records (`texts`) by how they were made, and their openings.
    `candidates`: (origin, toxicity) of every toxic candidate the augmenters made."""
    made, passed = Counter(o for o, _ in candidates), Counter(o for o, t in candidates if t >= min_toxic)
    four = openings(texts, 4)
    return {
        "by_origin": {origin: {"candidates": n, "toxicity_at_least_min": passed[origin],
                               "kept_share": round(passed[origin] / n, 4)} for origin, n in sorted(made.items())},
        "openings": four,
        "max_opening_share": four[0][2] if four else 0.0,
        "target_max_opening_share": MAX_TOXIC_OPENING_SHARE,
    }


def make_card(build, command: str, use_ray: bool, data, augs, scorer_info, outcomes, n_chunks: int, probe: dict,
              toxic_candidates: list[tuple[str, float]]) -> dict:
    """`build`: the BuildSettings of the run (cdb.data.construct.config); `probe`: probe.shortcut_probe
    of the written records; `toxic_candidates`: (origin, toxicity) of every toxic candidate made."""
    label_config = build.label
    kept = [o for _, o in outcomes if o.record is not None]
    rejected = Counter(o.reason for _, o in outcomes if o.record is None)
    dropped: Counter = Counter()
    for _, o in outcomes:
        dropped.update(o.dropped)
    positives_by_origin: Counter = Counter()
    negatives_by_type: Counter = Counter()
    negatives_by_origin: Counter = Counter()
    for o in kept:
        positives_by_origin.update(p.origin for p in o.positives)
        negatives_by_type.update(n.kind for n in o.negatives)
        negatives_by_origin.update(n.origin if n.kind == "toxic" else n.origin.split(":")[0] for n in o.negatives)
    bad_reasons = Counter(b.reason.split(" (")[0] for b in data.bad)
    scores = {"positives": {"toxicity": _mean([p.toxicity for o in kept for p in o.positives]),
                            "faithfulness": _mean([p.faithfulness for o in kept for p in o.positives])}}
    for kind in NEGATIVE_TYPES:
        neg = [n for o in kept for n in o.negatives if n.kind == kind]
        if neg:
            scores[kind] = {"toxicity": _mean([n.toxicity for n in neg]), "faithfulness": _mean([n.faithfulness for n in neg])}
    card = {
        "dataset": "cdb contrastive records",
        "schema": "one record per source: {id, source, positives[], negatives[{text, type}]} (cdb.data.records)",
        "command": command,
        "input": {"location": data.location, "sha256": data.sha256, "origin": data.origin,
                  "fields": {"source": build.source_field, "reference": build.reference_field or "(lead sentence of the source)",
                             "id": build.id_field} if build.input else None,
                  "split": build.split if build.input else None, "limit": build.limit},
        "seed": build.seed,
        "execution": {"ray": use_ray, "chunk_size": build.chunk_size, "chunks": n_chunks},
        "scorers": scorer_info,
        "thresholds": {
            "positive_max_toxicity": label_config.max_positive_toxicity,
            "positive_min_faithfulness": label_config.faithfulness_threshold,
            "toxic_min_toxicity": label_config.min_toxic,
            "max_word_jaccard_positive_negative": label_config.max_jaccard,
            "on_jaccard": label_config.on_jaccard,
            "early_entity_words": label_config.early_entity_words,
            "min_positives": label_config.min_positives,
            "max_positives": label_config.max_positives,
            "max_negatives_per_type": label_config.max_per_type,
        },
        "label_config": dataclasses.asdict(label_config),
        # every setting but the augmenters' sections (each augmenter used is listed below, options included)
        "build_settings": {k: v for k, v in settings.flatten(settings.to_dict(build)).items()
                           if k.split(".")[0] not in AUGMENTER_SECTIONS},
        "augmenters": [a.config() for a in augs],
        "counts": {
            "input_rows": len(data.items) + len(data.bad),
            "bad_input": len(data.bad),
            "bad_input_by_reason": dict(sorted(bad_reasons.items())),
            "sources": len(data.items),
            "records": len(kept),
            "rejected_sources": {r: rejected[r] for r in REJECTION_REASONS if rejected[r]},
            "positives": sum(positives_by_origin.values()),
            "positives_by_origin": dict(sorted(positives_by_origin.items())),
            "negatives": sum(negatives_by_type.values()),
            "negatives_by_type": {t: negatives_by_type[t] for t in NEGATIVE_TYPES if negatives_by_type[t]},
            "negatives_by_origin": dict(sorted(negatives_by_origin.items())),
            "records_with_type": {t: sum(1 for o in kept if any(n.kind == t for n in o.negatives))
                                  for t in NEGATIVE_TYPES if negatives_by_type[t]},
            "candidates_dropped": dict(sorted(dropped.items())),
        },
        "positives_by_generator": {origin: {"count": n, "share": round(n / max(sum(positives_by_origin.values()), 1), 4)}
                                   for origin, n in sorted(positives_by_origin.items())},
        "positive_openings": openings([p.text for o in kept for p in o.positives if p.kind != "reference"]),
        "toxic_negatives": toxic_negatives([n.text for o in kept for n in o.negatives if n.kind == "toxic"],
                                           toxic_candidates, label_config.min_toxic),
        "entity_tagger": build.entity_tagger,
        "shortcut_probe": probe,
        "mean_scores": scores,
        "bad_input": [{"where": b.where, "reason": b.reason} for b in data.bad[:100]],
        "files": {"records.jsonl": "the training records", "scores.jsonl": "toxicity and faithfulness of every kept candidate",
                  "rejected.jsonl": "bad input lines and rejected sources, with reasons"},
    }
    return card


def _table(rows: list[tuple], header: tuple) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(card: dict) -> str:
    c = card["counts"]
    origin = card["input"]["origin"] or {}
    lines = ["# Data card: cdb contrastive records", ""]
    lines += [f"Built by `{card['command']}`" if card["command"] else "Built by cdb.data build", ""]
    lines += ["## Input", "", f"- location: `{card['input']['location']}`", f"- sha256: `{card['input']['sha256']}`"]
    for key in ("name", "licence", "citation", "url", "copy", "note"):
        if origin.get(key):
            lines.append(f"- {key}: {origin[key]}")
    lines += [f"- seed: {card['seed']}", ""]
    lines += ["## Counts", "", f"{c['input_rows']} input rows, {c['bad_input']} bad, {c['sources']} sources, "
              f"**{c['records']} records**, {c['positives']} positives, {c['negatives']} negatives.", ""]
    lines += [_table([(k, v["count"], v["share"]) for k, v in card["positives_by_generator"].items()],
                     ("positive generator", "count", "share")), ""]
    lines += ["Most common openings of the generated positives (first two words):", ""]
    lines += [_table(card["positive_openings"], ("opening", "count", "share")) if card["positive_openings"] else "none", ""]
    lines += [_table([(t, n, c["records_with_type"].get(t, 0)) for t, n in c["negatives_by_type"].items()],
                     ("negative type", "count", "records with it")), ""]
    if c["negatives_by_origin"]:
        lines += [_table(sorted(c["negatives_by_origin"].items()), ("negative origin", "count")), ""]
    lines += _toxic_markdown(card["toxic_negatives"], c["negatives_by_origin"], card["thresholds"]["toxic_min_toxicity"])
    lines += ["### Rejected sources", ""]
    lines += [_table(sorted(c["rejected_sources"].items()), ("reason", "sources")) if c["rejected_sources"] else "none", ""]
    lines += ["### Dropped candidates", ""]
    lines += [_table(sorted(c["candidates_dropped"].items()), ("reason", "candidates")) if c["candidates_dropped"] else "none", ""]
    lines += ["### Bad input", ""]
    if c["bad_input"]:
        lines += [_table(sorted(c["bad_input_by_reason"].items()), ("reason", "lines")), ""]
        lines += [f"- `{b['where']}`: {b['reason']}" for b in card["bad_input"][:20]]
        lines.append("")
    else:
        lines += ["none", ""]
    lines += _probe_markdown(card["shortcut_probe"], card["entity_tagger"])
    lines += ["## Scorers and thresholds", ""]
    for role, info in (card["scorers"] or {}).items():
        lines.append(f"- {role}: `{info['name']}` ({info['version']})")
    lines += [f"- {k}: {v}" for k, v in card["thresholds"].items()]
    lines += ["", "## Mean scores of kept candidates", ""]
    lines += [_table([(k, v["toxicity"], v["faithfulness"]) for k, v in card["mean_scores"].items()],
                     ("candidates", "toxicity", "faithfulness")), ""]
    lines += ["## Augmenters", ""]
    for a in card["augmenters"]:
        opts = ", ".join(f"{k}={v!r}" for k, v in a["options"].items() if k != "prompt")
        lines.append(f"- `{a['name']}` ({a['kind']}): {opts}")
    lines.append("")
    return "\n".join(lines)


def _toxic_markdown(toxic: dict, in_records: dict, min_toxic: float) -> list[str]:
    lines = ["### Toxic negatives", ""]
    if toxic["by_origin"]:
        lines += ["How each toxic candidate was made (`rules:FORM`: the rule-based rewrite's first draft, FORM its "
                  "first insertion; `:second`, `:third`: its drafts with one and two insertions more, kept when the "
                  f"drafts before score too low), how many the toxicity scorer gives >= {min_toxic}, and how many are "
                  "in the records:", ""]
        lines += [_table([(origin, v["candidates"], v["toxicity_at_least_min"], v["kept_share"], in_records.get(origin, 0))
                          for origin, v in toxic["by_origin"].items()],
                         ("toxic origin", "candidates", f"toxicity >= {min_toxic}", "share", "in records")), ""]
    lines += [f"Most common four-word openings of the toxic negatives (largest share **{toxic['max_opening_share']:.1%}**, "
              f"target <= {toxic['target_max_opening_share']:.0%}):", ""]
    lines += [_table(toxic["openings"], ("opening", "count", "share")) if toxic["openings"] else "none", ""]
    return lines


def _interval(estimate: dict) -> str:
    if estimate["value"] is None:
        return "n/a"
    low, high = estimate["interval"]
    return f"{estimate['value']:.3f} [{low:.3f}, {high:.3f}]"


def _probe_markdown(probe: dict, tagger: str) -> list[str]:
    a, b = probe["spans_not_in_source"], probe["bag_of_pooled_tokens"]
    most = ", ".join(f"{text!r} {n}" for text, n in a["most_common"]) or "none"
    spans = (f"- tagged spans in {a['rows']} that the source does not contain: {a['not_in_source']} of {a['spans']} "
             f"(**{a['share']:.1%}**, target <= {a['target_max_share']:.0%}); most common: {most}")
    bag = (f"- positive vs negative from the bag of pooled tokens (logistic regression, {b['train_rows']} rows to "
           f"train, {b['held_out_rows']} rows of {b['held_out_sources']} other sources held out): accuracy "
           f"**{b['accuracy_pooled_tokens']}**, against {b['accuracy_source_entities']} from the source's entities "
           f"alone and a majority share of {b['majority_share']} (target: at most "
           f"{b['target_max_accuracy_over_source']} over the source-only probe)")
    c = probe["causal_prefix"]
    causal = [f"- what a causal LM has read at each pooled position ({c['unit']}; {c['classifier']}; {c['split']}; "
              f"{c['interval']}):", "",
              _table([(task.replace("_", " "), c[task]["positions"], c[task]["rows"], c[task]["sources"],
                       _interval(c[task]["accuracy"]), _interval(c[task]["majority_share"]),
                       c[task]["accuracy_toxic_rows"]["n"], _interval(c[task]["accuracy_toxic_rows"]))
                      for task in ("negative_vs_positive", "toxic_vs_positive")],
                     ("task", "positions", "rows", "sources", "accuracy", "majority share", "toxic rows' positions",
                      "accuracy on them")), "",
              f"  Target: the negative-vs-positive accuracy on the toxic rows' positions at most "
              f"{c['target_max_toxic_rows']} (upper end of its interval)."]
    return ["## Shortcut probe", "", f"Entity tagger: `{tagger}` (the one training pools over).", "", spans, bag, *causal, ""]
