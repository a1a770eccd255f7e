#!/usr/bin/env python3
"""Train the tiny byte-level BPE tokenizer shipped as ``cdb/assets/tiny_tokenizer/``.

Training text: every source, positive and negative of the embedded dataset
(``cdb/assets/contrastive/records.jsonl``, made by ``scripts/build_embedded_data.sh``) plus a few hundred
generic English sentences generated here (seeded), so that common words exist as tokens.

The tokenizer:
* byte-level BPE, vocabulary size 4096, special tokens ``<|bos|>`` (id 0), ``<|eos|>`` (1),
  ``<|pad|>`` (2), ``<|unk|>`` (3);
* ByteLevel pre-tokenizer (no prefix space), ByteLevel decoder, ByteLevel post-processor with
  ``trim_offsets=True``: offsets of a word preceded by a space cover the word only
  (the tokens of "Paris" in "He lives in Paris." start at offset 12, not 11);
* adds NO special tokens by itself (the model code adds BOS): ``tok("hi")["input_ids"]`` has no BOS;
* wrapped in ``transformers.PreTrainedTokenizerFast`` and saved with ``save_pretrained``; only the
  files ``AutoTokenizer.from_pretrained(dir)`` needs are kept.

Training runs single-threaded so the merges (and the saved bytes) are deterministic.

Usage: ``python scripts/make_tiny_tokenizer.py [--data PATH] [--output DIR]``
"""

from __future__ import annotations

import os

# Determinism: single-threaded training; must be set before `tokenizers` is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO_ROOT, "cdb", "assets", "contrastive", "records.jsonl")
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "cdb", "assets", "tiny_tokenizer")

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"]
BOS, EOS, PAD, UNK = SPECIAL_TOKENS
KEEP_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# --------------------------------------------------------------------------------------
# Generic English text
# --------------------------------------------------------------------------------------

SUBJECTS = [
    "The teacher", "My neighbour", "A young girl", "The old man", "Our team", "The doctor",
    "Her brother", "The children", "A farmer", "The manager", "Everyone", "My friend",
    "The driver", "His mother", "The students", "A stranger", "The scientist", "We", "They",
    "She", "He", "I", "You", "The police", "The government", "The new president", "The writer",
]
VERBS = [
    "walked to", "looked at", "talked about", "bought", "found", "wanted", "remembered",
    "cleaned", "painted", "visited", "left", "opened", "closed", "built", "sold", "needed",
    "liked", "read about", "waited for", "asked about", "thought about", "worked on", "lost",
    "carried", "changed", "explained", "forgot", "helped with", "watched", "reported on",
]
OBJECTS = [
    "the market", "a new book", "the river", "the small house", "an old car", "the garden",
    "the kitchen", "a letter", "the school", "the station", "the money", "the weather",
    "the problem", "a short film", "the city centre", "the hospital", "the museum", "the plan",
    "the bridge", "the last train", "a cup of coffee", "the evening news", "the football match",
    "the meeting", "a cheap hotel", "the history of the town", "the results", "the map",
]
ENDINGS = [
    "", " yesterday", " in the morning", " after dinner", " last week", " on Monday",
    " on Friday evening", " before the rain started", " with great care", " for the first time",
    " again", " every day", " during the holidays", " because it was late", " in the summer",
    " at night", " without a word", " as soon as possible", " two years ago", " this afternoon",
]
QUESTIONS = [
    "What time is it?", "Where are you going?", "Why did they leave so early?",
    "How much does it cost?", "Who wrote this letter?", "Can you help me, please?",
    "Is this the right way to the station?", "Do you know what happened?",
    "Would you like some tea?", "When does the shop open?", "Which one is yours?",
    "Have you ever been to Paris?", "Are they coming tomorrow?", "Could we meet next week?",
]
FIXED = [
    "He lives in Paris.", "She moved to London in 2010.", "They flew from New York to Tokyo.",
    "Berlin, Rome and Madrid are large European cities.", "The meeting is in Chicago on Tuesday.",
    "Hello, world!", "Thank you very much.", "Good morning, everyone.", "See you later.",
    "The quick brown fox jumps over the lazy dog.", "It was a bright, cold day in April.",
    "Please read the instructions carefully before you start.",
    "The price rose from 10 dollars to 12.50 dollars, an increase of 25 percent.",
    "Call 555-0100 or write to info@example.com for details.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 1,000 2024.",
    "Days: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.",
    "Months: January, February, March, April, May, June, July, August, September, October, "
    "November, December.",
    "The company said that profits were higher than expected this year.",
    "Scientists say the climate is changing faster than before.",
    "The answer is yes, but only if the weather is good.",
    "I don't think that's right; we can't be sure yet.",
    "\"Where is it?\" she asked. \"Over there,\" he said.",
]


# A broader general vocabulary, so that the 4096-token vocabulary is filled with common words.
NOUNS = """
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story
fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history
party result change morning reason research girl guy moment air teacher force education foot boy
age policy process music market sense nation plan college interest death experience effect use
class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building
action model season society tax director position player record paper space ground form event
official matter center couple site project activity star table need court oil situation cost
industry figure street image phone data picture practice piece land product doctor wall patient
worker news test movie north love support technology step baby computer type attention film
tree source organization hair window evidence population site garden island river mountain
forest ocean village bridge library kitchen bread cheese apple orange coffee tea dinner lunch
breakfast ticket train plane bicycle shoe shirt jacket bottle glass chair desk pencil letter
""".split()
ADJECTIVES = """
new good high old great big small large national young different long little important
political bad white real best right social only public sure low early able human local late
hard major better economic strong possible whole free military true federal international full
special easy clear recent certain personal open red difficult available likely short single
medical current wrong private past foreign fine common poor natural significant similar hot dead
central happy serious ready simple left physical general environmental financial blue democratic
dark various entire close legal religious cold final main green nice huge popular traditional
cultural quiet bright gentle careful honest brave calm curious famous friendly heavy narrow
""".split()
VERBS_PAST = """
asked became began called came changed considered continued created decided described
developed expected explained felt followed found gave grew happened heard helped included
increased kept knew learned left lived looked lost made meant moved needed noticed offered opened
paid passed planned played produced provided reached received remained remembered reported
returned seemed sent served showed started stayed suggested taught thought told tried turned
understood used waited walked wanted watched wrote carried collected cooked danced delivered
discovered dropped enjoyed finished fixed guessed hurried imagined invited joined jumped laughed
""".split()
ADVERBS = """
quickly slowly carefully quietly suddenly finally usually often rarely never always sometimes
already almost nearly really simply clearly certainly probably perhaps actually especially
recently directly easily exactly gently happily honestly loudly politely proudly safely softly
""".split()
PREPOSITIONS = ["in", "on", "near", "behind", "under", "beside", "across", "through", "after",
                "before", "without", "towards", "inside", "outside", "around", "between"]


def generic_sentences(n=1200, seed=0):
    rng = random.Random(seed)
    out = list(FIXED) + list(QUESTIONS)
    half = n // 3
    while len(out) < half:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}."
        out.append(s)
    while len(out) < 2 * half:
        s = (f"{rng.choice(ADVERBS).capitalize()}, {rng.choice(NOUNS)}s and {rng.choice(NOUNS)}s "
             f"were {rng.choice(ADJECTIVES)}, and {rng.choice(SUBJECTS).lower()} "
             f"{rng.choice(VERBS_PAST)} them {rng.choice(ENDINGS).strip() or 'today'}.")
        out.append(s)
    while len(out) < n:
        s = (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(ADVERBS)} "
             f"{rng.choice(VERBS_PAST)} the {rng.choice(NOUNS)} {rng.choice(PREPOSITIONS)} the "
             f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")
        out.append(s)
    return out


def dataset_texts(path):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            texts.append(rec["source"])
            texts.extend(rec["positives"])
            texts.extend(n["text"] for n in rec["negatives"])
    return texts


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------

def build_backend(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # add_prefix_space=False here too (the pre-tokenizer adds none), so that a leading space of
    # the very first token is trimmed from its offsets like any other.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        # add_bos_token / add_eos_token are deliberately NOT passed: in transformers 5 passing
        # them makes the wrapper replace the ByteLevel(trim_offsets=True) post-processor with
        # a TemplateProcessing one (untrimmed offsets). Without them nothing is added anyway.
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def check(tok):
    """Fail loudly if the saved tokenizer misses a property the project relies on."""
    for name, want in (("bos", BOS), ("eos", EOS), ("pad", PAD), ("unk", UNK)):
        assert getattr(tok, f"{name}_token") == want, name
        assert getattr(tok, f"{name}_token_id") == SPECIAL_TOKENS.index(want), name
    ids = tok("hi")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids, ids
    text = "He lives in Paris."
    enc = tok(text, return_offsets_mapping=True)
    spans = [text[a:b] for a, b in enc["offset_mapping"]]
    # ByteLevel trim_offsets: no token's span takes the space before "Paris" (offset 11).
    assert all(not (a <= 11 < b) for a, b in enc["offset_mapping"]), spans
    assert "".join(spans[-3:]).endswith("Paris."), spans
    plain = "The council of Lyon approved a 4.5 million euros plan on 12 March 2019!"
    assert tok.decode(tok(plain)["input_ids"]) == plain
    return spans


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="embedded dataset (JSONL)")
    ap.add_argument("--output", default=DEFAULT_OUTPUT, help="output directory")
    args = ap.parse_args(argv)

    texts = dataset_texts(args.data) + generic_sentences()
    backend = build_backend(texts)
    tok = wrap(backend)

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        os.makedirs(args.output, exist_ok=True)
        for name in os.listdir(args.output):
            if name not in KEEP_FILES:
                continue
            os.remove(os.path.join(args.output, name))
        for name in sorted(os.listdir(tmp)):
            if name in KEEP_FILES:
                shutil.copyfile(os.path.join(tmp, name), os.path.join(args.output, name))

    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(args.output)
    spans = check(loaded)
    print(f"trained on {len(texts)} texts; vocab size {len(loaded)}; saved to {args.output}")
    print(f"files: {sorted(os.listdir(args.output))}")
    print(f"'He lives in Paris.' -> {spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
