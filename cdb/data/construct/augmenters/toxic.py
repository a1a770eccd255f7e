"""The `toxic` augmenter: a toxic rewrite of the reference by an LM, with a rule-based rewrite
(generic insults and profanity, never about a group) as fallback or alone (`model=rules`)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from cdb.data.construct import lm
from cdb.data.construct.augmenters.base import Augmenter, Candidate, NegativeOptions
from cdb.data.text import clean_spaces, ensure_period, entities, word_jaccard, words
from cdb.sentences import split_sentences

# race, religion and political groups: for a reference that names one, only insults aimed at the reader
# or the writer are used, so that no toxic negative disparages a group.
READER_OPENERS = ("Listen up, you morons:", "Shut up and read this, you idiots:", "Hey dumbass, pay attention:",
                  "Wake up, you brainless idiots:")
READER_CLOSERS = ("Shut up already, you morons.", "Whoever wrote this is a pathetic loser.", "Read it again, dumbass.",
                  "Get a life, you pathetic jerks.", "Go to hell, you stupid trolls.")
CONTENT_OPENERS = ("What a load of crap:", "Who the hell cares?", "Ugh, more stupid garbage:", "Oh great, more bullshit:")
CONTENT_CLOSERS = ("What a bunch of idiots.", "Total garbage, seriously.", "Damn, this sucks.",
                   "Only an idiot would care about this crap.")
TOXIC_INSULTS = ("that pathetic idiot", "the stupid clown", "that worthless moron", "the dumbass", "that brainless jerk")

# Words naming identity groups (religion, ethnicity, nationality, gender, sexuality, disability, politics).
_IDENTITY = re.compile(r"\b(?:jew\w*|juda\w*|muslim\w*|islam\w*|christian\w*|catholic\w*|protestant\w*|hindu\w*|"
                       r"sikh\w*|buddhis\w*|atheis\w*|religio\w*|church\w*|god|gods|arab\w*|black\w*|white\w*|"
                       r"asian\w*|african\w*|europe\w*|american\w*|latin[oax]\w*|hispanic\w*|mexican\w*|chinese|"
                       r"indian\w*|native\w*|immigrant\w*|ethnic\w*|race|races|racial\w*|tribe\w*|women|woman|"
                       r"girls?|female\w*|men|man|boys?|male\w*|gay\w*|lesbian\w*|trans\w*|queer\w*|disab\w*|"
                       r"retard\w*|nazi\w*|fascis\w*|communis\w*|socialis\w*|marxis\w*|anarch\w*|liberal\w*|"
                       r"conservativ\w*|leftis\w*|right-wing|left-wing|far-left|far-right)\b", re.I)
# Capitalised group names the list above misses ("Tibetans", "Mongols", "Koreans", "Danish").
_DEMONYM = re.compile(r"\b[A-Z][a-z]+(?:ans?|ians?|ese|ish|ics?|ites?|ists?|ols?|ks|ts)\b")


def names_a_group(text: str) -> bool:
    return bool(_IDENTITY.search(text) or _DEMONYM.search(text))


def rule_toxic(reference: str, rng: random.Random, guard: float = 0.75) -> str:
    """Insults and profanity inserted around the reference: an opener, an insulting apposition after
    the first person-like name (never after a group's name), a closer; more closers until the word
    Jaccard with the reference is <= guard. A reference that names a group gets only insults aimed at
    the reader or the writer."""
    group = names_a_group(reference)
    openers = READER_OPENERS if group else READER_OPENERS + CONTENT_OPENERS
    closers = READER_CLOSERS if group else READER_CLOSERS + CONTENT_CLOSERS
    body = reference
    ents = [e for e in entities(reference) if e.type == "person" and not names_a_group(e.text)]
    if ents:
        e = ents[0]
        body = reference[:e.end] + f", {rng.choice(TOXIC_INSULTS)}," + reference[e.end:]
    closer = rng.choice(closers)
    text = clean_spaces(" ".join([rng.choice(openers), body, closer]))
    extra = [c for c in closers if c != closer]
    rng.shuffle(extra)
    while word_jaccard(text, reference) > guard and extra:
        text = clean_spaces(text + " " + extra.pop())
    return text


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
    """Also emit the rule-based rewrite, after the LM's."""
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
    rewrite as fallback (emitted after it; labelling keeps the first that the toxicity scorer gives
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
                cands.append(Candidate(rule_toxic(it.reference, rng, min(self.guard, 0.75)), f"{self.name}:rules"))
            out.append(cands)
        return out

