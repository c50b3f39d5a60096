"""Referring boxes Acc@0.5 (Qwen-VL evaluate_grounding rules) on hand-computed boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tpo.eval.boxes import box_accuracy, box_iou, parse_box_text, score_refcoco
from tpo.eval.io import ScoreError
from tpo.eval.scorers import get_scorer


def test_box_iou_continuous_no_plus_one():
    gt = [[0, 0, 1, 1]] * 5
    pred = [
        [0, 0, 2, 1],  # inter 1, union 2 -> exactly 0.5
        [0, 0, 2.02, 1],  # union 2.02 -> just below 0.5
        [1, 0, 2, 1],  # touching edge: inter 0 (no +1)
        [0, 0, 1, 1],  # identical
        [0.5, 0.5, 1.5, 1.5],  # inter 0.25, union 1.75
    ]
    np.testing.assert_allclose(box_iou(pred, gt), [0.5, 1 / 2.02, 0.0, 1.0, 0.25 / 1.75])
    assert box_accuracy(pred, gt) == pytest.approx(2 / 5)  # IoU exactly 0.5 counts
    assert box_accuracy(pred, gt, thr=0.1) == pytest.approx(4 / 5)
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0])[0] == 0.0  # empty union: 0, not NaN


def test_parse_box_text():
    np.testing.assert_allclose(
        parse_box_text("box: [10, 20.5, 30, 40] ok", 100, 100), [10, 20.5, 30, 40]
    )
    assert parse_box_text("the dog at 3 and 4", 100, 100) is None
    qwen = parse_box_text("<ref>dog</ref><box>(100,200),(300,400)</box>", 999, 1998, "qwen")
    assert qwen.dtype == np.float32
    np.testing.assert_allclose(qwen, [100, 400, 300, 800], rtol=1e-6)
    assert parse_box_text("(100,200)", 999, 999, "qwen") is None
    assert parse_box_text("(100,200,1),(3,4)", 999, 999, "qwen") is None


GT = [
    {
        "id": 0,
        "video": "v.mp4",
        "frame_index": 3,
        "time": 0.3,
        "expression": "a",
        "bbox": [0, 0, 10, 10],
        "width": 100,
        "height": 50,
    },
    {
        "id": 1,
        "video": "v.mp4",
        "frame_index": 4,
        "time": 0.4,
        "expression": "b",
        "bbox": [10, 10, 20, 10],
        "width": 100,
        "height": 50,
    },
    {
        "id": 2,
        "video": "w.mp4",
        "frame_index": 0,
        "time": 0.0,
        "expression": "c",
        "bbox": [50, 0, 10, 50],
        "width": 100,
        "height": 50,
    },
    {
        "id": 3,
        "video": "w.mp4",
        "frame_index": 1,
        "time": 0.1,
        "expression": "d",
        "bbox": [0, 0, 1, 1],
        "width": 100,
        "height": 50,
    },
]


def _write(tmp_path: Path, preds: list[dict]) -> tuple[Path, Path]:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(GT))
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return gt, pred


PREDS = [
    {"id": 0, "bbox": [0, 0, 20, 10]},  # GT xyxy [0,0,10,10]: IoU 100/200 = 0.5 -> right
    {"id": 1, "text": "[10, 10, 30, 20]"},  # GT xyxy [10,10,30,20]: exact -> right
    {"id": 2, "text": "I cannot find it"},  # unparseable -> wrong (IoU 0)
    {"id": 3, "bbox": [5, 5, 6, 6]},  # disjoint -> wrong
]


def test_score_refcoco_hand_computed(tmp_path):
    out = score_refcoco(*_write(tmp_path, PREDS))
    assert out == pytest.approx({"Acc@0.5": 0.5, "mIoU": (0.5 + 1.0) / 4})
    assert get_scorer("refcoco") is score_refcoco


def test_score_refcoco_qwen_text(tmp_path):
    # id 2: GT xyxy [50, 0, 60, 50] on a 100 x 50 image; Qwen grid (499.5 -> 0.5 * 999)
    preds = [dict(p) for p in PREDS]
    preds[1] = {"id": 1, "text": "(0,0),(999,999)"}  # whole image: IoU 200/5000
    preds[2] = {"id": 2, "text": "<box>(499.5,0),(599.4,999)</box>"}  # = [50,0,60,50]
    out = score_refcoco(*_write(tmp_path, preds), text_format="qwen")
    assert out["Acc@0.5"] == pytest.approx(0.5)
    assert out["mIoU"] == pytest.approx((0.5 + 200 / 5000 + 1.0) / 4, rel=1e-6)


def test_score_refcoco_missing_extra_and_bad(tmp_path):
    with pytest.raises(ScoreError, match="no prediction for id"):
        score_refcoco(*_write(tmp_path, PREDS[:3]))
    assert score_refcoco(*_write(tmp_path, PREDS[:2]), missing="wrong")["Acc@0.5"] == 0.5
    with pytest.raises(ScoreError, match="not in the ground truth"):
        score_refcoco(*_write(tmp_path, PREDS + [{"id": 9, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ScoreError, match="repeats"):
        score_refcoco(*_write(tmp_path, PREDS + [PREDS[0]]))
    bad = [dict(p) for p in PREDS]
    bad[3] = {"id": 3, "bbox": [5, 5, float("nan"), 6]}
    with pytest.raises(ScoreError, match="not finite"):
        score_refcoco(*_write(tmp_path, bad))
    bad[3] = {"id": 3, "bbox": [5, 5, 4, 6]}  # x2 < x1: negative width
    with pytest.raises(ScoreError, match=r"id 3.*x2 < x1"):
        score_refcoco(*_write(tmp_path, bad))
    bad[3] = {"id": 3, "box": [5, 5, 6, 6]}
    with pytest.raises(ScoreError, match="expected a 'bbox'"):
        score_refcoco(*_write(tmp_path, bad))
