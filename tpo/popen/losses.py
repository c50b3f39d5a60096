"""POPEN's preference losses, model-independent: per-token log-probs, the textual DPO loss L_t
and the segmentation-embedding preference loss L_s (see docs/popen.md).

L_t is DPO restricted to the edited tokens: the caller sums `token_logps` over the edited
positions (`masked_logp_sum`) for the policy and the reference, then calls `dpo_loss` with the
corrected response y_c as "chosen" and the model's response y as "rejected". `dpo_loss`
follows the definitions of TRL's DPOTrainer (loss types "sigmoid", "ipo", "robust").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")
SIMILARITIES = ("l2", "cosine")


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-prob `[b, s]` (float32) of `labels [b, s]` under `logits [b, s, V]` with the causal
    shift: entry t is log softmax(logits[:, t-1])[labels[:, t]]. Position 0 and positions whose
    label is -100 are 0. Only one float32 `[b, s-1, V]` tensor is made (log_softmax with
    dtype=float32 on the shifted view, then gather)."""
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logps: expected logits [b, s, V] and labels [b, s], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    out = logits.new_zeros(labels.shape, dtype=torch.float32)
    if labels.shape[1] < 2:
        return out
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1], dim=-1, dtype=torch.float32)
    picked = logp.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
    out[:, 1:] = torch.where(valid, picked, 0.0)
    return out


def masked_logp_sum(token_logps: Tensor, mask: Tensor) -> Tensor:
    """`[b]` sum of `token_logps [b, s]` over the positions where `mask [b, s]` (bool) is True;
    masked-out entries never contribute (not even a NaN or inf)."""
    if token_logps.shape != mask.shape:
        raise ValueError(
            f"masked_logp_sum: token_logps {tuple(token_logps.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape [b, s]"
        )
    return torch.where(mask.bool(), token_logps, 0.0).sum(-1)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO loss `[b]` and the detached rewards `[b]` of chosen and rejected, from summed
    log-probs `[b]` of the policy and the frozen reference (chosen = the corrected response
    y_c, rejected = the model's response y).

    With z = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected), as in TRL:
      "sigmoid": -(1 - ls) log sigmoid(beta z) - ls log sigmoid(-beta z) (conservative DPO;
        ls = label_smoothing = 0 is plain DPO);
      "ipo": (z - 1 / (2 beta))^2 (label_smoothing must be 0);
      "robust": (-(1 - ls) log sigmoid(beta z) + ls log sigmoid(-beta z)) / (1 - 2 ls).
    Rewards: beta * (policy - ref), detached. Computed in float32.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss: loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("dpo_loss: loss_type 'ipo' takes no label_smoothing (got a nonzero one)")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"dpo_loss: the four log-prob tensors must share one shape, got {shapes}")
    pc, pr, rc, rr = (t.float() for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    z = (pc - pr) - (rc - rr)
    ls = label_smoothing
    if loss_type == "sigmoid":
        loss = -(1 - ls) * F.logsigmoid(beta * z) - ls * F.logsigmoid(-beta * z)
    elif loss_type == "robust":
        loss = (-(1 - ls) * F.logsigmoid(beta * z) + ls * F.logsigmoid(-beta * z)) / (1 - 2 * ls)
    else:
        loss = (z - 1 / (2 * beta)) ** 2
    chosen_reward = (beta * (pc - rc)).detach()
    rejected_reward = (beta * (pr - rr)).detach()
    return loss, chosen_reward, rejected_reward


def embedding_similarity(
    a: Tensor, b: Tensor, *, similarity: str = "l2", scale_by_dim: bool = False
) -> Tensor:
    """Row-wise similarity `[n]` of `a, b [n, d]`: "l2" = -||a - b||^2 (divided by d when
    `scale_by_dim`, i.e. minus the mean squared difference), "cosine" = cosine similarity."""
    if similarity == "l2":
        sim = -(a - b).pow(2).sum(-1)
        return sim / a.shape[-1] if scale_by_dim else sim
    if similarity == "cosine":
        return F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def segmentation_preference_loss(
    h: Tensor,
    h_w: Tensor,
    h_l: Tensor,
    *,
    beta: float = 10.0,
    similarity: str = "l2",
    scale_by_dim: bool = False,
) -> Tensor:
    """L_s `[n]` = -log sigmoid(beta * (s(h, h_w) - s(h, h_l))) for the current segmentation
    embeddings `h [n, d]` and the embeddings `h_w, h_l [n, d]` that produced the preferred and
    the dispreferred mask. s: "l2" = negative squared L2 distance (the docs/popen.md default; with
    `scale_by_dim` divided by d, which keeps beta * s on one scale across widths), or
    "cosine". Computed in float32; h_w and h_l are targets (pass them detached)."""
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"segmentation_preference_loss: similarity must be one of {SIMILARITIES}, "
            f"got {similarity!r}"
        )
    if h.ndim != 2 or h_w.shape != h.shape or h_l.shape != h.shape:
        raise ValueError(
            f"segmentation_preference_loss: expected h, h_w, h_l all [n, d], got "
            f"{tuple(h.shape)}, {tuple(h_w.shape)}, {tuple(h_l.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"segmentation_preference_loss: beta must be > 0, got {beta}")
    h, h_w, h_l = h.float(), h_w.float(), h_l.float()
    opts = {"similarity": similarity, "scale_by_dim": scale_by_dim}
    margin = embedding_similarity(h, h_w, **opts) - embedding_similarity(h, h_l, **opts)
    return -F.logsigmoid(beta * margin)
