"""Baselines through the same trainer: their losses against hand-worked values, CDA swaps, and a
tiny Ray Train run of each method."""

import math
import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from cdb.data.cda import counterfactual_records, swap_terms
from cdb.data.records import Negative, Record
from cdb.objective import dpo_loss, preference_pairs, sequence_logprobs, unlikelihood_loss
from conftest import REPO


def test_unlikelihood_on_a_three_token_example():
    # Vocabulary of 3; logits chosen so the softmax is easy: [0, 0, ln 2] -> p = [1/4, 1/4, 1/2].
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]] * 3)
    targets = torch.tensor([0, 2, 1])
    # -[log(1 - 1/4) + log(1 - 1/2) + log(1 - 1/4)] / 3
    expected = -(math.log(0.75) + math.log(0.5) + math.log(0.75)) / 3
    assert unlikelihood_loss(logits, targets, 3).item() == pytest.approx(expected, rel=1e-6)
    assert unlikelihood_loss(logits[:0], targets[:0], 0).item() == 0.0


def test_sequence_logprobs_sums_each_rows_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    targets = torch.tensor([0, 1, 1])
    rows = torch.tensor([0, 0, 1])
    out = sequence_logprobs(logits, targets, rows, 3)
    assert out.tolist() == pytest.approx([math.log(0.5) + math.log(0.75), math.log(0.1), 0.0], rel=1e-6)


def test_preference_pairs_stay_within_a_source():
    group = torch.tensor([0, 0, 0, 1, 1])
    positive = torch.tensor([True, True, False, True, False])
    chosen, rejected = preference_pairs(group, positive)
    assert sorted(zip(chosen.tolist(), rejected.tolist())) == [(0, 2), (1, 2), (3, 4)]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_from_log_ratios(beta):
    policy_c, policy_r = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -1.5])
    ref_c, ref_r = torch.tensor([-2.5, -1.0]), torch.tensor([-2.0, -2.0])
    # chosen log-ratios [0.5, 0.0], rejected [-1.0, 0.5] -> margins [1.5, -0.5]
    expected = -(math.log(1 / (1 + math.exp(-beta * 1.5))) + math.log(1 / (1 + math.exp(beta * 0.5)))) / 2
    loss, reward_c, reward_r = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert reward_c.tolist() == pytest.approx([beta * 0.5, 0.0])
    assert reward_r.tolist() == pytest.approx([-beta * 1.0, beta * 0.5])


def test_cda_swaps_each_attribute_and_keeps_both_versions():
    assert swap_terms("He thanked his mother and her son.", "gender") == "She thanked her father and his daughter."
    assert swap_terms("The Church stood beside a mosque.", "religion") == "The Mosque stood beside a synagogue."
    assert swap_terms("Black and white photos from Africa.", "race") == "White and asian photos from Europe."
    assert swap_terms("The chemist measured the catalyst.", "gender") == "The chemist measured the catalyst."
    record = Record("r1", "He met the priest.", ("He met a priest.", "A priest met him."), (Negative("x", "toxic"),))
    out = counterfactual_records([record])
    assert [r.id for r in out] == ["r1", "r1~cda-gender", "r1~cda-religion"]
    assert out[1].positives == ("She met a priest.", "A priest met her.")
    assert out[2].source == "He met the imam."


@pytest.mark.parametrize("method", ["sft", "dpo", "unlikelihood", "cda"])
def test_each_method_trains_and_is_tagged(tmp_path, method):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "cdb.train", "--method", method, "--max-steps", "5", "--output-dir",
                           str(tmp_path / "run"), "--tracking-uri", uri, "--set", "data.max_records=40"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("cdb").experiment_id])[0]
    assert run.data.tags["cdb.method"] == method and run.data.params["objective.method"] == method
    expected = {"sft": ["train/loss_ce"], "cda": ["train/loss_ce"], "unlikelihood": ["train/loss_ce", "train/loss_unlikelihood"],
                "dpo": ["train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                        "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected"]}[method]
    for name in ["train/loss", *expected]:
        assert len(client.get_metric_history(run.info.run_id, name)) == 5, name
    assert "train/loss_contrast" not in run.data.metrics
    assert not (tmp_path / "run" / "model" / "contrast_head.safetensors").exists()
    if method == "dpo":  # starts at log 2 (policy == reference) and moves
        losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] != losses[0]
