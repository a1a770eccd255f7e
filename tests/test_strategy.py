"""The DeepSpeed strategy under real ZeRO-3 with 2 gloo processes (torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, free_port

pytestmark = pytest.mark.integration  # torchrun: two DeepSpeed ranks


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("zero3")
    out = work / "result.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(REPO / "tests" / "dist_zero3.py"), str(out), str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text()), work


def test_weights_are_partitioned_across_ranks(zero3_run):
    result, _ = zero3_run
    assert result["world"] == 2
    for shard in result["partition"]:
        # Outside a forward pass a ZeRO-3 parameter holds nothing; each rank keeps half of it.
        assert shard["embed_numel_outside_forward"] == 0
        assert shard["embed_shard"] == -(-shard["embed_full"] // 2)
        assert shard["local"] < 0.6 * shard["total"]
    assert sum(s["local"] for s in result["partition"]) >= result["partition"][0]["total"]


def test_loss_falls_on_a_fixed_batch(zero3_run):
    losses = zero3_run[0]["losses"]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


def test_checkpoint_round_trip_restores_weights_and_state(zero3_run):
    result, _ = zero3_run
    assert result["client_step"] == 12
    assert result["max_weight_diff_after_load"] == 0.0
    # Same weights, optimizer state and schedule: the next step gives the same loss.
    assert result["loss_after_load"] == pytest.approx(result["loss_after_save"], rel=1e-6, abs=1e-6)


def test_export_is_a_loadable_hf_model_with_its_head(zero3_run):
    _, work = zero3_run
    model_dir = work / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "contrast_head.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("The council said", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert not [p for p in Path(work).iterdir() if p.name.startswith(".model")]  # no staging left behind


def test_dpo_reference_is_a_frozen_sharded_engine(zero3_run):
    dpo = zero3_run[0]["dpo"]
    assert dpo["reference_sharded"]  # its own ZeRO-3 engine, partitioned like the policy
    assert dpo["policy_started_as_reference"] == 0.0
    assert dpo["losses"][0] == pytest.approx(0.6931, abs=1e-3)  # log 2 while policy == reference
    assert dpo["policy_max_change"] > 0.0
    assert dpo["reference_max_change"] == 0.0  # the reference never moves


def test_trainer_stops_on_request_and_resumes_without_gaps(zero3_run):
    """cdb.worker.run_worker without Ray: checkpoint cadence, a stop request, a resume, one metric per step."""
    trainer = zero3_run[0]["trainer"]
    assert trainer["stopped"] is True and trainer["exported_after_stop"] is False  # stopped runs export nothing
    assert trainer["resumed_stopped"] is False and trainer["exported"]
    # every 2 steps, the stop at step 3, the last step: each checkpoint once per rank
    assert trainer["checkpoints"] == [2, 3, 4]
    assert trainer["logged_steps"] == [1, 2, 3, 4]  # the resumed run logs no step twice and skips none
    assert trainer["validated_steps"] == [3, 4]  # held-out sources scored at the stop and the last step, over 2 ranks


def test_a_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(zero3_run):
    """4 steps stopped after 3 and resumed from that checkpoint against the same 4 steps straight: the
    data order, weights, optimizer state, schedule and RNG come back exactly, so every loss and every
    exported tensor is the same bit for bit."""
    trainer = zero3_run[0]["trainer"]
    assert len(trainer["losses"]) == 4
    assert trainer["losses"] == trainer["straight_losses"]  # exact float equality, not approx
    assert trainer["weights_equal_straight"] == {"contrast_head.safetensors": True, "model.safetensors": True}


def test_deepspeeds_op_load_line_is_dropped_and_the_rest_kept(capsys):
    from cdb.strategy import quiet_op_loads

    with quiet_op_loads():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("a warning of its own")
        print("no newline", end="")
    assert capsys.readouterr().out == "a warning of its own\nno newline"
