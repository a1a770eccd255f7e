"""Performance arithmetic: training FLOPs per token, device peaks, MFU, peak memory.

Pure functions except `measure_matmul_peak` (times a matmul, cached per process) and
`peak_memory_bytes` / `current_rss_bytes` (read the process or the CUDA allocator).

FLOPs convention (PaLM appendix B, nanoGPT `estimate_mfu`): a training step costs
6·N FLOPs per token for the weight matmuls (2 forward + 4 backward) plus 12·L·A·T for attention
scores and values (L layers, A = heads x head_dim, T tokens of context). N here is the
non-embedding parameter count PLUS the LM head (vocab x hidden, counted once whether or not it is
tied to the input embedding): the input embedding is a lookup and costs no matmul, the head is a
matmul. Norm weights and biases are in N (they are parameters, their cost is negligible).
cdb computes logits only where the loss scores (`ContrastiveLM.forward`), so pass
`lm_head_fraction` (scored tokens / all tokens) to count what cdb really runs; the default 1.0 is
the convention every MFU figure elsewhere uses.
"""

from __future__ import annotations

import functools
import resource
import sys
import time

# Dense (no sparsity) peak FLOP/s per device, from the vendors' data sheets.
# fp32 is the plain (non-tensor-core) rate: PyTorch does not use TF32 for matmuls by default.
# Matched against torch.cuda.get_device_name() by case-insensitive substring, first match wins,
# so the more specific names come first.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},          # same compute as H100 SXM
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},          # SXM ("NVIDIA H100 80GB HBM3")
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},        # SXM and PCIe alike
}

_DTYPE_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
                "fp32": "fp32", "float32": "fp32", "float": "fp32"}


def dtype_name(dtype) -> str:
    """'bf16' | 'fp16' | 'fp32' for a torch dtype or any of the usual spellings."""
    text = str(dtype).replace("torch.", "").lower()
    if text not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r}; use bf16, fp16 or fp32")
    return _DTYPE_NAMES[text]


def _torch_dtype(dtype):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name(dtype)]


# --- FLOPs ------------------------------------------------------------------------------------


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _gated_mlp(config) -> bool:
    """Llama-family MLPs have gate, up and down projections (SwiGLU/GeGLU); GPT-2/Phi have two."""
    return getattr(config, "model_type", "") in {
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite", "smollm3"}


def matmul_parameters(config) -> int:
    """N of the 6·N rule: every parameter except the input (and position) embeddings, plus the LM
    head (vocab x hidden) counted once even when tied. From the config's shape, no weights needed.

    Llama-family configs are computed by hand (q, k, v, o projections with grouped KV heads, a
    gated MLP, two RMSNorms per layer and a final one); other architectures are built on the meta
    device and counted.
    """
    if _gated_mlp(config):
        layers = config.num_hidden_layers
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = _get(config, "num_key_value_heads", default=heads)
        head_dim = _get(config, "head_dim", default=hidden // heads)
        inter = config.intermediate_size
        attn_bias = bool(getattr(config, "attention_bias", False))
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        if attn_bias:
            attention += q_out + 2 * kv_out + hidden
        mlp = 3 * hidden * inter + (2 * inter + hidden if mlp_bias else 0)
        per_layer = attention + mlp + 2 * hidden
        return layers * per_layer + hidden + config.vocab_size * hidden
    return _meta_matmul_parameters(config)


def _meta_matmul_parameters(config) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings()
    head_params = sum(p.numel() for p in head.parameters()) if head is not None else 0
    tied_head = head is not None and id(head.weight) in embeddings
    return total - sum(params[i].numel() for i in embeddings) + (head_params if tied_head else 0)


def flops_per_token(config, seq_len: int, lm_head_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6·N + 12·L·A·seq_len (N = `matmul_parameters`, A = heads x
    head_dim, i.e. hidden_size for most models). `lm_head_fraction` scales the head's share of 6·N
    (cdb scores a fraction of positions only); 1.0 is the usual convention."""
    layers = _get(config, "num_hidden_layers", "n_layer")
    hidden = _get(config, "hidden_size", "n_embd")
    heads = _get(config, "num_attention_heads", "n_head")
    head_dim = _get(config, "head_dim", default=hidden // heads)
    n = matmul_parameters(config)
    head = config.vocab_size * hidden
    n = n - head + lm_head_fraction * head
    return 6.0 * n + 12.0 * layers * heads * head_dim * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak FLOP/s."""
    if peak <= 0:
        raise ValueError("peak FLOP/s must be positive")
    return tokens_per_s * flops_per_token / peak


# --- device peaks -----------------------------------------------------------------------------


def lookup_peak_flops(device_name: str, dtype) -> float | None:
    """The table's peak for a CUDA device name (torch.cuda.get_device_name), or None if unknown."""
    name = device_name.lower()
    for key, peaks in PEAK_FLOPS.items():
        if key.lower() in name:
            return peaks[dtype_name(dtype)]
    return None


@functools.lru_cache(maxsize=None)
def _measure(dtype: str, size: int, repeats: int, device: str) -> float:
    import torch

    torch_dtype = _torch_dtype(dtype)
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm-up: kernel selection, page faults, clocks
        torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def measure_matmul_peak(dtype="fp32", size: int = 1024, repeats: int = 10, device: str = "cpu") -> float:
    """FLOP/s of the fastest of `repeats` square `size` x `size` matmuls in `dtype` on `device`
    (2·size³ FLOPs each, after two warm-up products). Cached per process and arguments.

    The fastest, not the median: other work on the machine only ever slows a run down, so the best
    time is the closest to what the hardware can do.
    """
    return _measure(dtype_name(dtype), int(size), int(repeats), str(device))


def device_peak_flops(device_name: str | None, dtype, override: float | None = None) -> float:
    """Peak FLOP/s to divide by for MFU.

    `override` wins. A CUDA device name found in PEAK_FLOPS gives the data-sheet figure for `dtype`.
    CPU (name None, '' or starting with 'cpu') gives the measured matmul peak in `dtype` (fp32 for
    cdb's CPU scales). An unknown GPU is measured too (bf16 at 8192, fp32 at 4096).
    """
    if override is not None:
        return float(override)
    if not device_name or device_name.lower().startswith("cpu"):
        return measure_matmul_peak(dtype, size=1024, repeats=10, device="cpu")
    found = lookup_peak_flops(device_name, dtype)
    if found is not None:
        return found
    size = 4096 if dtype_name(dtype) == "fp32" else 8192
    return measure_matmul_peak(dtype, size=size, repeats=20, device="cuda")


# --- memory -----------------------------------------------------------------------------------


def gpu_memory_bytes() -> int:
    """Memory of this process's first GPU (what a Ray task with one GPU reports of its node's GPUs)."""
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def peak_memory_bytes(device=None) -> int:
    """Peak memory of this process on `device`: torch.cuda.max_memory_allocated on a CUDA device,
    the process's peak resident set size (getrusage ru_maxrss) otherwise. The RSS includes the
    Python/torch runtime; subtract a baseline (`current_rss_bytes` before the model) for the
    model's share."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
    # The kernel updates its high-water mark lazily; never report less than what is resident now.
    return max(peak, _statm_rss())


def _statm_rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; the peak where /proc is missing)."""
    return _statm_rss() or peak_memory_bytes()
