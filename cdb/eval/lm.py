"""EvalLM: batched log-likelihoods and generations of a causal LM, fp32, left-padded.

Every sequence starts with the token the trainer puts first ([BOS], or EOS when the tokenizer has
no BOS; cdb.data.batch.special_ids), so an empty context is well defined and a tuned model is read
in the format it was trained on.

A decoding-time debiasing (cdb.eval.decoding.Decoding) is applied here, so every task gets
it: `instructive` prefixes generation prompts (`generation_prompt` says what is fed), `self-debias`
decodes through SelfDebiasingLogitsProcessor and reweights log-likelihoods the same way.

Each generation says why it ended (`Generation.finish`): "eos" when the model emitted an end token,
"length" when it was cut at max_new_tokens; only the former may be judged for completeness.

A sampled generation depends on its prompt, its sample index and the seed only (ItemSampler): not
on the prompts beside it in a batch, the batch size, or how many workers split the prompts
(cdb.eval.remote); and sample j of prompt p draws the same random numbers under every model, so a
base and a tuned model's samples pair up.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import LogitsProcessor, TopPLogitsWarper

from cdb.data.batch import special_ids
from cdb.eval.decoding import Decoding, SelfDebiasingLogitsProcessor, self_debias, with_prefix


@dataclass(frozen=True)
class Generation:
    text: str     # the continuation, special tokens dropped
    finish: str   # "eos": the model ended it; "length": cut at max_new_tokens


@dataclass(frozen=True)
class LogLik:
    logprob: float  # sum of log p(continuation token | everything before it)
    tokens: int     # continuation tokens scored
    greedy: bool    # every continuation token was the argmax

    @property
    def mean(self) -> float:
        return self.logprob / max(self.tokens, 1)


def item_seed(seed: int, prompt: str, sample: int) -> int:
    """The random stream of sample `sample` of `prompt` under `seed` (63 bits of a SHA-256)."""
    digest = hashlib.sha256(f"{seed}\x1f{sample}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class ItemSampler(LogitsProcessor):
    """Sampling as a transformers LogitsProcessor for greedy decoding: temperature, then top-p (the
    nucleus transformers' TopPLogitsWarper keeps), then each row's log p minus the log of its own Exp(1) noise, whose
    argmax is a draw from p (the Gumbel-max trick). Each row's noise comes from a generator seeded
    by its item (`seeds`, one per row, item_seed), so what a row samples does not depend on the
    rows beside it."""

    CANDIDATES = 1024
    """The most probable tokens the nucleus is looked for in first: sorting a whole vocabulary at every
    step cost a fifth of a sampled generation on CPU; a row whose nucleus reaches past them is sorted
    whole, as transformers' warper does."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.top_p_warper = TopPLogitsWarper(top_p)
        self.seeds = list(seeds)
        self.generators: list[torch.Generator] = []

    def nucleus(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` with every token outside its row's top-p nucleus at -inf: what TopPLogitsWarper
        gives (a token stays while the tokens more probable than it hold less than top_p)."""
        if self.top_p >= 1.0:
            return scores
        probs = torch.softmax(scores, dim=-1)
        top, index = probs.topk(min(self.CANDIDATES, scores.shape[-1]), dim=-1)
        before = top.cumsum(-1) - top
        kept = before < self.top_p
        kept[:, 0] = True
        out = torch.full_like(scores, float("-inf")).scatter(1, index, torch.where(kept, 0.0, float("-inf")))
        wider = top.sum(-1) < self.top_p  # the nucleus reaches past the candidates
        if wider.any():
            out[wider] = self.top_p_warper(input_ids[wider], scores[wider]) - scores[wider]
        return scores + out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.generators:  # where the logits are (a model spread over GPUs ends on its last one)
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = self.nucleus(input_ids, scores.float() / self.temperature)
        noise = torch.stack([torch.empty(scores.shape[-1], device=scores.device).exponential_(generator=g)
                             for g in self.generators])
        return torch.log_softmax(scores, dim=-1) - noise.log()


class EvalLM:
    def __init__(self, model, tokenizer, batch_size: int = 8, device: str = "cpu", max_length: int | None = None,
                 decoding: Decoding | None = None):
        # Kept in the precision it was loaded in; a model spread over several GPUs stays where it is.
        self.model = (model if getattr(model, "hf_device_map", None) else model.to(device)).eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.device = device
        self.bos, self.eos, self.pad = special_ids(tokenizer)
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        # Left padding puts every continuation at the end: only its last positions need logits.
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.decoding = decoding or Decoding()
        self.prefix_ids = [self.encode(p) for p in self.decoding.prefixes] if self.decoding.name == "self-debias" else []

    def generation_prompt(self, prompt: str) -> str:
        """The text `generate` feeds the model for `prompt` (after [BOS]) under this LM's decoding."""
        return self.decoding.generation_prompt(prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # ---- log-likelihood -------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]], on_batch: Callable[[int], None] | None = None,
                      prefixes: Sequence[Sequence[str]] | None = None) -> list[LogLik]:
        """log p(continuation | [BOS] + context) for each (context, continuation). Under self-debias
        with log-likelihood reweighting, `prefixes` gives each request its own debiasing prefixes (the
        same number for all; CrowS/StereoSet: their bias type's); None = the decoding's."""
        encoded = []
        for context, continuation in requests:
            # A trailing space belongs to the continuation (" Paris", not "Paris" after "is "),
            # as the tokenizer would split the joined text.
            stripped = context.rstrip(" ")
            if stripped != context:
                continuation = context[len(stripped):] + continuation
            cont = self.encode(continuation)
            if not cont:
                raise ValueError(f"loglikelihood: empty continuation after context {context[-60:]!r}")
            encoded.append(([self.bos] + self.encode(stripped), cont))
        prefix_ids = None
        if prefixes is not None and self.decoding.debiases_loglik:
            if len(prefixes) != len(requests) or len({len(p) for p in prefixes}) > 1 or not all(prefixes):
                raise ValueError("loglikelihood: prefixes needs one equally long, non-empty list per request")
            ids = {text: self.encode(text) for text in {t for p in prefixes for t in p}}
            prefix_ids = [[ids[text] for text in p] for p in prefixes]
        return self.loglikelihood_tokens(encoded, on_batch, prefix_ids)

    @torch.no_grad()
    def loglikelihood_tokens(self, encoded: Sequence[tuple[list[int], list[int]]], on_batch=None,
                             prefix_ids: Sequence[Sequence[list[int]]] | None = None) -> list[LogLik]:
        """As `loglikelihood`, on token ids; `prefix_ids`: each request's debiasing prefixes, encoded."""
        results: list[LogLik | None] = [None] * len(encoded)
        # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
        order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            inputs, conts = [], []
            for i in chunk:
                context, cont = encoded[i]
                whole = (context + cont)[-(self.max_length + 1):]
                inputs.append(whole[:-1])  # the last token is predicted, never an input
                conts.append(cont[-len(whole) + 1:] if len(cont) >= len(whole) else cont)
            keep = max(len(c) for c in conts)
            logprobs = self._last_logprobs(inputs, keep)
            if self.decoding.debiases_loglik:
                # The same contexts after each debiasing prefix: their last `keep` positions predict
                # the same continuation tokens (left padding aligns the ends).
                rows = [prefix_ids[i] for i in chunk] if prefix_ids is not None else [self.prefix_ids] * len(chunk)
                biased = [self._last_logprobs([with_prefix(s, row[k], self.bos, self.max_length)
                                               for s, row in zip(inputs, rows)], keep)
                          for k in range(len(rows[0]))]
                logprobs = self_debias(logprobs, biased, self.decoding.decay, self.decoding.epsilon)
            for row, i in enumerate(chunk):
                cont = conts[row]
                scored = logprobs[row, keep - len(cont):]
                target = torch.tensor(cont, device=scored.device)
                token_lp = scored.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((scored.argmax(-1) == target).all())
                results[i] = LogLik(float(token_lp.sum()), len(cont), greedy)
            if on_batch:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _last_logprobs(self, inputs: list[list[int]], keep: int) -> torch.Tensor:
        ids, mask = self._left_pad(inputs)
        # Positions count real tokens only, so padding never shifts a row (batch size 1 == batch size n).
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": keep} if self._keep_logits else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs).logits
        return torch.log_softmax(logits[:, -keep:].float(), dim=-1)

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---- generation -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, samples: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 on_batch: Callable[[int], None] | None = None) -> list[list[Generation]]:
        """`samples` continuations per prompt (greedy when do_sample is False), special tokens dropped,
        each with why it ended. Each prompt is fed as [BOS] + generation_prompt(prompt); self-debias
        decodes through SelfDebiasingLogitsProcessor. Sample j of a prompt is drawn from its own
        random stream, item_seed(seed, prompt, j)."""
        from transformers import GenerationConfig

        eos_ids = {self.eos}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos_ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        # Greedy decoding of every row; sampling is ItemSampler's, row by row.
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad,
                                  eos_token_id=sorted(eos_ids))
        room = max(self.max_length - max_new_tokens - max((len(p) for p in self.prefix_ids), default=0), 1)
        encoded = [([self.bos] + self.encode(self.generation_prompt(p)))[-room:] for p in prompts]
        results: list[list[Generation]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        per_batch = max(1, self.batch_size // max(samples, 1))
        for start in range(0, len(order), per_batch):
            chunk = order[start:start + per_batch]
            rows = [(i, j) for i in chunk for j in range(samples)]  # each prompt's samples side by side
            ids, mask = self._left_pad([encoded[i] for i, _ in rows])
            processors = []
            if self.decoding.debiases_generation:
                processors.append(SelfDebiasingLogitsProcessor(
                    self.model, self.prefix_ids, self.decoding.decay, self.decoding.epsilon, attention_mask=mask,
                    bos_token_id=self.bos, pad_token_id=self.pad))
            if do_sample:
                processors.append(ItemSampler([item_seed(seed, prompts[i], j) for i, j in rows], temperature, top_p))
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      **({"logits_processor": processors} if processors else {}))
            new = out[:, ids.shape[1]:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            # A row without an end token ran to max_new_tokens (rows are padded only after their end).
            ended = torch.isin(new, torch.tensor(sorted(eos_ids), device=new.device)).any(-1).tolist()
            made = [Generation(t, "eos" if e else "length") for t, e in zip(texts, ended)]
            for row, i in enumerate(chunk):
                results[i] = made[row * samples:(row + 1) * samples]
            if on_batch:
                on_batch(len(chunk))
        return results

