"""Tests for cdb.objective: expected values come from hand arithmetic or slow loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cdb.methods import ObjectiveConfig
from cdb.methods.contrastive import ContrastiveOptions
from cdb.methods.contrastive import objective as contrastive_objective
from cdb.objective import (
    ContrastHead,
    combine_losses,
    contrastive_loss,
    dynamic_scales,
    last_positive_rows,
    lm_loss,
    unlikelihood_loss,
    pool_representations,
    pooling_mask,
    similarity_stats,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def reference_contrastive(reps: list[list[float]], group: list[int], positive: list[bool], tau: float) -> float:
    """The docs/METHOD.md formula ("Contrastive loss"), written as explicit loops over ordered pairs."""
    n = len(reps)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    s = [[dot(reps[i], reps[j]) / tau for j in range(n)] for i in range(n)]
    terms = []
    for i in range(n):
        for j in range(n):
            if i == j or group[i] != group[j] or not (positive[i] and positive[j]):
                continue
            denom = sum(math.exp(s[i][k]) for k in range(n) if k != i and group[k] == group[i])
            terms.append(-math.log(math.exp(s[i][j]) / denom))
    return sum(terms) / len(terms) if terms else 0.0


def random_unit(n: int, dim: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- contrastive_loss

def test_contrastive_hand_case_tau1() -> None:
    # r0=(1,0)+, r1=(0,1)+, r2=(-1,0)-  -> s01=0, s02=-1, s12=0
    # (0,1): -log(e^0/(e^0+e^-1)) = log(1+e^-1) = 0.313262
    # (1,0): -log(e^0/(e^0+e^0))  = log 2       = 0.693147
    # mean = 0.503204
    reps = t([[1, 0], [0, 1], [-1, 0]])
    loss = contrastive_loss(reps, torch.tensor([0, 0, 0]), torch.tensor([True, True, False]))
    assert loss.item() == pytest.approx(0.5032044340, abs=1e-9)


def test_contrastive_hand_case_tau_half() -> None:
    # r0=(1,0)+, r1=(0.6,0.8)+, r2=(0,1)-, tau=0.5 -> s01=1.2, s02=0, s12=1.6
    # (0,1): log(e^1.2+e^0) - 1.2   = log(4.320117) - 1.2 = 0.263282
    # (1,0): log(e^1.2+e^1.6) - 1.2 = log(8.273149) - 1.2 = 0.913015
    # mean = 0.588149
    reps = t([[1, 0], [0.6, 0.8], [0, 1]])
    loss = contrastive_loss(reps, torch.tensor([0, 0, 0]), torch.tensor([True, True, False]), tau=0.5)
    assert loss.item() == pytest.approx(0.5881488599, abs=1e-9)


def test_contrastive_two_groups_matches_reference() -> None:
    # group 0: 2 positives + 1 negative; group 1: 3 positives + 1 negative (interleaved rows).
    reps = random_unit(7, seed=1)
    group = [0, 1, 0, 1, 1, 0, 1]
    positive = [True, True, True, False, True, False, True]
    got = contrastive_loss(reps, torch.tensor(group), torch.tensor(positive))
    want = reference_contrastive(reps.tolist(), group, positive, tau=1.0)
    assert got.item() == pytest.approx(want, abs=1e-10)
    # One mean over all 2 + 6 = 8 pairs, not a mean of per-group means.
    g0 = reference_contrastive(reps[[0, 2, 5]].tolist(), [0, 0, 0], [True, True, False], 1.0)
    g1 = reference_contrastive(reps[[1, 3, 4, 6]].tolist(), [1] * 4, [True, False, True, True], 1.0)
    assert got.item() == pytest.approx((2 * g0 + 6 * g1) / 8, abs=1e-10)


def test_contrastive_temperature_matches_reference() -> None:
    reps = random_unit(7, seed=2)
    group = [0, 0, 0, 1, 1, 1, 1]
    positive = [True, True, False, True, True, True, False]
    args = (reps, torch.tensor(group), torch.tensor(positive))
    at_1, at_half = contrastive_loss(*args, tau=1.0), contrastive_loss(*args, tau=0.5)
    assert at_half.item() == pytest.approx(reference_contrastive(reps.tolist(), group, positive, 0.5), abs=1e-10)
    assert at_1.item() == pytest.approx(reference_contrastive(reps.tolist(), group, positive, 1.0), abs=1e-10)
    assert at_half.item() != pytest.approx(at_1.item())


def test_contrastive_single_positive_group_adds_nothing() -> None:
    reps = random_unit(5, seed=3)
    group = torch.tensor([0, 0, 0, 1, 1])
    positive = torch.tensor([True, True, False, True, False])  # group 1 has one positive
    both = contrastive_loss(reps, group, positive)
    alone = contrastive_loss(reps[:3], group[:3], positive[:3])
    assert both.item() == pytest.approx(alone.item(), abs=1e-12)


def test_contrastive_other_groups_never_enter_denominator() -> None:
    reps = random_unit(6, seed=4)
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    positive = torch.tensor([True, True, False, True, True, False])
    base = contrastive_loss(reps, group, positive)
    # Swap group 1's vectors for copies of group 0's: any cross-group leak would change group 0's
    # denominators; the loss must move only by group 1's own (recomputed) term.
    perturbed = reps.clone()
    perturbed[3:] = reps[:3]
    g0 = reference_contrastive(reps[:3].tolist(), [0] * 3, [True, True, False], 1.0)
    g1_old = reference_contrastive(reps[3:].tolist(), [1] * 3, [True, True, False], 1.0)
    g1_new = reference_contrastive(perturbed[3:].tolist(), [1] * 3, [True, True, False], 1.0)
    assert base.item() == pytest.approx((2 * g0 + 2 * g1_old) / 4, abs=1e-10)
    assert contrastive_loss(perturbed, group, positive).item() == pytest.approx((2 * g0 + 2 * g1_new) / 4, abs=1e-10)
    # And gradients never cross groups: group 0's loss alone gives zero grad to group 1's rows.
    x = reps.clone().requires_grad_(True)
    positive_g0_only = torch.tensor([True, True, False, True, False, False])
    contrastive_loss(x, group, positive_g0_only).backward()
    assert torch.all(x.grad[3:] == 0) and torch.any(x.grad[:3] != 0)


def test_contrastive_all_negative_is_zero_with_finite_grads() -> None:
    x = random_unit(4, seed=5).requires_grad_(True)
    loss = contrastive_loss(x, torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)


def test_contrastive_gradient_finite_with_masked_rows() -> None:
    # A zero-vector row (all-zero pooling mask), a singleton group, and negatives.
    mask = torch.ones(5, 3)
    mask[2] = 0
    z = torch.randn(int(mask.sum()), 4, dtype=torch.float64, requires_grad=True)
    reps = pool_representations(z, mask)
    loss = contrastive_loss(reps, torch.tensor([0, 0, 0, 0, 1]), torch.tensor([True, True, True, False, True]), 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ---------------------------------------------------------------- pooling

def test_pool_representations_hand_case() -> None:
    # z holds the head's output at the mask's positions only, in row-major order.
    # row 0: mean of (3,0),(0,4) = (1.5,2), norm 2.5 -> (0.6,0.8).
    # row 1: only (-4,0) -> (-1,0).   row 2: empty mask -> (0,0), no NaN.
    mask = torch.tensor([[True, True, False], [False, False, True], [False, False, False]])
    z = t([[3, 0], [0, 4], [-4, 0]])
    r = pool_representations(z, mask)
    assert torch.allclose(r, t([[0.6, 0.8], [-1, 0], [0, 0]]), atol=1e-12)
    assert torch.allclose(pool_representations(z, mask.float()), r)


def test_pooling_the_selected_tokens_equals_the_masked_mean_over_all_tokens() -> None:
    z_all = torch.randn(6, 7, 5, dtype=torch.float64)
    mask = torch.rand(6, 7) < 0.4
    mask[3] = False
    dense = (mask.unsqueeze(-1) * z_all).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    assert torch.allclose(pool_representations(z_all[mask], mask), torch.nn.functional.normalize(dense, dim=-1))


ENTITY = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
TARGET = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [1, 0, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # rows 0 and 3 have entities; rows 1 and 2 fall back.
        ("entity_or_last", [[0, 0, 0, 1, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]),
        ("entity_or_target_mean", [[0, 0, 0, 1, 0], [0, 1, 1, 1, 0], [1, 0, 1, 0, 0], [0, 1, 1, 0, 0]]),
        ("target_mean", TARGET.int().tolist()),
        ("last", [[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]),
    ],
)
def test_pooling_mask_modes(mode: str, expected: list[list[int]]) -> None:
    m = pooling_mask(ENTITY, TARGET, mode)
    assert m.dtype == torch.float32
    assert m.tolist() == [[float(v) for v in row] for row in expected]


def test_pooling_mask_no_targets_and_unknown_mode() -> None:
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert pooling_mask(empty, empty, "entity_or_last").sum() == 0
    with pytest.raises(ValueError, match="entity_or_last"):
        pooling_mask(ENTITY, TARGET, "entity")


# ---------------------------------------------------------------- lm_loss

def test_lm_loss_matches_sum_over_normaliser() -> None:
    logits = torch.randn(6, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (6,))
    want = F.cross_entropy(logits, targets, reduction="sum") / 4
    assert torch.allclose(lm_loss(logits, targets, 4), want)
    assert torch.allclose(lm_loss(logits, targets, torch.tensor(4.0)), want)


def test_lm_loss_hand_case_with_label_smoothing() -> None:
    # logits (0, ln 3) -> p = (1/4, 3/4); target 1. -log p = (ln 4, ln 4/3).
    # eps = 0.1: (1-eps)*ln(4/3) + eps * (ln 4 + ln 4/3)/2 = 0.9*0.287682 + 0.1*0.836988 = 0.342613
    logits = t([[0.0, math.log(3.0)]])
    want = 0.9 * math.log(4 / 3) + 0.1 * (math.log(4) + math.log(4 / 3)) / 2
    assert lm_loss(logits, torch.tensor([1]), 1, label_smoothing=0.1).item() == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.342613, abs=1e-6)


def test_lm_loss_normaliser_clamps_and_empty() -> None:
    logits = torch.randn(3, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2])
    assert torch.allclose(lm_loss(logits, targets, 0), lm_loss(logits, targets, 1))
    assert torch.allclose(lm_loss(logits, targets, torch.tensor(0.2)), lm_loss(logits, targets, 1))
    empty = torch.zeros(0, 5, requires_grad=True)
    loss = lm_loss(empty, torch.zeros(0, dtype=torch.long), 0)
    assert loss.item() == 0.0
    loss.backward()
    assert empty.grad is not None


# ---------------------------------------------------------------- scaling

def test_dynamic_scales_constant() -> None:
    s = dynamic_scales(False, 0.3, "constant")
    assert {k: v.item() for k, v in s.items()} == {"c_ce": 1.0, "c_cl": 1.0, "w_tox": 1.0}
    assert all(v.dim() == 0 and v.is_floating_point() for v in s.values())
    assert dynamic_scales(True, 0.3, "constant")["w_tox"].item() == 1.5
    assert dynamic_scales(torch.tensor(True), 0.3, "constant", toxic_weight=2.0)["w_tox"].item() == 2.0


def test_dynamic_scales_ne_density() -> None:
    s = dynamic_scales(True, 0.05, "ne_density")  # 0.9*50*0.05 = 2.25 -> saturates at 0.9
    assert s["c_cl"].item() == pytest.approx(0.9)
    assert s["c_ce"].item() == pytest.approx(0.1)
    assert s["w_tox"].item() == 1.5
    assert dynamic_scales(False, 0.01, "ne_density")["c_cl"].item() == pytest.approx(0.45)  # 0.9*50*0.01
    assert dynamic_scales(False, torch.tensor(0.0), "ne_density")["c_cl"].item() == 0.0
    with pytest.raises(ValueError, match="ne_density"):
        dynamic_scales(False, 0.1, "linear")


def test_combine_losses_arithmetic() -> None:
    # 0.1*2.0 + 16*0.45*1.5*0.5 = 0.2 + 5.4 = 5.6
    scales = dynamic_scales(True, 0.01, "ne_density")
    ce = torch.tensor(2.0, requires_grad=True)
    cl = torch.tensor(0.5, requires_grad=True)
    total = combine_losses(ce, cl, scales, alpha=16)
    assert total.item() == pytest.approx(5.6, rel=1e-6)
    total.backward()
    assert ce.grad.item() == pytest.approx(0.1) and cl.grad.item() == pytest.approx(16 * 0.45 * 1.5)


# ---------------------------------------------------------------- head and logging stats

def test_contrast_head_shapes_norm_and_grads() -> None:
    head = ContrastHead(8, projection_dim=3)
    assert head.dense.weight.shape == (8, 8) and head.proj.weight.shape == (3, 8)
    assert ContrastHead(8, 0).proj.out_features == 8 and ContrastHead(8).proj.out_features == 8
    z = head(torch.randn(2, 5, 8))
    assert z.shape == (2, 5, 3)
    assert torch.allclose(z.norm(dim=-1), torch.ones(2, 5), atol=1e-6)
    (z[..., 0].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_similarity_stats_hand_case() -> None:
    # group 0: r0=(1,0)+, r1=(0.6,0.8)+, r2=(0,1)-;  group 1: r3=(1,0)+, r4=(-1,0)-
    # pos-pos (same group, ordered): (0,1),(1,0) -> cos 0.6 each -> 0.6   (cross-group (0,3)=1 ignored)
    # pos-neg: (0,2)=0, (1,2)=0.8, (3,4)=-1 -> -0.2/3
    reps = t([[1, 0], [0.6, 0.8], [0, 1], [1, 0], [-1, 0]]).requires_grad_(True)
    pp, pn = similarity_stats(reps, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([True, True, False, True, False]))
    assert pp.item() == pytest.approx(0.6) and pn.item() == pytest.approx(-0.2 / 3)
    assert not pp.requires_grad


def test_similarity_stats_no_pairs_is_zero() -> None:
    reps = random_unit(3, seed=6)
    pp, pn = similarity_stats(reps, torch.tensor([0, 1, 2]), torch.tensor([True, True, True]))
    assert pp.item() == 0.0 and pn.item() == 0.0


def test_contrast_head_authors_init_is_normal_with_zero_bias() -> None:
    torch.manual_seed(0)
    hidden = 200
    head = ContrastHead(hidden, init="authors")
    assert head.dense.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert head.proj.weight.std().item() == pytest.approx(1 / hidden, rel=0.02)
    assert head.dense.weight.mean().abs().item() < 1e-3
    assert head.dense.bias.abs().sum().item() == 0.0 and head.proj.bias.abs().sum().item() == 0.0
    default = ContrastHead(hidden)  # torch's uniform init: bound 1/sqrt(H), biases non-zero
    assert default.dense.weight.abs().max().item() <= 1 / math.sqrt(hidden) + 1e-6
    assert default.dense.weight.std().item() > 0.03 and default.dense.bias.abs().sum().item() > 0
    with pytest.raises(ValueError, match="head init"):
        ContrastHead(8, init="xavier")


# ---------------------------------------------------------------- unlikelihood

def test_unlikelihood_matches_closed_form() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 11, dtype=torch.float64) * 3
    targets = torch.randint(0, 11, (6,))
    p = torch.softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    expected = -torch.log1p(-p).sum() / 4
    assert unlikelihood_loss(logits, targets, 4).item() == pytest.approx(expected.item(), rel=1e-5)  # computed in fp32


def test_unlikelihood_gradient_is_finite_and_alive_where_p_is_near_one() -> None:
    # p(target) = 1 / (1 + 9 e^-30) ~ 1 - 8.4e-13: 1 - p underflows any clamp at 1e-5.
    logits = torch.zeros(1, 10)
    logits[0, 3] = 30.0
    logits.requires_grad_(True)
    loss = unlikelihood_loss(logits, torch.tensor([3]), 1)
    expected = -(math.log(9) - 30.0 - math.log1p(9 * math.exp(-30.0)))  # -log(1 - p), p = e^30 / (e^30 + 9)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # d(-log(1-p))/d logit_target = 1/(1-p) * p(1-p) = p ~ 1: descent pushes the target down.
    assert logits.grad[0, 3].item() == pytest.approx(1.0, rel=1e-4)
    assert (logits.grad[0, [0, 1, 2, 4]] < 0).all()


# ---------------------------------------------------------------- which positives the LM loss scores

def test_last_positive_rows_per_source() -> None:
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    positive = torch.tensor([True, True, False, True, False, True, False])
    assert last_positive_rows(group, positive).tolist() == [False, True, False, False, False, True, False]


def _lm_case():
    """Two sources: rows 0,1 positive + 2 negative (source 0); rows 3,4 positive + 5 negative (source 1)."""
    torch.manual_seed(2)
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    positive = torch.tensor([True, True, False, True, True, False])
    target_rows = torch.tensor([0, 0, 1, 1, 1, 3, 4, 4])  # scored tokens of the positive rows
    logits = torch.randn(8, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (8,))
    target_mask = torch.zeros(6, 5, dtype=torch.bool)
    target_mask[:, :3] = True  # 3 target tokens per row: 18 in all
    batch = {"group": group, "positive": positive, "target_mask": target_mask,
             "entity_mask": torch.zeros(6, 5, dtype=torch.bool), "attention_mask": torch.ones(6, 5),
             "has_toxic": torch.tensor(False)}
    outputs = {"logits": logits, "targets": targets, "target_rows": target_rows,
               "z": torch.randn(6, 4, dtype=torch.float64), "pool_mask": torch.eye(6, 5)}
    outputs["pool_mask"][5, 4] = 1.0
    return outputs, batch


@pytest.mark.parametrize("normalization", ["scored", "all_targets"])
def test_lm_positives_last_scores_only_each_sources_last_positive(normalization) -> None:
    outputs, batch = _lm_case()
    token_nll = F.cross_entropy(outputs["logits"], outputs["targets"], reduction="none")
    last = torch.tensor([False, False, True, True, True, False, True, True])  # tokens of rows 1 and 4
    for positives, kept in (("all", torch.ones(8, dtype=torch.bool)), ("last", last)):
        cfg = ObjectiveConfig(contrastive=ContrastiveOptions(lm_positives=positives, lm_normalization=normalization))
        _, metrics = contrastive_objective(outputs, batch, cfg)
        denominator = int(kept.sum()) if normalization == "scored" else 18
        assert metrics["loss_ce"].item() == pytest.approx(token_nll[kept].sum().item() / denominator, rel=1e-6)


def test_dpo_logs_trl_names_one_per_quantity():
    from types import SimpleNamespace

    from cdb.methods.dpo import DPOOptions
    from cdb.methods.dpo import objective as dpo_objective
    from cdb.objective import sequence_logprobs

    torch.manual_seed(0)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])  # two tokens on each of 3 rows: a positive and two negatives of one source
    targets = torch.randint(0, 7, (6,))
    logits, ref_logits = torch.randn(6, 7), torch.randn(6, 7)
    batch = {"positive": torch.tensor([True, False, False]), "group": torch.tensor([0, 0, 0])}
    outputs = {"logits": logits, "ref_logits": ref_logits, "targets": targets, "target_rows": rows}
    _, metrics = dpo_objective(outputs, batch, SimpleNamespace(dpo=DPOOptions(beta=0.5)))
    assert set(metrics) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                            "logps/chosen", "logps/rejected"}
    policy = sequence_logprobs(logits, targets, rows, 3)
    reference = sequence_logprobs(ref_logits, targets, rows, 3)
    assert float(metrics["logps/chosen"]) == pytest.approx(float(policy[0]))
    assert float(metrics["logps/rejected"]) == pytest.approx(float(policy[1:].mean()))
    rewards = 0.5 * (policy - reference)
    assert float(metrics["rewards/margins"]) == pytest.approx(float((rewards[0] - rewards[1:]).mean()), abs=1e-6)
    assert float(metrics["rewards/accuracies"]) == float((rewards[0] > rewards[1:]).float().mean())
