"""The losses of cdb's training methods as pure tensor functions (plus the small contrast head).

Formulas follow the method (docs/METHOD.md, "The objective"): contrast computation (ContrastHead,
pooling_mask, pool_representations, contrastive_loss), the LM loss (lm_loss), dynamic loss scaling
(dynamic_scales, combine_losses), and the baselines' terms (unlikelihood_loss, dpo_loss over
sequence_logprobs of preference_pairs). Each method of cdb.methods composes them into its objective.
similarity_stats is a logging aid. No I/O here.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLING_MODES = ("entity_or_last", "entity_or_target_mean", "target_mean", "last")
SCALING_SCHEMES = ("constant", "ne_density")
HEAD_INITS = ("default", "authors")


class _Linear(nn.Linear):
    """nn.Linear whose weights start normal with std `std` and biases at zero (torch's init when
    `std` is None). The init runs inside nn.Linear's constructor, before ZeRO-3's zero.Init
    partitions the parameters, so it needs no gather."""

    def __init__(self, in_features: int, out_features: int, std: float | None) -> None:
        self.std = std  # read by reset_parameters, which nn.Linear.__init__ calls
        super().__init__(in_features, out_features)

    def reset_parameters(self) -> None:
        if self.std is None:
            super().reset_parameters()
            return
        nn.init.normal_(self.weight, mean=0.0, std=self.std)
        nn.init.zeros_(self.bias)


class ContrastHead(nn.Module):
    """z = normalize(W2 gelu(W1 h)); W1: H->H (`dense`), W2: H->P (`proj`), P = H by default.

    `init`: `default` is torch's Linear init (uniform); `authors` draws W1 from N(0, 0.01^2) and W2
    from N(0, (1/H)^2), biases zero.
    """

    def __init__(self, hidden_size: int, projection_dim: int | None = None, init: str = "default") -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"unknown head init {init!r}; valid: {', '.join(HEAD_INITS)}")
        authors = init == "authors"
        out_dim = projection_dim or hidden_size  # None or 0 -> H
        self.dense = _Linear(hidden_size, hidden_size, 0.01 if authors else None)
        self.proj = _Linear(hidden_size, out_dim, 1.0 / hidden_size if authors else None)

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.proj(F.gelu(self.dense(h))), dim=-1)


def _last_token_mask(target_mask: Tensor) -> Tensor:
    # Highest index where target_mask is true; rows without targets stay all-False
    # (their position is -1, which matches no index).
    idx = torch.arange(target_mask.shape[-1], device=target_mask.device)
    last = torch.where(target_mask, idx, -1).max(dim=-1, keepdim=True).values
    return idx == last


def pooling_mask(entity_mask: Tensor, target_mask: Tensor, mode: str) -> Tensor:
    """Float [N,T] mask of the tokens each row's representation is pooled over."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; valid: {', '.join(POOLING_MODES)}")
    entity_mask, target_mask = entity_mask.bool(), target_mask.bool()
    fallback = target_mask if mode.endswith("target_mean") else _last_token_mask(target_mask)
    if mode.startswith("entity_or_"):
        # Entity tokens where the row has any; otherwise the named fallback.
        has_entity = entity_mask.any(dim=-1, keepdim=True)
        fallback = torch.where(has_entity, entity_mask, fallback)
    return fallback.float()


def pool_representations(z: Tensor, mask: Tensor) -> Tensor:
    """r_i = normalize(mean of row i's z over the tokens `mask` selects); a row with none gives zero.

    `z` [K,P] holds the head's output at the `mask.nonzero()` positions only, in that order (the model
    runs the head on those K tokens, not on all N*T), so the pooled mean is a per-row sum over them.
    """
    rows = mask.bool().nonzero(as_tuple=True)[0]
    n_rows = mask.shape[0]
    sums = z.new_zeros(n_rows, z.shape[-1]).index_add(0, rows, z)
    counts = torch.bincount(rows, minlength=n_rows).to(z.dtype).clamp_min(1.0)
    return F.normalize(sums / counts.unsqueeze(-1), dim=-1)


def contrastive_loss(reps: Tensor, group: Tensor, positive: Tensor, tau: float = 1.0) -> Tensor:
    """Group-wise InfoNCE over positive pairs, similarities divided by the temperature `tau`; one mean
    over every (i, j) positive pair of the batch."""
    n = reps.shape[0]
    positive = positive.bool()
    sim = reps @ reps.T / tau
    eye = torch.eye(n, dtype=torch.bool, device=reps.device)
    same_group = group.unsqueeze(0) == group.unsqueeze(1)
    others = same_group & ~eye  # denominator: every other row of the same source, never across groups
    pairs = others & positive.unsqueeze(0) & positive.unsqueeze(1)

    logits = sim.masked_fill(~others, float("-inf"))
    # A row alone in its group would be all -inf -> NaN logsumexp and NaN grads; such rows anchor
    # no pair, so give them harmless finite logits.
    logits = torch.where(others.any(dim=1, keepdim=True), logits, torch.zeros_like(logits))
    log_prob = sim - torch.logsumexp(logits, dim=1, keepdim=True)

    # No pair at all -> numerator is an exact 0 (still attached to reps) and the count clamps to 1.
    n_pairs = pairs.sum().clamp_min(1)
    return torch.where(pairs, -log_prob, torch.zeros_like(log_prob)).sum() / n_pairs


def lm_loss(
    logits: Tensor, targets: Tensor, normaliser: float | Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Summed token cross-entropy over the scored positions, divided by max(normaliser, 1)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps a gradient path
    total = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=label_smoothing)
    denom = torch.as_tensor(normaliser, dtype=total.dtype, device=total.device).clamp_min(1.0)
    return total / denom


def dynamic_scales(
    has_toxic: bool | Tensor,
    entity_density: float | Tensor,
    scheme: str,
    toxic_weight: float = 1.5,
) -> dict[str, Tensor]:
    """c_ce, c_cl and w_tox as 0-d float tensors ("Dynamic loss scaling")."""
    if scheme not in SCALING_SCHEMES:
        raise ValueError(f"unknown scaling scheme {scheme!r}; valid: {', '.join(SCALING_SCHEMES)}")
    device = next((x.device for x in (entity_density, has_toxic) if isinstance(x, Tensor)), None)
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
    w_tox = torch.where(as_t(has_toxic).bool(), as_t(toxic_weight), as_t(1.0))
    if scheme == "constant":
        c_ce, c_cl = as_t(1.0), as_t(1.0)
    else:
        # The authors' entity-density scheme: c_cl saturates at 0.9 once rho_NE >= 2%.
        c_ce = as_t(0.1)
        c_cl = (0.9 * 50 * as_t(entity_density)).clamp_max(0.9)
    return {"c_ce": c_ce, "c_cl": c_cl, "w_tox": w_tox}


def combine_losses(loss_ce: Tensor, loss_cl: Tensor, scales: dict[str, Tensor], alpha: float) -> Tensor:
    """L = c_ce * L_CE + alpha * c_cl * w_tox * L_CL."""
    dev = loss_ce.device
    c_ce, c_cl, w_tox = (torch.as_tensor(scales[k], device=dev) for k in ("c_ce", "c_cl", "w_tox"))
    return c_ce * loss_ce + alpha * c_cl * w_tox * loss_cl


@torch.no_grad()
def similarity_stats(reps: Tensor, group: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """(mean cosine of same-group positive pairs i != j, mean cosine of same-group positive-negative pairs)."""
    positive = positive.bool()
    r = F.normalize(reps.float(), dim=-1)
    cos = r @ r.T
    eye = torch.eye(r.shape[0], dtype=torch.bool, device=r.device)
    same_group = group.unsqueeze(0) == group.unsqueeze(1)
    pos_pos = same_group & ~eye & positive.unsqueeze(1) & positive.unsqueeze(0)
    pos_neg = same_group & positive.unsqueeze(1) & ~positive.unsqueeze(0)

    def masked_mean(m: Tensor) -> Tensor:
        return (cos * m).sum() / m.sum().clamp_min(1)  # 0.0 when there are no pairs

    return masked_mean(pos_pos), masked_mean(pos_neg)


def score_positions(labels: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(mask [N,T] of positions whose next token is scored, in `rows` only; their targets [M]).

    Logits at position t predict token t+1, so the mask is the label mask shifted left by one.
    """
    next_scored = torch.zeros_like(labels, dtype=torch.bool)
    next_scored[:, :-1] = labels[:, 1:] != -100
    mask = next_scored & rows.bool().unsqueeze(1)
    targets = labels[:, 1:][mask[:, :-1]]
    return mask, targets


def last_positive_rows(group: Tensor, positive: Tensor) -> Tensor:
    """Bool [N]: the last positive row of each source (rows keep the record's order of positives)."""
    positive = positive.bool()
    idx = torch.arange(positive.shape[0], device=positive.device)
    later_positive = (group.unsqueeze(0) == group.unsqueeze(1)) & positive.unsqueeze(0) & (idx.unsqueeze(0) > idx.unsqueeze(1))
    return positive & ~later_positive.any(dim=1)


# --- baselines through the same trainer (README, "Methods") ------------------------------------


def unlikelihood_loss(logits: Tensor, targets: Tensor, normaliser: float | Tensor) -> Tensor:
    """-sum_t log(1 - p(y_t | y_<t)) over the given tokens, divided by max(normaliser, 1).

    The tokens are every target token of the negative candidates, each at its own position: Welleck
    et al.'s (2020) sequence-level unlikelihood (candidates = the tokens of a penalised sequence),
    with the penalised sequences given (the negatives) instead of decoded from the model.
    log(1 - p_y) = logsumexp(logits without y) - logsumexp(logits): exact and finite with a live
    gradient as p_y -> 1, where log1p(-p) loses every digit and a clamp zeroes the gradient.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    others = logits.scatter(1, targets.unsqueeze(1), float("-inf"))
    log_not_target = torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1)
    total = -log_not_target.sum()
    return total / torch.as_tensor(normaliser, dtype=total.dtype, device=total.device).clamp_min(1.0)


def sequence_logprobs(logits: Tensor, targets: Tensor, row_of_token: Tensor, n_rows: int) -> Tensor:
    """Summed log-probability of each row's scored tokens: [n_rows]."""
    token_logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return torch.zeros(n_rows, dtype=token_logp.dtype, device=token_logp.device).index_add(0, row_of_token, token_logp)


def preference_pairs(group: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen row, rejected row) for every positive-negative pair of the same source."""
    positive = positive.bool()
    pairs = (group.unsqueeze(1) == group.unsqueeze(0)) & positive.unsqueeze(1) & ~positive.unsqueeze(0)
    chosen, rejected = pairs.nonzero(as_tuple=True)
    return chosen, rejected


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), mean over pairs.

    Returns (loss, chosen rewards, rejected rewards); rewards are beta * log-ratio, detached.
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if chosen_ratio.numel() == 0:
        return policy_chosen.sum() * 0.0, chosen_ratio.detach(), rejected_ratio.detach()
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
