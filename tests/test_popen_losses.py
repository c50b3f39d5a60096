"""POPEN losses: token log-probs, DPO (sigmoid / ipo / robust / label smoothing), L_s."""

import math

import pytest
import torch

from tpo.popen.losses import (
    dpo_loss,
    masked_logp_sum,
    segmentation_preference_loss,
    token_logps,
)

# summed log-probs of two pairs: policy chosen / rejected, reference chosen / rejected
PC, PR, RC, RR = [-4.0, -7.5], [-6.0, -5.0], [-5.0, -6.5], [-5.5, -5.5]


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _logsig(x: float) -> float:
    return -math.log(1 + math.exp(-x))


def test_token_logps_matches_hand_log_softmax_with_shift_and_ignore():
    logits = torch.tensor(
        [[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]]]
    )  # [1, 4, 3]
    labels = torch.tensor([[7, 1, -100, 0]])  # position 0 is never scored, even with a label

    def hand(row, k):
        z = logits[0, row].tolist()
        return z[k] - math.log(sum(math.exp(v) for v in z))

    out = token_logps(logits, labels)
    expected = [0.0, hand(0, 1), 0.0, hand(2, 0)]
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_token_logps_bf16_logits_give_float32():
    logits = torch.randn(2, 5, 11).to(torch.bfloat16)
    labels = torch.randint(0, 11, (2, 5))
    out = token_logps(logits, labels)
    ref = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, labels[:, 1:, None])[..., 0]
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 1:], ref, atol=1e-6) and (out[:, 0] == 0).all()


def test_token_logps_gradient_and_masked_sum():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 3], [0, 4, -100, 1]])
    lp = token_logps(logits, labels)
    mask = torch.tensor([[False, True, False, True], [False, True, True, False]])
    total = masked_logp_sum(lp, mask)
    assert total.tolist() == pytest.approx(
        [lp[0, 1].item() + lp[0, 3].item(), lp[1, 1].item()], abs=1e-6
    )
    total.sum().backward()
    # only the logits predicting masked-in labels receive gradient: rows 0 (pos 0, 2), 1 (pos 0)
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[True, False, True, False], [True, False, False, False]]


def test_masked_sum_ignores_non_finite_masked_out_entries():
    lp = torch.tensor([[-1.0, -math.inf, -2.0]])
    assert masked_logp_sum(lp, torch.tensor([[True, False, True]])).item() == -3.0


def test_dpo_sigmoid_by_hand():
    beta = 0.1
    loss, ch, rj = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta)
    for i in range(2):
        z = (PC[i] - PR[i]) - (RC[i] - RR[i])
        assert loss[i].item() == pytest.approx(-_logsig(beta * z), rel=1e-6)
        assert ch[i].item() == pytest.approx(beta * (PC[i] - RC[i]), rel=1e-6)
        assert rj[i].item() == pytest.approx(beta * (PR[i] - RR[i]), rel=1e-6)
    # pair 0: z = (-4 + 6) - (-5 + 5.5) = 1.5 -> loss = log(1 + exp(-0.15))
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-0.15)), rel=1e-6)


def test_dpo_label_smoothing_and_robust_by_hand():
    beta, ls = 0.5, 0.2
    z = [(PC[i] - PR[i]) - (RC[i] - RR[i]) for i in range(2)]  # 1.5, -1.5
    cons, _, _ = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta, label_smoothing=ls)
    rob, _, _ = dpo_loss(
        _t(PC), _t(PR), _t(RC), _t(RR), beta=beta, loss_type="robust", label_smoothing=ls
    )
    for i in range(2):
        a, b = _logsig(beta * z[i]), _logsig(-beta * z[i])
        assert cons[i].item() == pytest.approx(-(1 - ls) * a - ls * b, rel=1e-6)
        assert rob[i].item() == pytest.approx((-(1 - ls) * a + ls * b) / (1 - 2 * ls), rel=1e-6)


def test_dpo_ipo_by_hand():
    beta = 0.25
    loss, _, _ = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta=beta, loss_type="ipo")
    # z = 1.5 and (-7.5 + 5) - (-6.5 + 5.5) = -1.5; 1 / (2 beta) = 2
    assert loss.tolist() == pytest.approx([(1.5 - 2.0) ** 2, (-1.5 - 2.0) ** 2], rel=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = _t(PC).requires_grad_(), _t(PR).requires_grad_()
    loss, _, _ = dpo_loss(pc, pr, _t(RC), _t(RR))
    loss.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_dpo_bad_options():
    args = (_t(PC), _t(PR), _t(RC), _t(RR))
    with pytest.raises(ValueError, match="sigmoid.*ipo"):
        dpo_loss(*args, loss_type="hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, label_smoothing=0.5)
    with pytest.raises(ValueError, match="ipo"):
        dpo_loss(*args, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(_t([1.0]), *args[1:])


def test_segmentation_loss_by_hand():
    h, hw, hl = _t([[0.0, 0.0]]), _t([[1.0, 0.0]]), _t([[0.0, 2.0]])
    # s(h, hw) = -1, s(h, hl) = -4: margin 3
    out = segmentation_preference_loss(h, hw, hl, beta=0.5)
    assert out.item() == pytest.approx(-_logsig(1.5), rel=1e-6)
    scaled = segmentation_preference_loss(h, hw, hl, beta=0.5, scale_by_dim=True)
    assert scaled.item() == pytest.approx(-_logsig(0.75), rel=1e-6)
    cos = segmentation_preference_loss(_t([[1.0, 1.0]]), hw, hl, beta=2.0, similarity="cosine")
    assert cos.item() == pytest.approx(-_logsig(0.0), rel=1e-6)  # both at 45 degrees
    # large margins stay finite (logsigmoid)
    big = segmentation_preference_loss(h, hl * 100, hw, beta=10.0)
    assert torch.isfinite(big).all() and big.item() > 1e5


def _distance(a, b, similarity):
    if similarity == "l2":
        return (a - b).norm(dim=-1)
    return 1 - torch.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_segmentation_gradient_step_moves_h_towards_winner(similarity):
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(8, 16, generator=g)
    h_w = h0 + 0.5 * torch.randn(8, 16, generator=g)
    h_l = h0 - (h_w - h0) + 0.3 * torch.randn(8, 16, generator=g)  # the loser on the far side
    h = h0.clone().requires_grad_()
    loss = segmentation_preference_loss(h, h_w, h_l, beta=10.0, similarity=similarity)
    loss.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    h1 = h0 - 1e-3 * h.grad / h.grad.norm(dim=-1, keepdim=True)
    assert (_distance(h1, h_w, similarity) < _distance(h0, h_w, similarity)).all()
    after = segmentation_preference_loss(h1, h_w, h_l, beta=10.0, similarity=similarity)
    assert (after < loss.detach()).all()


def test_segmentation_loss_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="l2.*cosine"):
        segmentation_preference_loss(x, x, x, similarity="dot")
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        segmentation_preference_loss(x, x, torch.zeros(2, 4))
