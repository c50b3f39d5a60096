"""Span ops and the Hungarian matcher: hand-made spans, batched == one by one, empty targets."""

from __future__ import annotations

import itertools

import pytest
import torch

from tpo.heads.matcher import HungarianMatcher
from tpo.heads.span_ops import (
    generalized_temporal_iou,
    span_cw_to_xx,
    span_giou_loss,
    span_nms,
    span_xx_to_cw,
    temporal_iou,
)


def _iou_giou(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Plain 1-d IoU and GIoU of two (start, end) intervals."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union, inter / union - (hull - union) / hull


def test_cw_xx_round_trip():
    cw = torch.tensor([[0.5, 0.2], [0.1, 0.1]])
    xx = span_cw_to_xx(cw)
    assert torch.allclose(xx, torch.tensor([[0.4, 0.6], [0.05, 0.15]]))
    assert torch.allclose(span_xx_to_cw(xx), cw)


def test_iou_giou_hand_made():
    a = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 3.0], [2.0, 3.0], [0.0, 2.0]])
    iou, giou = temporal_iou(a, b), generalized_temporal_iou(a, b)
    assert iou.shape == giou.shape == (2, 3)
    # [0,2] vs [1,3]: inter 1, union 3; [0,1] vs [2,3]: disjoint, hull 3, union 2
    assert iou[0, 0].item() == pytest.approx(1 / 3)
    assert giou[0, 0].item() == pytest.approx(1 / 3)
    assert iou[1, 1].item() == pytest.approx(0.0)
    assert giou[1, 1].item() == pytest.approx(-1 / 3)
    assert iou[0, 2].item() == pytest.approx(1.0)
    for i, j in itertools.product(range(2), range(3)):
        ref_iou, ref_giou = _iou_giou(tuple(a[i].tolist()), tuple(b[j].tolist()))
        assert iou[i, j].item() == pytest.approx(ref_iou, abs=1e-6)
        assert giou[i, j].item() == pytest.approx(ref_giou, abs=1e-6)
    # element-wise loss = 1 - GIoU of pairs
    pairs = span_giou_loss(a, b[:2])
    assert torch.allclose(pairs, 1 - torch.stack([giou[0, 0], giou[1, 1]]), atol=1e-5)


def test_span_nms_drops_duplicate():
    spans = torch.tensor([[0.0, 10.0], [0.5, 10.0], [20.0, 30.0]])
    keep = span_nms(spans, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def _logits(fg: list[list[float]]) -> torch.Tensor:
    """[b, q, 2] logits whose foreground probability is fg."""
    p = torch.tensor(fg)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def test_hand_checkable_2x2():
    matcher = HungarianMatcher(cost_span=10, cost_giou=1, cost_class=4)
    spans = torch.tensor([[[0.2, 0.1], [0.7, 0.1]]])
    targets = [{"spans": torch.tensor([[0.7, 0.1], [0.2, 0.1]])}]
    ((rows, cols),) = matcher(_logits([[0.5, 0.5]]), spans, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_class_cost_breaks_tie():
    # two identical predicted spans, one target: the one more confidently foreground wins
    matcher = HungarianMatcher(cost_span=1, cost_giou=1, cost_class=1)
    spans = torch.tensor([[[0.5, 0.2], [0.5, 0.2]]])
    targets = [{"spans": torch.tensor([[0.5, 0.2]])}]
    ((rows, cols),) = matcher(_logits([[0.3, 0.9]]), spans, targets)
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_minimises_cost_brute_force():
    torch.manual_seed(1)
    q, k = 4, 2
    spans = torch.rand(1, q, 2) * 0.5 + 0.1
    fg = torch.rand(1, q).clamp(0.05, 0.95)
    tgt = torch.rand(k, 2) * 0.5 + 0.1
    matcher = HungarianMatcher(cost_span=10, cost_giou=1, cost_class=4)
    ((rows, cols),) = matcher(_logits(fg.tolist()), spans, [{"spans": tgt}])

    def cost(i: int, j: int) -> float:
        s, t = spans[0, i].tolist(), tgt[j].tolist()
        l1 = abs(s[0] - t[0]) + abs(s[1] - t[1])
        to_xx = lambda c: (c[0] - c[1] / 2, c[0] + c[1] / 2)  # noqa: E731
        giou = _iou_giou(to_xx(s), to_xx(t))[1]
        return 10 * l1 - giou - 4 * fg[0, i].item()

    best = min(
        itertools.permutations(range(q), k), key=lambda p: sum(cost(p[j], j) for j in range(k))
    )
    got = dict(zip(cols.tolist(), rows.tolist()))
    assert [got[j] for j in range(k)] == list(best)


def test_batched_equals_one_by_one_with_empty_targets():
    torch.manual_seed(0)
    b, q = 4, 5
    sizes = [2, 0, 3, 1]
    logits = torch.randn(b, q, 2)
    spans = torch.rand(b, q, 2)
    targets = [{"spans": torch.rand(k, 2)} for k in sizes]
    matcher = HungarianMatcher()
    batched = matcher(logits, spans, targets)
    for i in range(b):
        ((rows, cols),) = matcher(logits[i : i + 1], spans[i : i + 1], targets[i : i + 1])
        assert torch.equal(batched[i][0], rows) and torch.equal(batched[i][1], cols)
        assert len(rows) == sizes[i] and rows.dtype == torch.int64
        assert len(set(rows.tolist())) == len(rows)  # one-to-one


def test_all_targets_empty():
    matcher = HungarianMatcher()
    out = matcher(torch.randn(2, 3, 2), torch.rand(2, 3, 2), [{"spans": torch.zeros(0, 2)}] * 2)
    assert [(len(r), len(c)) for r, c in out] == [(0, 0), (0, 0)]


def test_no_grad_and_bad_batch():
    logits = torch.randn(1, 2, 2, requires_grad=True)
    matcher = HungarianMatcher()
    out = matcher(logits, torch.rand(1, 2, 2), [{"spans": torch.rand(1, 2)}])
    assert not out[0][0].requires_grad
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        matcher(logits, torch.rand(1, 2, 2), [{"spans": torch.rand(1, 2)}] * 2)
