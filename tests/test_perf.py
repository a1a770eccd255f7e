"""cdb.perf: FLOPs arithmetic, MFU, device peaks, peak memory; bench/gpu.py --dry-run end to end.
No timing is asserted anywhere: the machine is shared."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

from cdb import perf
from cdb.model import tiny_llama_config


def test_flops_per_token_matches_a_hand_computation_for_the_tiny_llama():
    config = tiny_llama_config(4096)  # h 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, I 176, untied
    h, layers, kv, inter, vocab = 64, 2, 2 * 16, 176, 4096
    per_layer = (h * h) + 2 * (h * kv) + (h * h) + 3 * h * inter + 2 * h  # q, k, v, o, gate/up/down, 2 norms
    n = layers * per_layer + h + vocab * h  # + final norm + LM head (the input embedding is a lookup)
    assert n == 354_624
    assert perf.matmul_parameters(config) == n
    seq = 145
    assert perf.flops_per_token(config, seq) == 6 * n + 12 * layers * h * seq


def test_matmul_parameters_agree_with_the_model_built_on_meta():
    from transformers import AutoConfig, AutoModelForCausalLM

    for config in (tiny_llama_config(4096),
                   AutoConfig.for_model("llama", num_hidden_layers=3, hidden_size=96, intermediate_size=200,
                                        num_attention_heads=6, num_key_value_heads=2, vocab_size=1000,
                                        tie_word_embeddings=True, attention_bias=True)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight.numel()
        head = config.vocab_size * config.hidden_size
        expected = total - embed + (head if config.tie_word_embeddings else 0)
        assert perf.matmul_parameters(config) == expected
    # Non-Llama architectures are counted on the meta device: GPT-2 without wte/wpe, with its tied head.
    gpt2 = AutoConfig.for_model("gpt2")
    assert perf.matmul_parameters(gpt2) == 124_439_808 - 50257 * 768 - 1024 * 768 + 50257 * 768


def test_flops_per_token_is_six_n_when_the_context_is_short():
    from transformers import AutoConfig

    llama7b = AutoConfig.for_model("llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                   tie_word_embeddings=False)
    n = perf.matmul_parameters(llama7b)
    assert n == 6_738_415_616 - 32000 * 4096  # non-embedding + head
    assert perf.flops_per_token(llama7b, 128) == pytest.approx(6 * n, rel=0.02)
    assert perf.flops_per_token(llama7b, 1) == pytest.approx(6 * n, rel=1e-4)
    # Only the scored share of the head: less, by exactly the unscored part of 6 x V x H.
    assert perf.flops_per_token(llama7b, 128, lm_head_fraction=0.25) == pytest.approx(
        perf.flops_per_token(llama7b, 128) - 6 * 0.75 * 32000 * 4096)


def test_mfu_arithmetic():
    assert perf.mfu(1000.0, 1e9, 1e12) == pytest.approx(1.0)
    assert perf.mfu(500.0, 2e9, 4e12) == pytest.approx(0.25)
    assert perf.mfu(0.0, 1e9, 1e12) == 0.0
    with pytest.raises(ValueError):
        perf.mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize("name, dtype, expected", [
    ("NVIDIA H200", "bf16", 989e12),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),  # SXM
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("NVIDIA A100-PCIE-40GB", "fp16", 312e12),
    ("NVIDIA H200", "fp32", 67e12),
])
def test_peak_lookup_by_device_name(name, dtype, expected):
    assert perf.device_peak_flops(name, dtype) == expected
    assert perf.lookup_peak_flops(name, dtype) == expected


def test_peak_override_unknown_names_and_dtypes():
    assert perf.device_peak_flops("NVIDIA H200", "bf16", override=123.0) == 123.0
    assert perf.lookup_peak_flops("Some Future GPU", "bf16") is None
    assert perf.PEAK_FLOPS["H200"]["bf16"] == perf.PEAK_FLOPS["H100"]["bf16"] == 989e12
    with pytest.raises(ValueError):
        perf.dtype_name("int8")


def test_cpu_peak_is_measured_and_cached_per_process():
    first = perf.device_peak_flops("cpu", "fp32")
    hits = perf._measure.cache_info().hits
    assert first > 1e8  # any CPU of this century does > 0.1 GFLOP/s in fp32 matmul
    assert perf.device_peak_flops(None, torch.float32) == first
    assert perf._measure.cache_info().hits == hits + 1
    small = perf.measure_matmul_peak("fp32", size=64, repeats=2)
    assert small > 0


def test_peak_memory_on_cpu_is_the_process_peak_rss():
    now = perf.current_rss_bytes()
    peak = perf.peak_memory_bytes("cpu")
    assert peak == perf.peak_memory_bytes(None)
    assert peak >= now > 10 * 2 ** 20  # a Python process with torch holds more than 10 MiB
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    assert perf.peak_memory_bytes() >= perf.current_rss_bytes() >= block.numel() * 4


@pytest.mark.integration
def test_gpu_bench_dry_run_completes():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DS_ACCELERATOR", None)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    assert last.startswith("gpu (dry run, CPU): ") and "tokens/s, MFU" in last and "(target" in last
    assert "[gpu] peak memory" in proc.stdout and "cdb.memory:" in proc.stdout
