"""POPEN's preference ensemble: K responses' segmentation embeddings combined by an attention
whose weights are modulated by each response's preference score.

A = softmax(q K^T / sqrt(d) + log gamma) over the K responses, output sum_k A_k V_k, with
K = V = the embeddings themselves (parameter-free) and q their mean unless given. The score is
passed in the log domain, `log_gamma` (gamma = exp(score)): e.g. the implicit DPO reward
beta * (log pi(y_k) - log pi_ref(y_k)) or the mean token log-prob of response k. Equal scores
give plain attention; a dominant score selects its response's embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def preference_weights(
    embeddings: Tensor, log_gamma: Tensor, query: Tensor | None = None
) -> Tensor:
    """Attention weights `[b, k]` (or `[k]`), float32, of `embeddings [b, k, d]` (or `[k, d]`)
    under scores `log_gamma [b, k]` (or `[k]`) and `query [b, d]` (or `[d]`; default: the mean
    embedding). -inf scores drop a response; NaN, +inf or all -inf raise ValueError."""
    single = embeddings.ndim == 2
    emb = embeddings[None] if single else embeddings
    lg = log_gamma[None] if single else log_gamma
    if emb.ndim != 3 or lg.shape != emb.shape[:2]:
        raise ValueError(
            f"preference_attention: expected embeddings [b, k, d] with log_gamma [b, k] (or "
            f"[k, d] with [k]), got {tuple(embeddings.shape)} and {tuple(log_gamma.shape)}"
        )
    if emb.shape[1] == 0:
        raise ValueError("preference_attention: needs at least one response (k >= 1)")
    lg = lg.float()
    if bool(torch.isnan(lg).any() | (lg == math.inf).any()) or bool(
        (lg == -math.inf).all(-1).any()
    ):
        raise ValueError(f"preference_attention: log_gamma must be finite or -inf, got {log_gamma}")
    emb = emb.float()
    if query is None:
        q = emb.mean(1)
    else:
        q = (query[None] if single else query).float()
        if q.shape != (emb.shape[0], emb.shape[2]):
            raise ValueError(
                f"preference_attention: query must be [b, d] (or [d]), got {tuple(query.shape)}"
            )
    logits = torch.einsum("bkd,bd->bk", emb, q) / math.sqrt(emb.shape[-1]) + lg
    weights = torch.softmax(logits, dim=-1)
    return weights[0] if single else weights


def preference_attention(
    embeddings: Tensor, log_gamma: Tensor, query: Tensor | None = None
) -> Tensor:
    """Combined embedding `[b, d]` (or `[d]`) = sum_k A_k embeddings_k, A from
    `preference_weights` (see the module docstring); in the embeddings' dtype."""
    weights = preference_weights(embeddings, log_gamma, query)
    out = torch.einsum("...k,...kd->...d", weights, embeddings.float())
    return out.to(embeddings.dtype)
