"""`python -m cdb.memory`: will a scale fit, per GPU (or per CPU machine), under ZeRO-3?

    python -m cdb.memory --scale 70b --gpus 8 --offload none       # exit 1 and a suggestion
    python -m cdb.memory --scale 70b                              # the scale's own 32 GPUs + offload

Everything is arithmetic on the model's shape (no weights, no network) and the scale's ds_config:

  model states (per rank, partitioned over the G ranks; P = trainable parameters, LM + contrast head)
    parameters   b_p·P/G (+ b_p x the small "persistent" parameters every rank keeps whole)
    gradients    b_g·P/G, the 16-bit (or fp32) gradient partition (b_g = data_types.grad_accum_dtype,
                 default the model dtype)
    optimizer    12·P/G: fp32 master copy + Adam m and v
    fp32 grads   DeepSpeed 0.19 converts each optimizer sub-group's gradient to fp32 for the step:
                 4·min(P/G, sub_group_size), briefly, at the step, plus AdamW's temporaries (on a
                 GPU the foreach sqrt: 4 B/param; on CPU the single-tensor sqrt and division: 8
                 B/param); with the optimizer offloaded the fp32 gradients live on the host for the
                 whole partition.
  working      ZeRO-3's gathered parameters: b_p·min(stage3_max_live_parameters +
                 stage3_prefetch_bucket_size, P), plus the full gradient of the largest layer and
                 one reduce bucket.
  activations  Korthikanti et al. (2022), per layer s·b·h·(34 + 5·a·s/h) bytes at 16 bits (the
                 5·a·s/h score term only for eager attention: SDPA/flash never store the scores),
                 x2 for fp32 activations; with activation checkpointing 2·s·b·h per layer plus
                 one layer recomputed in full. b = rows per micro-batch (every candidate of a source
                 is a row: micro_batch x rows_per_source), s = the longest row (1 + source + target
                 tokens). Plus the logits at the scored positions (cdb computes no others) in fp32
                 with their softmax gradient, and the contrast head's [rows, s, h] tensors.
  dpo          the frozen reference adds its own b_p·P/G and gathered set.
  checkpoint   what one rank writes per checkpoint (DeepSpeed's ZeRO-3 save: the fp32 master partition
                 and Adam's m and v, 12·P/G, plus the module's state dict, where only the persistent
                 parameters are whole): the size k8s/README.md sizes the pods' staging disk and stop
                 grace period from.
  reserve      1 GiB per GPU (CUDA context, NCCL, fragmentation); per CPU rank the runtime
                 (CPU_RUNTIME_BYTES, measured).
  peak on a GPU = model states + max(working + activations, step temporaries): activations and
  gathered parameters are gone by the optimizer step and the caching allocator reuses their blocks.
  peak on CPU = model states + working + activations + step temporaries: glibc keeps the freed
  activation memory resident, so the step's temporaries come on top (measured: bench/RESULTS.md).

Evaluation after training (`evaluation_plan`) holds whole copies of the model, not ZeRO-3 shards: a
copy needs its weights in the evaluation's precision, the KV cache of a generating batch, the
logits of a scored batch and the scorers, over as many of one node's GPUs as hold it (spread by
transformers' device_map; a copy never spans nodes), plus the per-GPU reserve and one largest layer
per GPU for an uneven split. `evaluation_placement` turns that into copies: each copy takes the
smallest divisor of the node's GPU count that holds it, so a node (a pod) splits into whole copies,
and the run's GPUs give total // per_copy copies (cdb.train evaluates with them).

DeepSpeed's own estimator (`deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`,
what `estimate_zero3_model_states_mem_needs_all_cold` prints) assumes 16-bit parameters and ONE fp32
gradient partition plus fp32 optimizer states: 2 + 4 + 12 = 18 B/param on the GPU without
offload, 2 B/param with the optimizer offloaded, none with parameters offloaded too, plus
4 B x the largest layer (its 16-bit parameters and gradients gathered); host: 16 B/param per node
with optimizer offload, 18 with parameters too, x1.5 buffer factor. `zero3_model_states` with its
defaults is exactly that accounting. What 0.19.8 really allocates for bf16 (no
grad_accum_dtype) is a 2-byte gradient partition instead: 16 B/param resident, 20 B/param for a
moment at the step (see above) — DeepSpeed's 18 sits between the two; the plan uses the real ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from dataclasses import dataclass, field

GiB = 2 ** 30
OFFLOADS = ("none", "optimizer", "all")
OPTIMIZER_BYTES = 12
"""fp32 master weights + Adam first and second moments, per trainable parameter."""
GPU_RESERVE_BYTES = 1 * GiB
"""CUDA context, NCCL buffers, allocator fragmentation: memory a GPU rank cannot plan with."""
CPU_RUNTIME_BYTES = 600 * 2 ** 20
"""Resident size of one CPU rank that no tensor of the plan accounts for: Python, torch,
DeepSpeed, transformers' modeling code, tokenizer and data (536 MiB measured per torchrun rank
before the model, bench/RESULTS.md plan_vs_measured) plus DeepSpeed/gloo buffers and allocator
arenas (~60 MiB, what a 0.6M-parameter model adds beyond its tensors)."""
DEFAULT_ROWS_PER_SOURCE = 8
"""Rows of the largest source in the embedded dataset (3 positives + 5 negatives); the plan sizes
activations for the largest micro-batch, where the peak happens."""
SUB_GROUP_SIZE = 1_000_000_000
"""DeepSpeed's default zero_optimization.sub_group_size."""
GPUS_PER_NODE = 8
"""GPUs of one node (a pod) where the plan has no cluster to ask: the GPU scales' node shape."""
EVAL_SEQ_LEN = 1024
"""Tokens of the longest sequence an evaluation batch holds, for planning: a prompt (TruthfulQA's
six-question preamble and a question, a summary's source) and its new tokens."""
EVAL_SCORER_BYTES = 2 * GiB
"""The evaluation's scorers on the first GPU of a copy: at most an NLI RoBERTa-large (355M
parameters) in fp32 beside a smaller classifier."""

# Shapes of the hub models the scales name, so that the plan works offline. Counts built from
# these on the meta device match the published ones (7B 6,738,415,616; 13B 13,015,864,320;
# 70B 68,976,648,192; phi-2 2,779,683,840; gpt2 124,439,808).
KNOWN_SHAPES: dict[str, dict] = {
    "meta-llama/Llama-2-7b-hf": dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "meta-llama/Llama-2-13b-hf": dict(model_type="llama", num_hidden_layers=40, hidden_size=5120, intermediate_size=13824,
                                      num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "meta-llama/Llama-2-70b-hf": dict(model_type="llama", num_hidden_layers=80, hidden_size=8192, intermediate_size=28672,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    "microsoft/phi-2": dict(model_type="phi", num_hidden_layers=32, hidden_size=2560, intermediate_size=10240,
                            num_attention_heads=32, num_key_value_heads=32, vocab_size=51200, tie_word_embeddings=False),
    "openai-community/gpt2": dict(model_type="gpt2", n_layer=12, n_embd=768, n_inner=3072, n_head=12, vocab_size=50257,
                                  n_positions=1024, tie_word_embeddings=True),
}
KNOWN_SHAPES["gpt2"] = KNOWN_SHAPES["openai-community/gpt2"]
for _size in ("7b", "13b", "70b"):
    KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-chat-hf"] = KNOWN_SHAPES[f"meta-llama/Llama-2-{_size}-hf"]


# --- the model's shape ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    name: str
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    total_params: int
    largest_layer_params: int
    """Parameters of the module holding the most parameters of its own (DeepSpeed's model_to_params)."""
    param_sizes: tuple[int, ...] = field(repr=False, default=())
    """numel of every parameter tensor (for ZeRO-3's persistence threshold)."""

    def persistent_params(self, threshold: float) -> int:
        """Parameters ZeRO-3 keeps whole on every rank (numel <= stage3_param_persistence_threshold)."""
        return sum(n for n in self.param_sizes if n <= threshold)


def shape_from_config(name: str, config) -> ModelShape:
    """Shape and parameter counts of a HF config, built on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(p): p for p in model.parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    get = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)  # noqa: E731
    hidden = get("hidden_size", "n_embd")
    heads = get("num_attention_heads", "n_head")
    return ModelShape(
        name=name, model_type=config.model_type, layers=get("num_hidden_layers", "n_layer"), hidden=hidden,
        intermediate=get("intermediate_size", "n_inner", default=4 * hidden), heads=heads,
        kv_heads=get("num_key_value_heads", default=heads), vocab=config.vocab_size,
        total_params=sum(p.numel() for p in unique.values()), largest_layer_params=largest,
        param_sizes=tuple(p.numel() for p in unique.values()),
    )


@functools.lru_cache(maxsize=32)
def model_shape(source: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of a scale's model: `builtin:tiny-llama` (with the shipped tokenizer's vocabulary),
    `gguf:PACKAGE` (converted once into the cache, offline), a known hub id (KNOWN_SHAPES, offline),
    or a local directory / cached hub id through AutoConfig."""
    from transformers import AutoConfig

    from cdb.model import TINY, load_tokenizer, prepare_model_source, tiny_llama_config

    if source == TINY:
        return shape_from_config(source, tiny_llama_config(len(load_tokenizer(TINY))))
    if source in KNOWN_SHAPES:
        fields = dict(KNOWN_SHAPES[source])
        return shape_from_config(source, AutoConfig.for_model(fields.pop("model_type"), **fields))
    path = prepare_model_source(source) if source.startswith("gguf:") else source
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(k for k in KNOWN_SHAPES if "/" in k))
        raise ValueError(f"cannot read the config of {source!r} ({exc.__class__.__name__}); offline the plan knows: {known}") from None
    return shape_from_config(source, config)


def contrast_head_params(hidden: int, projection_dim: int = 0) -> int:
    """ContrastHead: dense H->H and proj H->P, with biases (P = H when projection_dim is 0)."""
    p = projection_dim or hidden
    return hidden * hidden + hidden + hidden * p + p


# --- model states: DeepSpeed's accounting, parameterised --------------------------------------


@dataclass(frozen=True)
class ModelStates:
    """Bytes for params, gradients and optimizer states: per GPU, and on the host per node."""
    gpu_params: int
    gpu_grads: int
    gpu_optimizer: int
    gpu_gathered_largest_layer: int
    host_per_node: int

    @property
    def gpu_total(self) -> int:
        return self.gpu_params + self.gpu_grads + self.gpu_optimizer + self.gpu_gathered_largest_layer


def zero3_model_states(total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
                       offload: str = "none", param_bytes: int = 2, grad_bytes: int = 4,
                       optimizer_bytes: int = OPTIMIZER_BYTES, fp32_grad_copy: bool = False,
                       persistent_params: int = 0) -> ModelStates:
    """ZeRO-3 model-state memory. With the defaults this is DeepSpeed's own estimate
    (estimate_zero3_model_states_mem_needs, zero_init=True, additional_buffer_factor=1):
    16-bit params, one fp32 gradient partition, fp32 optimizer states, and the largest layer's
    16-bit parameters and gradients gathered on the GPU.

    `fp32_grad_copy`: count the fp32 gradient DeepSpeed 0.19 makes from a 16-bit gradient partition
    when the optimizer is offloaded (it lives on the host); without offload that copy is transient
    (see `Plan.step_transient_bytes`) and not counted here. `persistent_params` are kept whole on
    every GPU (or on the host with parameter offload).
    """
    if offload not in OFFLOADS:
        raise ValueError(f"offload {offload!r}: one of {', '.join(OFFLOADS)}")
    gpus = num_gpus_per_node * num_nodes
    partition = total_params / gpus
    params = param_bytes * partition + param_bytes * persistent_params
    grads = grad_bytes * partition
    optimizer = optimizer_bytes * partition
    fp32_grads = 4 * partition if fp32_grad_copy and offload != "none" else 0
    gathered = 2 * param_bytes * largest_layer_params
    if offload == "none":
        gpu = (params, grads, optimizer)
        host = 0.0
    elif offload == "optimizer":
        gpu = (params, 0, 0)
        host = grads + fp32_grads + optimizer
    else:
        gpu = (0, 0, 0)
        host = params + grads + fp32_grads + optimizer
    return ModelStates(int(gpu[0]), int(gpu[1]), int(gpu[2]), int(gathered), int(host * num_gpus_per_node))


# --- activations ------------------------------------------------------------------------------


def activation_bytes(shape: ModelShape, seq_len: int, rows: int, act_bytes: int, checkpointing: bool,
                     attention_scores: bool) -> int:
    """Korthikanti et al. per-layer activations for `rows` sequences of `seq_len` tokens."""
    s, b, h, a = seq_len, rows, shape.hidden, shape.heads
    scale = act_bytes / 2  # the 34 s·b·h counts 16-bit tensors
    full_layer = s * b * h * (34 + (5 * a * s / h if attention_scores else 0)) * scale
    if checkpointing:
        return int(shape.layers * 2 * s * b * h * scale + full_layer)  # layer inputs + one layer recomputed
    return int(shape.layers * full_layer)


def logits_bytes(shape: ModelShape, scored_tokens: int, act_bytes: int) -> int:
    """Logits at the scored positions: model dtype, their fp32 copy, and the softmax gradient."""
    return int(scored_tokens * shape.vocab * (act_bytes + 4 + 4))


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    scale: str
    model: str
    method: str
    precision: str
    cpu: bool
    gpus: int
    """Ranks (GPUs, or CPU processes on one machine)."""
    memory_bytes: int
    """Per GPU; for CPU scales the machine's RAM, shared by all ranks."""
    offload: str
    micro_batch: int
    grad_accum: int
    global_batch: int
    """Sources per optimizer step: micro_batch x grad_accum x ranks."""
    seq_len: int
    rows_per_micro_batch: int
    activation_checkpointing: bool
    total_params: int
    """The LM's parameters (from the model's config)."""
    trainable_params: int
    """LM + contrast head (the head only for the contrastive method)."""
    reference_params: int
    """DPO's frozen reference (its own ZeRO-3 engine, params only), else 0."""
    largest_layer_params: int
    persistent_params: int
    # per rank, bytes, on the GPU (CPU scales: in the rank's own RAM)
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    step_transient_bytes: int
    gathered_bytes: int
    activations_bytes: int
    activations_no_ckpt_bytes: int
    activations_ckpt_bytes: int
    logits_bytes: int
    reserve_bytes: int
    """CUDA context etc. per GPU; the runtime (Python, torch, DeepSpeed) per CPU rank."""
    host_offload_bytes: int
    """Per rank, on the host: what the offload put there (0 without offload)."""
    checkpoint_bytes: int
    """Per rank: its part of a ZeRO-3 checkpoint (optimizer states of its partition + persistent parameters)."""
    model_states_by_offload: dict = field(repr=False, default_factory=dict)
    """offload mode -> per-GPU resident model states (params + grads + optimizer) for the same setup."""
    deepspeed_estimate_bytes: int = 0
    """DeepSpeed's estimate_zero3_model_states_mem_needs GPU figure for these parameters and offload."""
    total_bytes: int = 0
    """Per-rank peak, reserve included."""
    fits: bool = False
    message: str = ""
    suggestion: dict = field(default_factory=dict)
    """`--set` overrides (and plan flags) of the first configuration found that fits; {} if it fits or none does."""

    @property
    def model_states_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def needed_bytes(self) -> int:
        """What must fit into memory_bytes: the per-rank peak, x ranks on a CPU machine."""
        return self.total_bytes * (self.gpus if self.cpu else 1)

    def table(self) -> str:
        unit = "rank" if self.cpu else "GPU"
        lines = [
            f"cdb plan: scale {self.scale} ({self.model}), method {self.method}, {self.precision}, "
            f"{self.gpus} {'CPU ranks' if self.cpu else 'GPUs'}, offload {self.offload}",
            f"  parameters {self.total_params:,} (LM) + {self.trainable_params - self.total_params:,} (contrast head)"
            + (f" + {self.reference_params:,} (DPO reference, frozen)" if self.reference_params else "")
            + f"; largest layer {self.largest_layer_params:,}; {self.persistent_params:,} persistent",
            f"  batch: micro {self.micro_batch} sources x {self.rows_per_micro_batch // self.micro_batch} rows, "
            f"seq {self.seq_len}, accum {self.grad_accum}, global {self.global_batch} sources; "
            f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}",
            "",
            f"  per {unit:<31} {'GiB':>9}",
        ]

        def row(label, value, note=""):
            lines.append(f"  {label:<35} {value / GiB:9.3f}{'  ' + note if note else ''}")

        row("parameters", self.params_bytes)
        row("gradients", self.grads_bytes)
        row("optimizer states (fp32 master+m+v)", self.optimizer_bytes)
        alternatives = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.model_states_by_offload.items())
        row("  = model states", self.model_states_bytes, f"by offload: {alternatives}" if alternatives else "")
        row("ZeRO-3 gathered buffers", self.gathered_bytes, "max live + prefetch + largest layer grad + bucket")
        row("activations", self.activations_bytes,
            f"ckpt off {self.activations_no_ckpt_bytes / GiB:.2f}, on {self.activations_ckpt_bytes / GiB:.2f}")
        row("logits + head", self.logits_bytes)
        row("optimizer step (transient)", self.step_transient_bytes,
            "fp32 grad + AdamW temporaries" + (", on top (CPU)" if self.cpu else ", after activations are freed"))
        row("reserve" if not self.cpu else "runtime (Python/torch/DeepSpeed)", self.reserve_bytes)
        row("= peak", self.total_bytes)
        if self.host_offload_bytes:
            row("host, offloaded states", self.host_offload_bytes,
                f"per rank; {self.host_offload_bytes * min(self.gpus, 8) / GiB:,.0f} GiB per 8-GPU node")
        row("checkpoint, written per " + unit, self.checkpoint_bytes,
            f"{self.checkpoint_bytes * min(self.gpus, 8) / GiB:,.1f} GiB per {min(self.gpus, 8)}-{unit} node, "
            f"{self.checkpoint_bytes * self.gpus / GiB:,.1f} GiB in all")
        lines.append(f"  DeepSpeed's estimate (model states, {self.offload} offload): {self.deepspeed_estimate_bytes / GiB:.3f} GiB")
        lines.append("")
        lines.append(self.message)
        return "\n".join(lines)


def _bytes_of(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _offload_of(ds_config: dict) -> str:
    zero = ds_config.get("zero_optimization", {})
    device = lambda key: (zero.get(key) or {}).get("device", "none")  # noqa: E731
    if device("offload_param") not in ("none", None):
        return "all"
    if device("offload_optimizer") not in ("none", None):
        return "optimizer"
    return "none"


def _grad_bytes(ds_config: dict, precision: str) -> int:
    accum = (ds_config.get("data_types") or {}).get("grad_accum_dtype")
    if accum is None:
        return _bytes_of(precision)
    return 4 if str(accum).lower() in ("fp32", "float32", "float") else 2


def deepspeed_estimate(total_params: int, largest_layer_params: int, gpus: int, offload: str,
                       gpus_per_node: int = 8) -> int:
    """DeepSpeed's own per-GPU figure (zero_init=True). Imported lazily: DeepSpeed picks an
    accelerator at import time."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node = min(gpus, gpus_per_node)
    nodes = max(1, math.ceil(gpus / per_node))
    _, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
        total_params, largest_layer_params, num_gpus_per_node=per_node, num_nodes=nodes,
        cpu_offload=offload != "none", cpu_offload_params=offload == "all", zero_init=True, additional_buffer_factor=1.0)
    return int(gpu_mem)


def machine_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gathered_bytes(zero: dict, shape: ModelShape, trainable: int, reference: int, b_p: int, b_g: int) -> int:
    """ZeRO-3's working set: gathered parameters (bounded by max live + one prefetch bucket), the
    largest layer's full gradient, one reduce bucket; a DPO reference gathers its own."""
    live = min(float(zero.get("stage3_max_live_parameters", 1e9)) + float(zero.get("stage3_prefetch_bucket_size", 5e7)),
               trainable)
    gathered = b_p * max(live, shape.largest_layer_params) + b_p * shape.largest_layer_params
    gathered += b_g * float(zero.get("reduce_bucket_size", 5e8))
    if reference:
        gathered += b_p * min(live, reference)
    return int(gathered)


def _forward_bytes(scale, shape: ModelShape, seq: int, rows: int, act_b: int, reference: bool,
                   head: bool) -> tuple[int, int, int, int]:
    """(activations as the scale trains, without checkpointing, with it, logits) of one micro-batch."""
    eager = scale.attn_implementation == "eager"
    act_off = activation_bytes(shape, seq, rows, act_b, False, eager)
    act_on = activation_bytes(shape, seq, rows, act_b, True, eager)
    activations = act_on if scale.activation_checkpointing else act_off
    if reference:
        activations += activation_bytes(shape, seq, rows, act_b, True, eager) // shape.layers  # no_grad: one layer live
    scored = rows * scale.max_target_tokens  # exact when the method scores negatives too; an upper bound otherwise
    logits = logits_bytes(shape, scored, act_b) * (2 if reference else 1)
    if head:
        # dense, gelu, proj outputs and z (fp32) at the pooled positions only: within the targets
        logits += 4 * rows * scale.max_target_tokens * shape.hidden * 4
    return activations, act_off, act_on, logits


def estimate_memory(config, gpus: int, gpu_memory_bytes: int | None, micro_batch: int | None = None, seq_len: int | None = None,
         offload: str | None = None, rows_per_source: int = DEFAULT_ROWS_PER_SOURCE, suggest: bool = True,
         with_deepspeed_estimate: bool = False, shape: ModelShape | None = None) -> Plan:
    """The memory plan of `config` (a cdb.config.Config) on `gpus` ranks.

    `gpu_memory_bytes`: per GPU; for CPU scales (scale.gpus_per_worker == 0) the machine's RAM that
    all ranks share (None: this machine's). `micro_batch`/`seq_len` override the scale's (seq_len
    default: 1 + max_source_tokens + max_target_tokens). `offload` overrides the ds_config's
    (none | optimizer | all; ignored on CPU, where everything is host memory already).
    `rows_per_source`: candidates per source (the embedded dataset's largest is 8).
    When it does not fit and `suggest` is on, `message` names the first change found that fits.
    `shape`: the model's shape when the caller has it (default: `model_shape(scale.model)`).
    """
    from cdb.strategy import build_ds_config

    scale = config.scale
    cpu = scale.gpus_per_worker == 0
    micro = micro_batch or scale.micro_batch
    seq = seq_len or (1 + scale.max_source_tokens + scale.max_target_tokens)
    config = dataclasses.replace(config, scale=dataclasses.replace(scale, micro_batch=micro))
    ds = build_ds_config(config, gpus)
    zero = ds["zero_optimization"]
    mode = "none" if cpu else (offload or _offload_of(ds))
    if mode not in OFFLOADS:
        raise ValueError(f"offload {mode!r}: one of {', '.join(OFFLOADS)}")
    from cdb.methods import METHODS

    method = config.objective.method
    spec = METHODS[method]
    shape = shape or model_shape(scale.model, scale.trust_remote_code)

    b_p = _bytes_of(scale.precision)
    b_g = _grad_bytes(ds, scale.precision)
    head = contrast_head_params(shape.hidden, config.objective.contrastive.projection_dim) if spec.contrast_head else 0
    trainable = shape.total_params + head
    reference = shape.total_params if spec.reference_model else 0
    threshold = float(zero.get("stage3_param_persistence_threshold", 1e5))
    persistent = shape.persistent_params(threshold)
    gpus_per_node = GPUS_PER_NODE if not cpu else gpus
    nodes = max(1, math.ceil(gpus / gpus_per_node))
    per_node = min(gpus, gpus_per_node)

    def states(kind: str) -> ModelStates:
        return zero3_model_states(trainable, shape.largest_layer_params, per_node, nodes, kind, param_bytes=b_p,
                                  grad_bytes=b_g, fp32_grad_copy=True, persistent_params=persistent)

    chosen = states(mode)
    partition = trainable / gpus
    ref_params = 0 if mode == "all" else int(b_p * (reference / gpus + (persistent if reference else 0)))
    params_b = chosen.gpu_params + ref_params
    gathered = _gathered_bytes(zero, shape, trainable, reference, b_p, b_g)
    rows = micro * rows_per_source
    activations, act_off, act_on, logits = _forward_bytes(scale, shape, seq, rows, b_p, bool(reference), bool(head))
    # The optimizer step: the fp32 gradient of one sub-group and AdamW's temporaries (foreach sqrt
    # on a GPU; single-tensor sqrt and division on CPU). Offloaded, it happens on the host.
    adam_temporaries = 8 if cpu else 4
    sub_group = min(partition, float(zero.get("sub_group_size", SUB_GROUP_SIZE)))
    step = int((4 + adam_temporaries) * sub_group) if mode == "none" else 0
    reserve = CPU_RUNTIME_BYTES if cpu else GPU_RESERVE_BYTES
    resident = params_b + chosen.gpu_grads + chosen.gpu_optimizer
    if cpu:  # freed activations stay resident under glibc: the step comes on top
        total = int(resident + gathered + activations + logits + step + reserve)
    else:
        total = int(resident + max(gathered + activations + logits, step) + reserve)
    host = int(chosen.host_per_node / per_node) if mode != "none" else 0

    memory = gpu_memory_bytes if gpu_memory_bytes is not None else (machine_ram_bytes() if cpu else 80 * GiB)
    needed = total * (gpus if cpu else 1)
    fits = needed <= memory
    by_offload = {} if cpu else {k: (lambda s: s.gpu_params + s.gpu_grads + s.gpu_optimizer)(states(k)) for k in OFFLOADS}
    ds_estimate = 0
    if with_deepspeed_estimate:
        ds_estimate = deepspeed_estimate(trainable, shape.largest_layer_params, gpus, mode, gpus_per_node)

    result = Plan(
        scale=scale.name, model=scale.model, method=method, precision=scale.precision, cpu=cpu, gpus=gpus,
        memory_bytes=int(memory), offload=mode, micro_batch=micro, grad_accum=scale.grad_accum,
        global_batch=micro * scale.grad_accum * gpus, seq_len=seq, rows_per_micro_batch=rows,
        activation_checkpointing=scale.activation_checkpointing, total_params=shape.total_params,
        trainable_params=trainable, reference_params=reference, largest_layer_params=shape.largest_layer_params,
        persistent_params=persistent, params_bytes=params_b, grads_bytes=chosen.gpu_grads,
        optimizer_bytes=chosen.gpu_optimizer, step_transient_bytes=step, gathered_bytes=gathered,
        activations_bytes=activations, activations_no_ckpt_bytes=act_off, activations_ckpt_bytes=act_on,
        logits_bytes=logits, reserve_bytes=reserve, host_offload_bytes=host,
        checkpoint_bytes=int(OPTIMIZER_BYTES * partition + b_p * persistent), model_states_by_offload=by_offload,
        deepspeed_estimate_bytes=ds_estimate, total_bytes=total, fits=fits,
    )
    where = (f"{gpus} CPU ranks need {needed / GiB:.1f} GiB of this machine's {memory / GiB:.1f} GiB RAM"
             if cpu else f"needs {total / GiB:.1f} GiB per GPU of {memory / GiB:.1f} GiB")
    if fits:
        return dataclasses.replace(result, message=f"fits: {where}")
    message = f"does not fit: {where}"
    suggestion = {}
    if suggest:
        suggestion = _suggest(config, gpus, memory, micro, seq, mode, rows_per_source, cpu, shape)
        if suggestion:
            message += "; " + suggestion["text"]
        else:
            message += "; no change tried fits (activation checkpointing, micro-batch 1, offload, more GPUs)"
    return dataclasses.replace(result, message=message, suggestion=suggestion)


def _suggest(config, gpus: int, memory: int, micro: int, seq: int, offload: str, rows_per_source: int, cpu: bool,
             shape: ModelShape) -> dict:
    """The first configuration that fits, cheapest change first: activation checkpointing, smaller
    micro-batches with more accumulation (global batch kept), offloading the optimizer, then
    parameters too, then more GPUs."""
    scale = config.scale
    per_step = micro * scale.grad_accum
    micros = [m for m in range(micro, 0, -1) if per_step % m == 0] or [micro]
    ckpts = [scale.activation_checkpointing] if scale.activation_checkpointing else [False, True]
    offloads = ["none"] if cpu else list(OFFLOADS[OFFLOADS.index(offload):])

    def attempt(ckpt: bool, m: int, off: str, g: int):
        cfg_try = dataclasses.replace(config, scale=dataclasses.replace(scale, activation_checkpointing=ckpt,
                                                                         grad_accum=per_step // m))
        return estimate_memory(cfg_try, g, memory, micro_batch=m, seq_len=seq, offload=off, rows_per_source=rows_per_source,
                    suggest=False, shape=shape)

    def describe(p: Plan, g: int) -> dict:
        sets = []
        if p.activation_checkpointing != scale.activation_checkpointing:
            sets.append("scale.activation_checkpointing=true")
        if p.micro_batch != micro:
            sets += [f"scale.micro_batch={p.micro_batch}", f"scale.grad_accum={p.grad_accum}"]
        flags = " ".join(f"--set {s}" for s in sets)
        parts = []
        if flags:
            parts.append(flags)
        if p.offload != offload:
            parts.append(f"offload {p.offload} (a ds_config with zero_optimization.offload_optimizer"
                         + (" and offload_param" if p.offload == "all" else "")
                         + " on cpu, as ds_configs/zero3_bf16_70b_offload.json has; plan it with --offload "
                         + p.offload + ")")
        if g != gpus:
            parts.append(f"{g} {'ranks' if cpu else 'GPUs'} (--num-workers {g})")
        if p.host_offload_bytes:
            parts.append(f"needing {p.host_offload_bytes * min(g, 8) / GiB:,.0f} GiB of host RAM per 8-GPU node")
        text = f"fits ({p.total_bytes / GiB:.1f} GiB{' per GPU' if not cpu else ' per rank'}) with " + ", ".join(parts)
        return {"sets": sets, "offload": p.offload, "gpus": g, "text": text, "total_bytes": p.total_bytes}

    for off in offloads:
        for ckpt in ckpts:
            for m in micros:
                p = attempt(ckpt, m, off, gpus)
                if p.fits:
                    return describe(p, gpus)
    if cpu:
        for g in range(gpus - 1, 0, -1):  # fewer ranks on one machine: fewer runtimes and activation sets
            p = attempt(True, 1, "none", g)
            if p.fits:
                return describe(p, g)
        return {}
    g = gpus
    while g < 4096:
        g = g * 2 if g < 8 else g + 8
        for off in OFFLOADS[OFFLOADS.index(offload):]:
            p = attempt(True, micros[-1], off, g)
            if p.fits:
                return describe(p, g)
    return {}


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPlan:
    """One evaluation copy of the model, and how the run's GPUs hold copies."""
    precision: str
    batch_size: int
    seq_len: int
    weights_bytes: int
    kv_cache_bytes: int
    logits_bytes: int
    scorer_bytes: int
    gpu_memory_bytes: int
    """Per GPU."""
    gpus_per_node: int
    gpus_per_copy: int
    """GPUs one copy takes: a divisor of gpus_per_node; 0 on CPU, or when no node holds a copy."""
    copies: int
    """Copies over the run's GPUs (CPU: one per worker); 0 when no node holds a copy."""

    @property
    def copy_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.logits_bytes + self.scorer_bytes

    @property
    def fits(self) -> bool:
        return self.copies > 0

    def describe(self) -> str:
        head = (f"evaluation ({self.precision}, batch {self.batch_size} x {self.seq_len} tokens): a copy of the model "
                f"needs {self.copy_bytes / GiB:.1f} GiB (weights {self.weights_bytes / GiB:.1f}, KV cache "
                f"{self.kv_cache_bytes / GiB:.1f}, logits {self.logits_bytes / GiB:.1f}, scorers {self.scorer_bytes / GiB:.1f})")
        if not self.gpus_per_copy:
            return head + (f"; {self.copies} copies, one per worker, on CPU" if self.copies else
                           f"; it does not fit on one {self.gpus_per_node}-GPU node of {self.gpu_memory_bytes / GiB:.0f} GiB GPUs")
        return (head + f": {self.gpus_per_copy} of a node's {self.gpus_per_node} GPUs ({self.gpu_memory_bytes / GiB:.0f} GiB "
                f"each), {self.gpus_per_node // self.gpus_per_copy} copies per node, {self.copies} over the run's GPUs")


def gpus_for_copy(copy_bytes: int, largest_layer_bytes: int, gpu_memory_bytes: int, gpus_per_node: int) -> int:
    """The fewest GPUs, a divisor of gpus_per_node, over which one copy fits (device_map splits it by
    layers: each GPU holds its share, one largest layer of unevenness and the reserve); 0 if none."""
    for gpus in [d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0]:
        if copy_bytes / gpus + largest_layer_bytes + GPU_RESERVE_BYTES <= gpu_memory_bytes:
            return gpus
    return 0


def evaluation_placement(total_gpus: int, gpus_per_copy: int, workers: int) -> int:
    """Copies of the model an evaluation runs: on CPU (gpus_per_copy 0 and no GPUs) one per training
    worker; on GPUs as many whole copies as the run's GPUs hold."""
    if total_gpus == 0:
        return workers
    return total_gpus // gpus_per_copy if gpus_per_copy else 0


def evaluation_plan(config, gpu_memory_bytes: int | None = None, gpus_per_node: int = GPUS_PER_NODE,
                    shape: ModelShape | None = None) -> EvalPlan:
    """What evaluating the scale's model takes per copy, and the copies the run's GPUs hold
    (`gpu_memory_bytes` per GPU, default 80 GiB; `gpus_per_node` GPUs per node)."""
    scale, options = config.scale, config.eval
    shape = shape or model_shape(scale.model, scale.trust_remote_code)
    gpu = scale.gpus_per_worker > 0
    precision = scale.precision if gpu else "fp32"  # as cdb.train evaluates: the scale's precision on GPUs
    b = _bytes_of(precision)
    tokens = options.batch_size * EVAL_SEQ_LEN
    kv = 2 * shape.layers * shape.kv_heads * (shape.hidden // shape.heads) * b * tokens
    logits = 4 * shape.vocab * tokens  # fp32 log-softmax over a scored batch
    memory = gpu_memory_bytes or 80 * GiB
    total_gpus = scale.num_workers * scale.gpus_per_worker
    plan = EvalPlan(precision=precision, batch_size=options.batch_size, seq_len=EVAL_SEQ_LEN,
                    weights_bytes=b * shape.total_params, kv_cache_bytes=kv, logits_bytes=logits,
                    scorer_bytes=EVAL_SCORER_BYTES if gpu else 0, gpu_memory_bytes=memory,
                    gpus_per_node=gpus_per_node if gpu else 0, gpus_per_copy=0, copies=0)
    per_copy = gpus_for_copy(plan.copy_bytes, b * shape.largest_layer_params, memory, gpus_per_node) if gpu else 0
    return dataclasses.replace(plan, gpus_per_copy=per_copy,
                               copies=evaluation_placement(total_gpus, per_copy, scale.num_workers))


# --- CLI --------------------------------------------------------------------------------------


def command():
    from cdb.cli import Command, Flag
    from cdb.scales import ALIASES, SCALES

    flags = (
        Flag("--scale", default="tiny", help=f"scale preset ({', '.join(list(SCALES) + list(ALIASES))})"),
        Flag("--gpus", type=int, help="GPUs (CPU scales: ranks on this machine); default the scale's workers"),
        Flag("--gpu-memory", type=float, help="GiB per GPU (default 80); CPU scales: the machine's RAM in GiB (default this machine's)"),
        Flag("--micro-batch", type=int, help="sources per micro-batch (default the scale's)"),
        Flag("--seq-len", type=int, help="tokens per row (default 1 + max_source_tokens + max_target_tokens)"),
        Flag("--offload", choices=OFFLOADS, help="ZeRO-3 offload (default: what the scale's ds_config does)"),
        Flag("--method", key="objective.method"),
        Flag("--rows-per-source", type=int, default=DEFAULT_ROWS_PER_SOURCE, help="candidates per source"),
    )
    return Command("cdb.memory", "python -m cdb.memory", __doc__.split("\n")[0], flags, what="training")


def main(argv: list[str] | None = None) -> int:
    from cdb import config as cfg

    cli = command()
    args = cli.parse(argv)
    try:
        config = cfg.resolve(args.config, flags=cli.keys(args), sets=args.set, scale=args.scale)
    except cfg.ConfigError as exc:
        return cli.fail(str(exc))
    gpus = args.gpus or config.scale.num_workers * max(config.scale.gpus_per_worker, 1)
    memory = int(args.gpu_memory * GiB) if args.gpu_memory else None
    try:
        result = estimate_memory(config, gpus, memory, micro_batch=args.micro_batch, seq_len=args.seq_len, offload=args.offload,
                                 rows_per_source=args.rows_per_source, with_deepspeed_estimate=True)
    except (ValueError, cfg.ConfigError) as exc:
        return cli.fail(str(exc))
    print(result.table())
    if not result.cpu:
        # The same GPUs after training: whole copies of the model, each within one node.
        print(evaluation_plan(config, memory, min(GPUS_PER_NODE, gpus)).describe())
    return 0 if result.fits else 1


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimator's import must not look for GPUs
    sys.exit(main())
