"""Knowledge retention: MMLU-style multiple choice by log-likelihood, zero-shot.

Data (options.knowledge): JSON/JSONL/parquet rows {question, choices: [...], answer: index or letter}
(MMLU-Pro's `options` and `answer_index` work too), a CSV with a header naming `question`, the
choices (`choices` as JSON, or columns A, B, C, ...) and `answer`, a headerless CSV in MMLU's raw
layout (question, choice..., answer letter), or a hub id such as "cais/mmlu:all" (split test).
Nothing ships offline. Spread over the file, so a limit still samples every subject.

Metrics: accuracy (the answer letter " A".." J" after the lettered choices and "Answer:", as MMLU
is usually scored) and accuracy_choice_text (each choice's own text, mean log-prob per token,
after "Answer:"; small models that cannot yet map letters to answers still show what they know).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from cdb.eval.base import EvalDataError, Resources, TaskResult, Unavailable, mean, per_item, progress, spread
from cdb.eval.options import EvalOptions
from cdb.eval.sources import data_missing, field, read_rows

LETTERS = "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def _answer(where: str, value, n: int) -> int:
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n] and len(value.strip()) == 1:
        return LETTERS.index(value.strip().upper())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) == value and 0 <= value < n:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) < n:
        return int(value)
    raise EvalDataError(f"{where}: field 'answer' must be a choice index 0..{n - 1} or a letter A..{LETTERS[n - 1]}, got {value!r}")


def _from_object(where: str, row: dict) -> MCItem:
    question = field(where, row, "question")
    key = "choices" if "choices" in row else "options" if "options" in row else None
    if key is None:
        letters = [l for l in LETTERS if l in row]
        if len(letters) < 2:
            raise EvalDataError(f"{where}: missing field 'choices' (or 'options', or columns A, B, ...)")
        choices = [row[l] for l in letters]
    else:
        choices = row[key]
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise EvalDataError(f"{where}: field '{key}' is neither a list nor a JSON list") from None
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, (str, int, float)) for c in choices):
        raise EvalDataError(f"{where}: field 'choices' must list >= 2 answers")
    choices = [str(c) for c in choices]
    if len(choices) > len(LETTERS):
        raise EvalDataError(f"{where}: {len(choices)} choices, at most {len(LETTERS)}")
    answer_key = "answer_index" if "answer_index" in row else "answer"
    if answer_key not in row:
        raise EvalDataError(f"{where}: missing field 'answer'")
    subject = str(row.get("subject") or row.get("category") or "")
    return MCItem(where, question, tuple(choices), _answer(where, row[answer_key], len(choices)), subject)


def _from_csv(rows: list[tuple[str, list[str]]]) -> list[MCItem]:
    header = [h.strip().lower() for h in rows[0][1]]
    if "question" in header:
        # Choice columns are single letters (A, B, ...); every other name is matched lower-case.
        names = [h.upper() if len(h) == 1 and h.upper() in LETTERS else h for h in header]
        return [_from_object(where, dict(zip(names, cells))) for where, cells in rows[1:]]
    items = []
    for where, cells in rows:  # MMLU raw: question, choice..., answer letter
        if len(cells) < 4:
            raise EvalDataError(f"{where}: expected question, >= 2 choices and an answer letter, got {len(cells)} columns")
        items.append(MCItem(where, cells[0], tuple(cells[1:-1]), _answer(where, cells[-1], len(cells) - 2)))
    return items


def load_knowledge(spec: str, limit: int = 0) -> list[MCItem]:
    rows = read_rows(spec, hub_config="all", hub_split="test")
    if not rows:
        raise EvalDataError(f"{spec}: no questions")
    items = _from_csv(rows) if isinstance(rows[0][1], list) else [_from_object(w, r) for w, r in rows]
    return spread(items, limit)


def letter_prompt(item: MCItem) -> str:
    lines = [item.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    return "\n".join(lines) + "\nAnswer:"


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


NOT_GIVEN = "no data given (--knowledge PATH_OR_HUB_ID); MMLU does not ship offline"


class KnowledgeTask:
    name = "knowledge"

    def missing(self, options: EvalOptions) -> list[str]:
        problem = data_missing(options.knowledge, "all") if options.knowledge else NOT_GIVEN
        return [problem] if problem else []

    def run(self, lm, options: EvalOptions, resources: Resources) -> TaskResult:
        if not options.knowledge:
            raise Unavailable(NOT_GIVEN)
        items = load_knowledge(options.knowledge, options.knowledge_limit)
        requests = []
        for item in items:
            requests += [(letter_prompt(item), f" {LETTERS[i]}") for i in range(len(item.choices))]
            requests += [(f"{item.question.strip()}\nAnswer:", f" {c}") for c in item.choices]
        bar = progress(options, len(requests), "knowledge")
        scored = lm.loglikelihood(requests, on_batch=bar.update)
        bar.close()
        samples, at = [], 0
        for item in items:
            n = len(item.choices)
            letters = [r.logprob for r in scored[at:at + n]]
            texts = [r.mean for r in scored[at + n:at + 2 * n]]
            at += 2 * n
            samples.append({"task": self.name, "id": item.id, "subject": item.subject, "answer": item.answer,
                            "letter_pick": argmax(letters), "text_pick": argmax(texts),
                            "correct": float(argmax(letters) == item.answer), "correct_text": float(argmax(texts) == item.answer)})
        metrics = {"accuracy": mean([s["correct"] for s in samples]),
                   "accuracy_choice_text": mean([s["correct_text"] for s in samples])}
        ids = [s["id"] for s in samples]
        items = {"accuracy": per_item(self.name, ids, [s["correct"] for s in samples], "share"),
                 "accuracy_choice_text": per_item(self.name, ids, [s["correct_text"] for s in samples], "share")}
        return TaskResult(metrics, samples, items)
