"""Decoding-time debiasing baselines (docs/METHOD.md, "Baselines"): no training, the
model is only prompted or decoded differently. EvalOptions.decoding picks one for a whole suite:

  none         the model as it is.
  instructive  Instructive Debiasing: an instruction (options.instruction, default INSTRUCTION: the
               published "Be positive, polite, respectful, compliant, loveable, modest, helpful,
               and kind for: " then a blank line) is put before every GENERATION prompt (toxicity
               continuations, summaries): the model sees [BOS] + instruction + prompt.
               Log-likelihood tasks (bias, TruthfulQA, knowledge) are unchanged: the instruction
               tells a writer how to write; it is not part of a sentence being scored. Samples record the text actually fed (`fed_prompt`).
  self-debias  Self-Debiasing (Schick, Udupa & Schuetze 2021, "Self-Diagnosis and Self-Debiasing"):
               at each step the next-token distribution p(w | x) is compared with the distributions
               under each debiasing prefix d_k ("The following text contains rude, disrespectful, or
               unreasonable language:\\n" + x, ...), and tokens made likelier by a prefix are decayed:
                   delta(w) = max_k p(w | d_k, x) - p(w | x)
                   p'(w)   ∝ p(w | x) * max(alpha(delta(w)), epsilon),
                   alpha(v) = 1 if v <= 0 else exp(-lambda * v)
               (lambda = options.self_debias_lambda, 50 as in the paper; epsilon =
               options.self_debias_epsilon, the reference implementation's 0.01 floor; the max over
               prefixes is the paper's min over differences). CrowS-Pairs and StereoSet score each
               item under the one prefix of its bias type, as bias-bench does ("The following text
               discriminates against people because of their gender: "; options.bias_type_prefix).
               Generation: SelfDebiasingLogitsProcessor, before temperature and top-p. Log-likelihood tasks: the same p' scores every continuation
               token (options.self_debias_loglik, default on; off: they are unchanged), which costs
               one extra forward pass per prefix, as generation does.

Cost of self-debias: one extra forward pass per prefix and step (prefill once, then one token per
step on a per-prefix KV cache), i.e. about (1 + number of prefixes) x the compute of `none`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cdb.eval.options import DECODINGS, INSTRUCTION, SELF_DEBIAS_EPSILON, SELF_DEBIAS_LAMBDA, SELF_DEBIAS_PREFIXES

try:  # a LogitsProcessor subclass when transformers is there (it always is for generation)
    from transformers import LogitsProcessor as _Base
except ImportError:  # pragma: no cover
    _Base = object


@dataclass(frozen=True)
class Decoding:
    """What EvalLM applies: the decoding's name and its settings (built from EvalOptions by `from_options`)."""

    name: str = "none"
    instruction: str = INSTRUCTION
    prefixes: tuple[str, ...] = SELF_DEBIAS_PREFIXES
    decay: float = SELF_DEBIAS_LAMBDA
    loglik: bool = True  # self-debias: reweight log-likelihood tasks too
    epsilon: float = SELF_DEBIAS_EPSILON

    def __post_init__(self):
        if self.name not in DECODINGS:
            raise ValueError(f"unknown decoding {self.name!r} (known: {', '.join(DECODINGS)})")
        if self.name == "self-debias" and not self.prefixes:
            raise ValueError("decoding self-debias needs at least one debiasing prefix")

    @classmethod
    def from_options(cls, options: Any) -> "Decoding":
        return cls(options.decoding, options.instruction, tuple(options.self_debias_prefixes),
                   float(options.self_debias_lambda), bool(options.self_debias_loglik),
                   float(options.self_debias_epsilon))

    def generation_prompt(self, prompt: str) -> str:
        """The text a generation task feeds the model for `prompt`."""
        return self.instruction + prompt if self.name == "instructive" else prompt

    @property
    def debiases_generation(self) -> bool:
        return self.name == "self-debias"

    @property
    def debiases_loglik(self) -> bool:
        return self.name == "self-debias" and self.loglik


def self_debias(logprobs: torch.Tensor, biased_logprobs: torch.Tensor | Sequence[torch.Tensor], decay: float,
                epsilon: float = SELF_DEBIAS_EPSILON) -> torch.Tensor:
    """Self-debiased log-probabilities log p'(w), renormalised over the last dimension.

    logprobs: (..., V) log p(w) (normalised); biased_logprobs: (K, ..., V) or K tensors (..., V),
    log p(w | prefix_k). delta = max_k p_k(w) - p(w); p' ∝ p * max(exp(-decay * max(delta, 0)), epsilon).
    Tokens no prefix makes likelier keep their p up to the common renormalisation.
    """
    if not isinstance(biased_logprobs, torch.Tensor):
        biased_logprobs = torch.stack(list(biased_logprobs))
    p_biased = biased_logprobs.float().exp().amax(0)
    logprobs = logprobs.float()
    delta = (p_biased - logprobs.exp()).clamp(min=0.0)
    log_alpha = -decay * delta
    if epsilon > 0:
        log_alpha = log_alpha.clamp(min=math.log(epsilon))
    out = logprobs + log_alpha  # log(p * max(alpha(delta), epsilon))
    return out - out.logsumexp(-1, keepdim=True)


def with_prefix(seq: Sequence[int], prefix: Sequence[int], bos: int | None, limit: int | None = None) -> list[int]:
    """`seq` with `prefix` inserted after its leading BOS (before everything when it has none); the
    oldest tokens after the prefix are dropped when the result would exceed `limit`."""
    head = [seq[0]] if bos is not None and len(seq) and seq[0] == bos else []
    body = list(seq[len(head):])
    if limit is not None:
        room = max(limit - len(head) - len(prefix), 1)
        body = body[-room:]
    return head + list(prefix) + body


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of left-padded rows; positions count real tokens only."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _forward_parameters(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


class SelfDebiasingLogitsProcessor(_Base):
    """Self-debiasing decoding (Schick et al. 2021) as a transformers LogitsProcessor:

        processor = SelfDebiasingLogitsProcessor(model, [tok(p)["input_ids"] for p in prefixes], decay=50,
                                                 epsilon=0.01, attention_mask=mask, bos_token_id=tok.bos_token_id)
        model.generate(input_ids=ids, attention_mask=mask, logits_processor=[processor], ...)

    Each call runs the model on every row's context (its real tokens: the prompt without padding,
    plus what was generated so far) with each prefix inserted after the BOS token, takes the
    next-token distributions there as p_k, and returns log p' (see `self_debias`), where p is the
    softmax of the incoming scores. transformers applies custom processors before temperature and
    top-p, so sampling draws from the tempered, truncated p'; greedy takes its argmax.

    The prefixed contexts are prefilled once and then extended one token per step on a KV cache per
    prefix (when the model returns one; otherwise every step recomputes them from scratch). A call
    whose input_ids do not extend the previous call's starts over. attention_mask: the prompt's mask
    (batch rows, or batch rows before num_return_sequences expansion); None when nothing is padded.
    One processor per generate call, or `reset(attention_mask)` between calls.
    """

    def __init__(self, model, prefix_ids: Sequence[Sequence[int]], decay: float = SELF_DEBIAS_LAMBDA,
                 epsilon: float = SELF_DEBIAS_EPSILON, attention_mask: torch.Tensor | None = None,
                 bos_token_id: int | None = None, pad_token_id: int = 0, use_cache: bool = True):
        if not prefix_ids or any(len(p) == 0 for p in prefix_ids):
            raise ValueError("self-debiasing needs at least one non-empty prefix")
        if decay < 0:
            raise ValueError(f"self-debiasing decay (lambda) must be >= 0, got {decay}")
        self.model = model
        self.prefix_ids = [list(p) for p in prefix_ids]
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.bos = bos_token_id
        self.pad = pad_token_id
        self.use_cache = use_cache
        accepted = _forward_parameters(model)
        self._logits_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        # transformers 5 renamed past_key_values to cache; older models and stubs take the old name
        self._cache_name = "cache" if "cache" in accepted else "past_key_values"
        self.forward_passes = 0  # model calls made (tests and timing)
        self.reset(attention_mask)

    def reset(self, attention_mask: torch.Tensor | None = None) -> None:
        self.prompt_mask = attention_mask
        self._ids: torch.Tensor | None = None
        self._caches: list[Any] | None = None
        self._masks: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []

    @property
    def cached(self) -> bool:
        """Whether the next step can extend per-prefix KV caches (else it recomputes the contexts)."""
        return self._caches is not None

    def _real(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows, length = input_ids.shape
        real = torch.ones((rows, length), dtype=torch.bool, device=input_ids.device)
        if self.prompt_mask is None:
            return real
        mask = self.prompt_mask.to(input_ids.device).bool()
        if mask.shape[0] != rows:
            if rows % mask.shape[0]:
                raise ValueError(f"attention_mask has {mask.shape[0]} rows, input_ids {rows}")
            mask = mask.repeat_interleave(rows // mask.shape[0], dim=0)  # num_return_sequences
        if mask.shape[1] > length:
            raise ValueError(f"attention_mask is longer ({mask.shape[1]}) than input_ids ({length})")
        real[:, :mask.shape[1]] = mask
        return real

    def _forward(self, ids, mask, positions, cache=None):
        self.forward_passes += 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=self.use_cache,
                         **{self._cache_name: cache}, **self._logits_kwargs)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if not self.use_cache:
            cache = None
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1), cache

    @torch.no_grad()
    def biased_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(K, rows, V): log p(next token | prefix_k + row context) for each prefix k."""
        rows = input_ids.shape[0]
        extends = (self._ids is not None and self._caches is not None and self._ids.shape[0] == rows
                   and self._ids.shape[1] + 1 == input_ids.shape[1] and torch.equal(self._ids, input_ids[:, :-1]))
        results = []
        if extends:
            new = input_ids[:, -1:]
            for k in range(len(self.prefix_ids)):
                self._masks[k] = torch.cat([self._masks[k], self._masks[k].new_ones((rows, 1))], dim=1)
                self._positions[k] = self._positions[k] + 1
                logp, self._caches[k] = self._forward(new, self._masks[k], self._positions[k][:, None], self._caches[k])
                results.append(logp)
        else:
            real = self._real(input_ids)
            contexts = [input_ids[r][real[r]].tolist() for r in range(rows)]
            caches, masks, positions = [], [], []
            for prefix in self.prefix_ids:
                ids, mask, pos = left_pad([with_prefix(c, prefix, self.bos) for c in contexts], self.pad, input_ids.device)
                logp, cache = self._forward(ids, mask, pos)
                results.append(logp)
                caches.append(cache)
                masks.append(mask)
                positions.append(pos[:, -1])
            usable = self.use_cache and all(c is not None for c in caches)
            self._caches = caches if usable else None
            self._masks, self._positions = masks, positions
        self._ids = input_ids.clone()
        return torch.stack(results)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.decay == 0:
            return scores  # alpha == 1 everywhere: p' = p
        biased = self.biased_logprobs(input_ids)
        if biased.shape[-1] != scores.shape[-1]:
            raise ValueError(f"vocabulary sizes differ: scores {scores.shape[-1]}, prefixed model {biased.shape[-1]}")
        return self_debias(torch.log_softmax(scores.float(), dim=-1), biased, self.decay, self.epsilon).to(scores.dtype)
