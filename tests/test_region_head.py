"""Region head and criterion: valid boxes, hand-computed losses, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from tpo.config.heads import RegionHeadConfig
from tpo.heads.criterion import weighted_sum
from tpo.heads.region import (
    RegionCriterion,
    RegionHead,
    RegionOutput,
    build_region_criterion,
    select_frame_patches,
)

D_LLM, D_V = 24, 12
TINY = RegionHeadConfig(hidden=32)
TINY_REFINE = RegionHeadConfig(hidden=32, refine=True, refine_dim=16, refine_heads=2)
TINY_LOCATE = RegionHeadConfig(hidden=32, refine=True, refine_dim=16, refine_heads=2, locate=True)


def _giou(a: list[float], b: list[float]) -> float:
    """Plain GIoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_boxes_are_valid_and_ordered():
    head = RegionHead(TINY, D_LLM, D_V)
    boxes = head(torch.randn(64, D_LLM) * 5).boxes
    assert boxes.shape == (64, 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert set(head.trainable_groups()) == {"region_head"}


def test_refine_uses_patches_and_needs_them():
    head = RegionHead(TINY_REFINE, D_LLM, D_V).eval()
    query, patches = torch.randn(3, D_LLM), torch.randn(3, 5, D_V)
    a = head(query, patches).boxes
    b = head(query, patches + torch.randn_like(patches)).boxes
    assert a.shape == (3, 4) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"refine=True\): patches"):
        head(query)


def test_select_frame_patches():
    b, f, p, d = 2, 3, 4, 5
    patches = torch.arange(b * f * p * d, dtype=torch.float32).view(b, f * p, d)
    got = select_frame_patches(patches, torch.tensor([1, 0]), torch.tensor([2, 1]), p)
    assert torch.equal(got[0], patches[1, 2 * p : 3 * p]) and torch.equal(
        got[1], patches[0, p : 2 * p]
    )


def test_criterion_equals_hand_computed():
    pred = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.4, 0.9]])
    gt = [torch.tensor([0.2, 0.2, 0.6, 0.5]), torch.tensor([[0.5, 0.1, 0.8, 0.4]])]
    crit = RegionCriterion(l1=2.0, giou=0.2)
    losses = crit(RegionOutput(pred), [{"boxes": g} for g in gt])
    rows = [g.reshape(4).tolist() for g in gt]
    l1 = sum(abs(p - g) for pr, gr in zip(pred.tolist(), rows) for p, g in zip(pr, gr)) / 8
    giou = sum(1 - _giou(pr, gr) for pr, gr in zip(pred.tolist(), rows)) / 2
    assert losses["loss_l1"].item() == pytest.approx(l1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(giou, rel=1e-5)
    assert weighted_sum(losses, crit.weight_dict).item() == pytest.approx(
        2 * l1 + 0.2 * giou, rel=1e-5
    )


def test_criterion_rejects_bad_targets():
    crit = build_region_criterion(TINY)
    out = RegionOutput(torch.rand(1, 4).sort(-1).values)
    with pytest.raises(ValueError, match="region target 0: 'boxes' must be one xyxy box"):
        crit(out, [{"boxes": torch.zeros(2, 4)}])
    with pytest.raises(ValueError, match="x1 <= x2"):
        crit(out, [{"boxes": torch.tensor([0.5, 0.5, 0.2, 0.9])}])


@pytest.mark.parametrize("cfg", [TINY, TINY_REFINE, TINY_LOCATE], ids=["mlp", "refine", "locate"])
def test_gradients_reach_query_and_every_parameter(cfg):
    head = RegionHead(cfg, D_LLM, D_V)
    crit = build_region_criterion(cfg)
    query = torch.randn(2, D_LLM, requires_grad=True)
    patches = torch.randn(2, 4, D_V, requires_grad=True)
    targets = [
        {"boxes": torch.tensor([0.1, 0.1, 0.4, 0.5])},
        {"boxes": torch.tensor([0.5, 0.2, 0.9, 0.8])},
    ]
    weighted_sum(crit(head(query, patches), targets), crit.weight_dict).backward()
    assert query.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    if cfg.refine:
        assert patches.grad.abs().sum() > 0


def test_overfits_one_batch():
    head = RegionHead(TINY_REFINE, D_LLM, D_V)
    crit = build_region_criterion(TINY_REFINE)
    g = torch.Generator().manual_seed(0)
    query, patches = torch.randn(4, D_LLM, generator=g), torch.randn(4, 5, D_V, generator=g)
    boxes = torch.tensor(
        [[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.8], [0.0, 0.6, 0.3, 1.0], [0.4, 0.4, 0.6, 0.6]]
    )
    targets = [{"boxes": b} for b in boxes]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = weighted_sum(crit(head(query, patches), targets), crit.weight_dict)
        first = first if first is not None else loss.item()
        if loss.item() < 0.5 * first:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_locate_needs_refine_and_a_square_grid():
    with pytest.raises(ValueError, match="locate needs region.refine"):
        RegionHeadConfig(locate=True)
    head = RegionHead(TINY_LOCATE, D_LLM, D_V)
    with pytest.raises(ValueError, match="do not form a square grid"):
        head(torch.randn(1, D_LLM), torch.randn(1, 5, D_V))


def test_locate_centre_stays_within_half_a_patch_of_the_attention_centroid():
    head = RegionHead(TINY_LOCATE, D_LLM, D_V).eval()
    # identical patches: uniform attention, centroid = frame centre; offset <= half a patch (1/8)
    boxes = head(torch.randn(8, D_LLM) * 3, torch.randn(1, 1, D_V).expand(8, 16, D_V)).boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert ((centre - 0.5).abs() <= 0.125 + 1e-6).all()
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_locate_generalises_to_positions_never_seen_in_training():
    """A box centred on the one marked patch of a 4x4 grid: trained on 12 positions, the
    soft-argmax head finds the 4 held-out ones; regressing the position (refine) cannot."""
    g = torch.Generator().manual_seed(0)
    mark = torch.randn(D_V, generator=g) * 3

    def batch(cells: list[int], n: int):
        cell = torch.tensor(cells)[torch.randint(len(cells), (n,), generator=g)]
        patches = torch.randn(n, 16, D_V, generator=g) * 0.3
        patches[torch.arange(n), cell] += mark
        cx, cy = (cell % 4 + 0.5) / 4, (cell // 4 + 0.5) / 4
        boxes = torch.stack([cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1], -1)
        return patches, [{"boxes": b} for b in boxes], boxes

    def held_out_accuracy(cfg: RegionHeadConfig) -> float:
        torch.manual_seed(0)
        head, crit = RegionHead(cfg, D_LLM, D_V), build_region_criterion(cfg)
        query = torch.randn(1, D_LLM, generator=g)
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(300):
            patches, targets, _ = batch(list(range(12)), 32)
            loss = weighted_sum(
                crit(head(query.expand(32, -1), patches), targets), crit.weight_dict
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        patches, _, boxes = batch([12, 13, 14, 15], 64)
        with torch.no_grad():
            pred = head(query.expand(64, -1), patches).boxes
        iou = box_iou(pred, boxes).diagonal()
        return float((iou >= 0.5).float().mean())

    assert held_out_accuracy(TINY_LOCATE) > 0.9
    assert held_out_accuracy(TINY_REFINE) < 0.5
