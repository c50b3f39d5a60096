"""POPEN preference ensemble: attention over K embeddings modulated by log gamma."""

import math

import pytest
import torch
import torch.nn.functional as F

from tpo.infer.preference import preference_attention, preference_weights


def _plain_attention(emb, query=None):
    """softmax(q K^T / sqrt(d)) V written out with torch ops, K = V = emb [b, k, d]."""
    q = emb.mean(1) if query is None else query
    scores = (emb @ q[:, :, None])[..., 0] / math.sqrt(emb.shape[-1])
    return (torch.softmax(scores, -1)[:, :, None] * emb).sum(1)


def test_equal_scores_equal_plain_attention():
    emb = torch.randn(4, 3, 8)
    for c in (0.0, -3.7, 12.0):
        out = preference_attention(emb, torch.full((4, 3), c))
        assert torch.allclose(out, _plain_attention(emb), atol=1e-5)
    q = torch.randn(4, 8)
    assert torch.allclose(
        preference_attention(emb, torch.zeros(4, 3), query=q), _plain_attention(emb, q), atol=1e-5
    )


def test_scores_add_to_attention_logits_like_sdpa_float_mask():
    emb, lg = torch.randn(2, 3, 8), torch.randn(2, 3)
    q = emb.mean(1)
    ref = F.scaled_dot_product_attention(q[:, None], emb, emb, attn_mask=lg[:, None])[:, 0]
    assert torch.allclose(preference_attention(emb, lg), ref, atol=1e-5)


def test_dominant_score_returns_that_embedding():
    emb = torch.randn(2, 3, 16)
    lg = torch.tensor([[0.0, 60.0, 0.0], [-40.0, -40.0, 20.0]])
    out = preference_attention(emb, lg)
    assert torch.allclose(out[0], emb[0, 1], atol=1e-5)
    assert torch.allclose(out[1], emb[1, 2], atol=1e-5)
    w = preference_weights(emb, torch.tensor([[0.0, -math.inf, 0.0]] * 2))
    assert (w[:, 1] == 0).all() and torch.allclose(w.sum(-1), torch.ones(2))


def test_batched_equals_one_by_one_and_dtype():
    emb, lg = torch.randn(5, 3, 8), torch.randn(5, 3)
    batched = preference_attention(emb, lg)
    single = torch.stack([preference_attention(emb[i], lg[i]) for i in range(5)])
    assert batched.shape == (5, 8) and single.shape == (5, 8)
    assert torch.allclose(batched, single, atol=1e-6)
    half = preference_attention(emb.to(torch.bfloat16), lg)
    assert half.dtype == torch.bfloat16


def test_gradient_reaches_embeddings_and_scores():
    emb = torch.randn(1, 3, 4, requires_grad=True)
    lg = torch.zeros(1, 3, requires_grad=True)
    preference_attention(emb, lg).pow(2).sum().backward()
    assert emb.grad.abs().sum() > 0 and lg.grad.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match="log_gamma"):
        preference_attention(torch.randn(2, 3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="finite"):
        preference_attention(torch.randn(3, 4), torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="finite"):
        preference_attention(torch.randn(2, 4), torch.full((2,), -math.inf))
    with pytest.raises(ValueError, match="query"):
        preference_attention(torch.randn(3, 4), torch.zeros(3), query=torch.zeros(5))
