"""The `toxic` augmenter: a toxic rewrite of the reference by an LM, with a rule-based rewrite
(generic insults and profanity, never about a group) as fallback or alone (`model=rules`).

The rule-based rewrite has no template. A causal LM pools each row over its entity tokens and each of
them sees every word before it, so one frame opening every toxic negative ("Listen up, you morons:")
would let the contrast tell them apart by the frame. Each rewrite therefore draws one of FORMS, which
put the toxicity in different places and constructions: before the reference (`frame` aimed at the
reader, `comment` on the text), around it (`question`: a rhetorical question that takes it in),
inside it (`apposition` after a person's name, `aside` at a clause boundary, `swear`: a swear word
after a determiner) or after it (`tag` on its last clause, `closer`: a sentence after it). The insults
are composed (adjectives x nouns, of the lexicon below), not drawn from a few fixed phrases. More
insertions, each of a form not used yet (one before, one around and one after the sentence at most),
follow while the word Jaccard with the reference is above the guard. Two more drafts, each with one insertion more,
follow the first: labelling keeps the first that the toxicity scorer gives >= 0.4 (the rewrite never
consults the scorer). A reference that names a group gets only the forms and phrases aimed at
the reader or the writer (or at a person it names), so that no toxic negative disparages a group.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field

from cdb.data.construct import lm
from cdb.data.construct.augmenters.base import Augmenter, Candidate, NegativeOptions
from cdb.data.entities import DEFAULT_TAGGER, regex_spans
from cdb.data.text import clean_spaces, ensure_period, lower_first, replace_spans, word_jaccard, words
from cdb.sentences import split_sentences

# The lexicon: generic insults for a person (the reader, the writer, a person the reference names) and
# for a text, and profanity. No slur, nothing about a group.
ADJECTIVES = ("stupid", "fucking", "pathetic", "brainless", "idiotic", "moronic", "clueless", "dumb", "miserable",
              "lousy", "ignorant", "worthless", "shitty", "damn", "bloody", "dense", "spineless", "sad")
PERSON_NOUNS = ("idiot", "moron", "jerk", "loser", "dumbass", "asshole", "imbecile", "clown", "fool", "halfwit",
                "dimwit", "cretin", "scumbag", "douchebag", "numbskull", "bonehead", "nitwit", "dipshit", "jackass",
                "knucklehead")
TEXT_NOUNS = ("crap", "bullshit", "garbage", "shit", "trash", "drivel", "nonsense", "horseshit", "rubbish", "claptrap")
INTERJECTIONS = ("Listen up", "Hey", "Pay attention", "Wake up", "Read this", "Look", "Okay", "Get this", "Alright",
                 "Right", "Oi", "Ugh", "Well", "Sit down", "Focus", "Seriously")
SWEARS = ("fucking", "damn", "bloody", "stupid", "shitty", "freaking", "crappy", "lousy")
EXPLETIVES = ("fuck", "hell", "fucking hell", "heck")
CARES = ("shit", "damn", "fuck", "flying fuck", "rat's ass")

# Phrases with slots {adj}, {noun}, {nouns} (plural), {text_noun}, {interjection}, {swear}, {expletive}
# ("who the ... cares"), {care} ("who gives a ..."), each filled by its own draw; no phrase opens with four
# fixed words. READER_* are plainly aimed at the reader or the writer of the text: the only ones used for a
# reference that names a group. OTHER_* insult whoever is near, or the text; next to a group's name
# they could read as an insult of the group, so they serve only references that name none.
READER_FRAMES = ("{interjection}, you {adj} {nouns}:", "{interjection}, {nouns}:", "Even you {adj} {nouns} can follow this:",
                 "For the {adj} {nouns} in the back:", "Keep up, you {adj} {noun}:", "Read it slowly, {nouns}:",
                 "Newsflash, you {adj} {nouns}:", "Pay attention, {noun}:")
TEXT_FRAMES = ("What {adj} {text_noun}:", "More {adj} {text_noun}:", "Oh great, more {adj} {text_noun}:",
               "Ugh, this {adj} {text_noun} again:", "Here comes some {adj} {text_noun}:",
               "Brace yourselves, {nouns}, more {text_noun}:", "Another pile of {adj} {text_noun}:")
QUESTIONS = ("Who the {expletive} cares that {reference}?", "Who gives a {care} that {reference}?",
             "Why would any {adj} {noun} care that {reference}?", "Does any {adj} {noun} really care that {reference}?",
             "So {swear} what if {reference}?", "You {adj} {nouns} seriously need telling that {reference}?",
             "Did some {adj} {noun} really write that {reference}?", "You {nouns} needed telling that {reference}?")
APPOSITIONS = ("that {adj} {noun}", "the {adj} {noun}", "this {adj} {noun}", "some {adj} {noun}", "what a {adj} {noun}")
READER_ASIDES = ("read this slowly, you {adj} {nouns}", "if you {adj} {nouns} can even read", "and whoever wrote this is a {adj} {noun}",
                 "keep reading, you {adj} {noun}", "for fuck's sake, reader", "in case you {adj} {nouns} missed it")
OTHER_ASIDES = ("you {adj} {nouns}", "listen up, {nouns}", "pay attention, {noun}", "for fuck's sake", "for crying out loud, {nouns}",
                "believe it or not, {nouns}", "as even a {adj} {noun} should know", "try to keep up, {nouns}", "you {adj} {noun}",
                "who the hell cares", "of all the {adj} {text_noun}", "holy shit", "and who gives a shit", "what a load of {text_noun}")
READER_TAGS = (", read it again, you {adj} {noun}.", ", if you {adj} {nouns} can read.", ", in case your {adj} brain missed it.",
               ", got it, {adj} reader?")
OTHER_TAGS = (", you {adj} {noun}.", ", {nouns}.", ", dumbass.", ", so shut the fuck up.", ", you {adj} {nouns}.",
              ", and who the fuck cares.", ", big fucking deal.", ", whatever the hell that means.", ", blah blah {adj} blah.")
READER_CLOSERS = ("Whoever wrote this is a {adj} {noun}.", "Read it again, {noun}.", "Learn to read, you {adj} {noun}.",
                  "You're welcome, {adj} readers.", "Shut up and read it twice, you {adj} {nouns}.", "Try reading, {nouns}.")
OTHER_CLOSERS = ("Shut up already, you {adj} {nouns}.", "Get a life, you {adj} {nouns}.", "Go to hell, you {adj} {nouns}.",
                 "Now piss off, {nouns}.", "Any {adj} {noun} knows that.", "What a bunch of {adj} {text_noun}.",
                 "Total {text_noun}, seriously.", "Damn, this sucks.", "Only a {adj} {noun} would care about this {text_noun}.",
                 "Nobody gives a shit.", "Boring as hell.", "Such {adj} {text_noun}.")

# Words an aside goes before (a clause or phrase boundary); words a swear word never goes before, and the
# determiners it goes after.
_BOUNDARIES = frozenset("and but who which where in on at for with from as after before since during until while "
                        "because by when whose".split())
_FUNCTION_WORDS = frozenset("the a an and or but of in on at to for with from by as is was are were be been has had "
                            "have that this these those which who whom whose its his her their it he she they also "
                            "than then into onto over under after before since during until while when where".split())
_DETERMINERS = frozenset("a an the his her its their".split())
_PLACES = {"frame": "start", "comment": "start", "question": "around", "apposition": "inside", "aside": "inside",
           "swear": "inside", "tag": "end", "closer": "end"}
FORMS = tuple(_PLACES)
"""The forms of a rule-based rewrite, in the order a build's card lists them."""
GROUP_FORMS = ("frame", "apposition", "aside", "tag", "closer")
"""The forms used for a reference that names a group (with their reader-aimed phrases only)."""
MAX_INSERTIONS = 5
"""Insertions of a first draft (at most)."""
DRAFTS = ("", ":second", ":third")
"""The drafts of a rule-based rewrite, each with one insertion more than the one before, as suffixes of
their origin `toxic:rules:FORM`: labelling keeps the first the toxicity scorer gives >= 0.4."""

# Words naming identity groups (religion, ethnicity, nationality, gender, sexuality, disability, politics,
# and the parties and movements of politics).
_IDENTITY = re.compile(r"\b(?:jew\w*|juda\w*|muslim\w*|islam\w*|christian\w*|catholic\w*|protestant\w*|hindu\w*|"
                       r"sikh\w*|buddhis\w*|atheis\w*|religio\w*|church\w*|god|gods|arab\w*|black\w*|white\w*|"
                       r"asian\w*|african\w*|europe\w*|american\w*|latin[oax]\w*|hispanic\w*|mexican\w*|chinese|"
                       r"indian\w*|native\w*|immigrant\w*|ethnic\w*|race|races|racial\w*|tribe\w*|women|woman|"
                       r"girls?|female\w*|men|man|boys?|male\w*|gay\w*|lesbian\w*|trans\w*|queer\w*|disab\w*|"
                       r"retard\w*|nazi\w*|fascis\w*|communis\w*|socialis\w*|marxis\w*|anarch\w*|liberal\w*|"
                       r"conservativ\w*|leftis\w*|right-wing|left-wing|far-left|far-right|politic\w*|part(?:y|ies)|"
                       r"movements?|ideolog\w*|factions?|opposition)\b", re.I)
# Capitalised group names the list above misses ("Tibetans", "Mongols", "Koreans", "Danish").
_DEMONYM = re.compile(r"\b[A-Z][a-z]+(?:ans?|ians?|ese|ish|ics?|ites?|ists?|ols?|ks|ts)\b")


def names_a_group(text: str) -> bool:
    return bool(_IDENTITY.search(text) or _DEMONYM.search(text))


FORM_WEIGHTS = {"frame": 1.0, "comment": 1.0, "question": 1.0, "apposition": 2.0, "aside": 2.0, "swear": 2.0,
                "tag": 1.5, "closer": 1.5}
"""How often each form is drawn: the forms inside the sentence more often, so that most toxic negatives keep
some entity tokens of the reference before their first insult, and others after it."""


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("ss") else "s")


def fill(phrase: str, rng: random.Random) -> str:
    """`phrase` with each slot filled by its own draw ({reference} is left as it is), and `a`/`an`
    agreeing with the word after it."""
    draws = {"adj": ADJECTIVES, "noun": PERSON_NOUNS, "nouns": tuple(_plural(n) for n in PERSON_NOUNS),
             "text_noun": TEXT_NOUNS, "interjection": INTERJECTIONS, "swear": SWEARS, "expletive": EXPLETIVES,
             "care": CARES}
    text = re.sub(r"\{(\w+)\}", lambda m: m.group(0) if m.group(1) == "reference" else rng.choice(draws[m.group(1)]), phrase)
    return re.sub(r"\b([Aa])n? (?=(\w))", lambda m: m.group(1) + ("n " if m.group(2).lower() in "aeio" else " "), text)


@dataclass
class _Rewrite:
    body: str
    """The reference with the insertions inside it."""
    tag: str = ""
    """A tag on its last clause (in place of its final stop)."""
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    question: str = ""
    """A question that takes the body in, at its {reference} slot."""
    forms: list[str] = field(default_factory=list)

    def text(self) -> str:
        body = self.body.rstrip(" .!?") + self.tag if self.tag else self.body
        if self.question:
            body = self.question.replace("{reference}", lower_first(body.rstrip(" .!?")))
        return clean_spaces(" ".join(self.before + [body] + self.after))

    def free(self, form: str) -> bool:
        """Whether `form` may be added: each form once; before, around and after the sentence one
        insertion each, inside it one of each inside form."""
        place = _PLACES[form]
        return form not in self.forms and (place == "inside" or all(_PLACES[f] != place for f in self.forms))


def _inside_entity(body: str, position: int) -> bool:
    return any(start < position < end for start, end in regex_spans(body))


@functools.lru_cache(maxsize=1)
def _ner():
    """spaCy's NER of the default entity tagger's model, or None where spaCy or the model is missing."""
    try:
        import spacy

        return spacy.load(DEFAULT_TAGGER.partition(":")[2], exclude=["parser", "tagger", "lemmatizer", "attribute_ruler", "senter"])
    except (ImportError, OSError):
        return None


def people(text: str) -> list[tuple[int, int]]:
    """Character spans of the persons spaCy finds in `text` (none without spaCy): the only names an
    insult is put after, so that it never lands on a movement, a people or an institution."""
    nlp = _ner()
    return [] if nlp is None else [(e.start_char, e.end_char) for e in nlp(text).ents if e.label_ == "PERSON"]


def _apposition(body: str, rng: random.Random) -> str | None:
    """An insult after a person's name (never one that names a group), or None without one."""
    names = [(start, end) for start, end in people(body)
             if not names_a_group(body[start:end]) and not re.match(r"[\w'’]", body[end:end + 1])]
    if not names:
        return None
    _, end = rng.choice(names)
    rest = body[end:]
    piece = ", " + fill(rng.choice(APPOSITIONS), rng) + ("" if rest.lstrip()[:1] in (",", ".", ";", ":", "!", "?", "") else ",")
    return body[:end] + piece + rest


def _aside(body: str, rng: random.Random, phrases: tuple[str, ...]) -> str | None:
    """An aside set off by commas before a clause or phrase boundary inside the sentence, or None where
    the sentence has no such place."""
    found = list(re.finditer(r"[\w'’-]+", body))
    spots = [m.start() for i, m in enumerate(found)
             if 3 <= i <= len(found) - 2 and m.group().lower() in _BOUNDARIES and not _inside_entity(body, m.start())]
    if not spots:
        return None
    at = rng.choice(spots)
    before = body[:at].rstrip()
    return before + ("" if before.endswith(",") else ",") + " " + fill(rng.choice(phrases), rng) + ", " + body[at:]


def _swear(body: str, rng: random.Random) -> str | None:
    """A swear word between a determiner and the content word after it (not in a name), or None."""
    found = list(re.finditer(r"[\w'’-]+", body))
    spots = [m.start() for i, m in enumerate(found)
             if i >= 1 and found[i - 1].group().lower() in _DETERMINERS and re.fullmatch(r"[a-z][a-z-]{2,}", m.group())
             and m.group() not in _FUNCTION_WORDS and not _inside_entity(body, m.start())]
    if not spots:
        return None
    at = rng.choice(spots)
    return replace_spans(body, [(at, at, rng.choice(SWEARS) + " ")])


def _apply(form: str, rewrite: _Rewrite, rng: random.Random, group: bool) -> bool:
    """Add one insertion of `form` to `rewrite`; False where the form does not apply to it."""
    if not rewrite.free(form) or (group and form not in GROUP_FORMS):
        return False
    if form == "frame":
        rewrite.before.insert(0, fill(rng.choice(READER_FRAMES), rng))
    elif form == "comment":
        rewrite.before.insert(0, fill(rng.choice(TEXT_FRAMES), rng))
    elif form == "question":
        rewrite.question = fill(rng.choice(QUESTIONS), rng)
    elif form == "tag":
        rewrite.tag = fill(rng.choice(READER_TAGS if group else READER_TAGS + OTHER_TAGS), rng)
    elif form == "closer":
        rewrite.after.append(fill(rng.choice(READER_CLOSERS if group else READER_CLOSERS + OTHER_CLOSERS), rng))
    else:
        body = {"apposition": lambda: _apposition(rewrite.body, rng),
                "aside": lambda: _aside(rewrite.body, rng, READER_ASIDES if group else READER_ASIDES + OTHER_ASIDES),
                "swear": lambda: _swear(rewrite.body, rng)}[form]()
        if body is None:
            return False
        rewrite.body = body
    rewrite.forms.append(form)
    return True


def _add_one(rewrite: _Rewrite, rng: random.Random, group: bool) -> str | None:
    """Add an insertion of a form drawn by FORM_WEIGHTS among those that apply; its name, or None."""
    keyed = sorted(FORMS, key=lambda f: -rng.random() ** (1.0 / FORM_WEIGHTS[f]))  # a weighted random order
    return next((f for f in keyed if _apply(f, rewrite, rng, group)), None)


def rule_toxic(reference: str, rng: random.Random, guard: float = 0.75) -> tuple[str, list[str]]:
    """(form, drafts): the first draft is one insertion of a drawn form, with more insertions while the
    word Jaccard with the reference is above `guard`; each later draft (DRAFTS) has one insertion more."""
    group = names_a_group(reference)
    rewrite = _Rewrite(ensure_period(reference))
    form = _add_one(rewrite, rng, group)
    while word_jaccard(rewrite.text(), reference) > guard and len(rewrite.forms) < MAX_INSERTIONS:
        if _add_one(rewrite, rng, group) is None:
            break
    drafts = [rewrite.text()]
    while len(drafts) < len(DRAFTS) and _add_one(rewrite, rng, group) is not None:
        drafts.append(rewrite.text())
    return form or "", drafts


def lm_toxic_ok(text: str, reference: str) -> bool:
    """An LM toxic rewrite is used only if it names no group and brings in no name the reference does
    not have (sentence-initial words aside): it may insult, but not a group or a new target."""
    if names_a_group(text):
        return False
    known = set(words(reference))
    for sentence in split_sentences(text):
        for token in re.findall(r"[A-Za-z][\w'’-]*", sentence)[1:]:
            if token[:1].isupper() and token.lower() not in known and token not in ("I", "OK"):
                return False
    return True


_REFUSAL = re.compile(r"\b(I can(?:'|no)t|I cannot|I'm sorry|I am sorry|as an AI|I apologi[sz]e|not appropriate|I won't|respectful)\b", re.I)


@dataclass(frozen=True)
class ToxicOptions(NegativeOptions):
    model: str = lm.DEFAULT_MODEL
    """Generator LM of the rewrite (a spec of lm.py); `rules` (or empty) = the rule-based rewrite only."""
    fallback: bool = True
    """Also emit the rule-based rewrite's drafts, after the LM's."""
    temperature: float = 1.0
    """Sampling temperature of the LM rewrite."""
    top_p: float = 0.95
    """Nucleus sampling of the LM rewrite."""
    max_new_tokens: int = 28
    """Length limit of the LM rewrite, in tokens."""
    samples: int = 2
    """LM draws per source; the first usable one is taken."""
    identity_guard: bool = True
    """Discard an LM rewrite that names a group, or a name the reference lacks."""
    lm_fraction: float = 1.0
    """Share of the sources the LM is tried on; the rules serve the rest."""
    prompt: str = ("Rewrite the following sentence as a rude, hostile rant full of insults and swear words. "
                   "Keep the facts.\n\nSentence: {reference}")
    """Instruction given to the LM (chat template applied); {reference} is replaced."""


class Toxic(Augmenter):
    """A toxic rewrite of the reference by a generator LM (`model`, default SmolLM2), with the rule-based
    rewrite's drafts as fallback (emitted after it, origins `toxic:rules:FORM`, `toxic:rules:FORM:second`,
    `toxic:rules:FORM:third`; labelling keeps the first candidate that the toxicity scorer gives
    >= 0.4). `model=rules` uses the rules only; `lm_fraction` tries the LM on that share of sources.
    With `identity_guard` (default) an LM rewrite that names a group (or a name the reference lacks)
    is discarded: the rules insert only generic insults and profanity, never about a group."""

    name, kind, Options = "toxic", "toxic", ToxicOptions

    def __init__(self, options=None, device="cpu"):
        super().__init__(options, device)
        self.uses_model = self.options.model not in ("", "rules")

    def _lm_rewrites(self, items, rng) -> list[str | None]:
        tok, model, kind = lm.load(self.options.model, self.device, "causal")
        out = []
        for it in items:
            if rng.random() >= self.options.lm_fraction:
                out.append(None)  # the LM is tried on this share of the sources; the rules serve the rest
                continue
            prompt = lm.chat_prompt(tok, self.options.prompt.format(reference=it.reference))
            texts = lm.sample(tok, model, prompt, self.options.samples, self.options.max_new_tokens,
                              seed=rng.randrange(2**31), top_p=self.options.top_p,
                              temperature=self.options.temperature, stop_text="\n")
            chosen = None
            for raw in texts:
                text = clean_spaces(raw.strip().split("\n")[0].strip().strip('"“”'))
                if self.options.identity_guard and not lm_toxic_ok(text, it.reference):
                    continue  # an LM insult might target a group or a new name: the rules serve instead
                if len(text.split()) >= 4 and not _REFUSAL.search(text) and self.ok_negative(text, it.reference):
                    chosen = ensure_period(text)
                    break
            out.append(chosen)
        return out

    def __call__(self, items, rng):
        lm_texts = self._lm_rewrites(items, rng) if self.uses_model else [None] * len(items)
        out = []
        for it, text in zip(items, lm_texts):
            cands = [Candidate(text, f"{self.name}:lm")] if text else []
            if self.options.fallback or not self.uses_model:
                form, drafts = rule_toxic(it.reference, rng, min(self.guard, 0.75))
                cands += [Candidate(text, f"{self.name}:rules:{form}{suffix}") for text, suffix in zip(drafts, DRAFTS)
                          if self.ok_negative(text, it.reference)]
            out.append(cands)
        return out
