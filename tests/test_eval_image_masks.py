"""LISA gIoU / cIoU (ReasonSeg) on hand-computed masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tpo.eval.image_masks import giou_ciou, intersection_union, score_reasonseg
from tpo.eval.io import ScoreError
from tpo.eval.scorers import get_scorer


def test_intersection_union_ignores_255():
    gt = np.array([[1, 1, 0], [255, 0, 0]])
    pred = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)
    # pred on the ignored pixel is dropped: pred = {(0,0), (1,1)}, target = {(0,0), (0,1)}
    assert intersection_union(pred, gt) == (1, 3)
    assert intersection_union(np.zeros((2, 3), bool), np.zeros((2, 3))) == (0, 0)


def test_giou_ciou_formulas():
    out = giou_ciou([1, 0, 2], [3, 0, 4])  # the middle mask: no object, no prediction -> 1.0
    assert out["gIoU"] == pytest.approx((1 / (3 + 1e-5) + 1.0 + 2 / (4 + 1e-5)) / 3, abs=1e-12)
    assert out["cIoU"] == pytest.approx(3 / (7 + 1e-10), abs=1e-12)
    assert giou_ciou([0], [0]) == {"gIoU": 1.0, "cIoU": 0.0}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a = np.zeros((4, 5), np.uint8)
    a[0:2, 0:2] = 1  # 4 target pixels
    a[3, 4] = 255
    b = np.zeros((4, 5), np.uint8)  # no target
    _png(gt / "img_a.png", a)
    _png(gt / "img_b.png", b)
    pa = np.zeros((4, 5), np.uint8)
    pa[0:2, 0:1] = 255  # 2 px inside the target
    pa[2, 0] = 255  # 1 px outside
    pa[3, 4] = 255  # on the ignored pixel: dropped
    _png(pred / "img_a.png", pa)  # I = 2, U = 3 + 4 - 2 = 5
    logits = np.full((4, 5), -3.0)
    np.save(pred / "img_b.npy", logits)  # logits <= 0 everywhere: empty -> U = 0 -> IoU 1
    return gt, pred


def test_score_reasonseg_hand_computed(tmp_path):
    gt, pred = _files(tmp_path)
    out = score_reasonseg(gt, pred)
    assert out["gIoU"] == pytest.approx((2 / (5 + 1e-5) + 1.0) / 2, abs=1e-12)
    assert out["cIoU"] == pytest.approx(2 / (5 + 1e-10), abs=1e-12)
    assert get_scorer("reasonseg") is score_reasonseg
    # logits > 0 are foreground: one positive logit off the (absent) target -> I 0, U 1
    logits = np.full((4, 5), -3.0)
    logits[1, 1] = 0.5
    np.save(pred / "img_b.npy", logits)
    out = score_reasonseg(gt, pred)
    assert out["gIoU"] == pytest.approx((2 / (5 + 1e-5) + 0.0) / 2, abs=1e-12)
    assert out["cIoU"] == pytest.approx(2 / (6 + 1e-10), abs=1e-12)


def test_score_reasonseg_missing_extra_and_bad_files(tmp_path):
    gt, pred = _files(tmp_path)
    (pred / "img_b.npy").unlink()
    with pytest.raises(ScoreError, match="no prediction for"):
        score_reasonseg(gt, pred)
    empty = score_reasonseg(gt, pred, missing="empty")  # scored as an empty mask: IoU 1
    assert empty["gIoU"] == pytest.approx((2 / (5 + 1e-5) + 1.0) / 2, abs=1e-12)
    _png(pred / "img_c.png", np.zeros((4, 5)))
    with pytest.raises(ScoreError, match="img_c"):
        score_reasonseg(gt, pred, missing="empty")
    (pred / "img_c.png").unlink()
    _png(pred / "img_a.png", np.zeros((5, 4)))
    with pytest.raises(ScoreError, match=r"img_a.png: mask size \(5, 4\)"):
        score_reasonseg(gt, pred, missing="empty")
    _png(pred / "img_a.png", np.zeros((4, 5)))
    np.save(pred / "img_b.npy", np.full((4, 5), np.nan))
    with pytest.raises(ScoreError, match="img_b.npy: logits must be finite"):
        score_reasonseg(gt, pred)
    _png(gt / "img_a.png", np.full((4, 5), 7))
    np.save(pred / "img_b.npy", np.zeros((4, 5)))
    with pytest.raises(ScoreError, match=r"img_a.png: GT values \[7\]"):
        score_reasonseg(gt, pred)
