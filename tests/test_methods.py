"""Baselines through the same trainer: their losses against hand-worked values, CDA swaps, and a
tiny Ray Train run of each method."""

import math

import pytest
import torch

from cdb.data.cda import counterfactual_records, swap_terms
from cdb.data.records import Negative, Record
from cdb.objective import dpo_loss, preference_pairs, sequence_logprobs, unlikelihood_loss


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


@pytest.mark.parametrize("text, expected", [
    ("He met her yesterday.", "She met him yesterday."),              # object "her" -> "him"
    ("She gave her book to him.", "He gave his book to her."),        # possessive "her" -> "his"
    ("I told her that her dog barked.", "I told him that his dog barked."),
    ("The book is hers, not his.", "The book is his, not hers."),     # "hers" -> "his", a lone "his" -> "hers"
    ("His car is red.", "Her car is red."),
    ("The chemist measured the catalyst.", "The chemist measured the catalyst."),
])
def test_cda_gender_resolves_her_his_hers_by_part_of_speech(text, expected):
    assert swap_terms(text, "gender") == expected


@pytest.mark.parametrize("text, attribute", [
    ("The White House said Black Friday sales rose.", "race"),       # multi-token entities
    ("Mr. Black met Mrs. White.", "race"),                           # names that are list words
    ("Mr. Black met Mrs. White.", "gender"),                         # a title inside a name run
])
def test_cda_never_rewrites_names(text, attribute):
    assert swap_terms(text, attribute) == text


def test_cda_generates_every_alternative_of_a_triple():
    text = "Christians met at the church beside the Bible shop."
    assert swap_terms(text, "religion", 1) == "Muslims met at the mosque beside the Quran shop."
    assert swap_terms(text, "religion", 2) == "Jews met at the synagogue beside the Torah shop."
    assert swap_terms("Black and white photos from Africa.", "race") == "White and asian photos from Europe."
    assert swap_terms("Black and white photos from Africa.", "race", 2) == "Asian and black photos from Asia."
    record = Record("r1", "The christian priest spoke.", ("A christian priest spoke.", "The priest spoke."),
                    (Negative("x", "toxic"),))
    out = counterfactual_records([record], ("religion",))
    assert [r.id for r in out] == ["r1", "r1~cda-religion-1", "r1~cda-religion-2"]
    assert [r.positives[0] for r in out] == ["A christian priest spoke.", "A muslim imam spoke.", "A jewish rabbi spoke."]


@pytest.mark.parametrize("attributes", [("gender",), ("race",), ("religion",), ("gender", "religion"),
                                        ("gender", "race", "religion")])
def test_cda_swaps_only_the_chosen_attributes(attributes):
    record = Record("r1", "He met the priest.", ("He met a black priest.", "A priest met him."), (Negative("x", "toxic"),))
    expected = {"gender": ["r1~cda-gender"], "race": ["r1~cda-race-1", "r1~cda-race-2"],
                "religion": ["r1~cda-religion-1", "r1~cda-religion-2"]}
    out = counterfactual_records([record], attributes)
    assert [r.id for r in out] == ["r1"] + [i for a in attributes for i in expected[a]]
    copies = {r.id: r for r in out}
    if "gender" in attributes:
        assert copies["r1~cda-gender"].positives == ("She met a black priest.", "A priest met her.")
    if "race" in attributes:
        assert copies["r1~cda-race-1"].positives[0] == "He met a white priest."
        assert copies["r1~cda-race-1"].source == "He met the priest."  # nothing to swap there
    if "religion" in attributes:
        assert copies["r1~cda-religion-2"].source == "He met the rabbi."
    assert out[0] is record


def test_cda_attributes_setting_is_checked():
    from cdb.config import ConfigError, resolve

    cda = "objective.method=cda"
    assert resolve(sets=[cda, "objective.cda.attributes=gender"]).objective.cda.attributes == ("gender",)
    for bad in ("gender,age", "gender,gender", "[]"):
        with pytest.raises(ConfigError, match="objective.cda.attributes: must be a non-empty list"):
            resolve(sets=[cda, f"objective.cda.attributes={bad}"])
    with pytest.raises(ConfigError, match="objective.cda.attributes: set, but objective.method is contrastive"):
        resolve(sets=["objective.cda.attributes=race"])


def test_a_methods_settings_are_refused_for_other_methods():
    from cdb.config import ConfigError, resolve

    config = resolve(sets=["objective.contrastive.lm_positives=last", "objective.contrastive.head_init=authors"])
    assert (config.objective.contrastive.lm_positives, config.objective.contrastive.head_init) == ("last", "authors")
    for key, value in (("contrastive.lm_positives", "last"), ("contrastive.head_init", "authors"), ("dpo.beta", "0.5"),
                       ("unlikelihood.weight", "2")):
        with pytest.raises(ConfigError, match=f"objective.{key}: set, but objective.method is sft"):
            resolve(sets=["objective.method=sft", f"objective.{key}={value}"])
