"""NExT-GQA grounded QA metrics on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpo.eval.grounded_qa import iou_iop, score_nextgqa
from tpo.eval.io import ScoreError

GT = {
    "v1": {"duration": 30, "fps": 30, "location": {"0": [[0, 10]], "1": [[10, 20], [25, 30]]}},
    "v2": {"duration": 20, "fps": 30, "location": {"3": [[5, 10]]}},
}
PRED = {
    "v1_0": {"window": [5, 15], "prediction": 1, "answer": 1},  # IoU 1/3, IoP 1/2, right
    "v1_1": {"window": [24, 26], "prediction": 0, "answer": 2},  # IoU 1/6, IoP 1/2, wrong
    "v2_3": {"window": [7, 7], "prediction": 3, "answer": 3},  # zero length inside: IoU 0, IoP 1
    "v9_9": [0, 1],  # not in the GT: ignored, as the official
}


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_iou_iop_cases():
    assert iou_iop([5, 15], [[0, 10]]) == pytest.approx((1 / 3, 1 / 2))
    assert iou_iop([24, 26], [[10, 20], [25, 30]]) == pytest.approx((1 / 6, 1 / 2))
    assert iou_iop([40, 50], [[0, 10]]) == (0.0, 0.0)  # disjoint: floored at 0
    assert iou_iop([10, 10], [[0, 10]]) == (0.0, 1.0)  # zero length on the boundary: inside
    assert iou_iop([11, 11], [[0, 10]]) == (0.0, 0.0)
    assert iou_iop([2, 4], [[0, 10]]) == pytest.approx((0.2, 1.0))


def test_score_nextgqa_hand_computed(tmp_path):
    out = score_nextgqa(_json(tmp_path / "gt.json", GT), _json(tmp_path / "p.json", PRED))
    assert out["mIoU"] == pytest.approx(100 * (1 / 3 + 1 / 6) / 3)
    assert out["IoU@0.3"] == pytest.approx(100 / 3) and out["IoU@0.5"] == 0.0
    assert out["mIoP"] == pytest.approx(100 * 2 / 3)
    assert out["IoP@0.3"] == 100.0 and out["IoP@0.5"] == 100.0
    assert out["Acc@QA"] == pytest.approx(200 / 3) and out["Acc@GQA"] == pytest.approx(200 / 3)


def test_missing_question_wrong_by_default_skipped_as_official(tmp_path):
    gt = _json(tmp_path / "gt.json", GT)
    pred = _json(tmp_path / "p.json", {k: v for k, v in PRED.items() if k != "v2_3"})
    out = score_nextgqa(gt, pred)
    assert out["mIoP"] == pytest.approx(100 / 3) and out["Acc@GQA"] == pytest.approx(100 / 3)
    assert out["Acc@QA"] == pytest.approx(100 / 3)
    skipped = score_nextgqa(gt, pred, skip_missing=True)
    assert skipped["mIoP"] == pytest.approx(50.0) and skipped["mIoU"] == pytest.approx(25.0)
    assert skipped["Acc@GQA"] == 50.0 and skipped["Acc@QA"] == 50.0


def test_qa_from_official_res_json_and_csv(tmp_path):
    gt = _json(tmp_path / "gt.json", GT)
    windows = _json(tmp_path / "g.json", {k: v["window"] for k, v in list(PRED.items())[:3]})
    no_qa = score_nextgqa(gt, windows)
    assert "Acc@QA" not in no_qa and no_qa["IoP@0.5"] == 100.0
    res = _json(
        tmp_path / "res.json",
        {"v1_0": {"prediction": 1, "answer": 1}, "v1_1": {"prediction": 0, "answer": 0}},
    )
    out = score_nextgqa(gt, windows, qa=str(res))
    assert out["Acc@QA"] == pytest.approx(200 / 3)  # v2_3 has no answer: wrong
    assert out["Acc@GQA"] == pytest.approx(200 / 3)  # v1_0 and v1_1 both IoP 1/2 and right
    csv = tmp_path / "test.csv"
    csv.write_text("video_id,qid,answer,question\nv1,0,4,a\nv1,1,0,b\nv2,3,1,c\n")
    out = score_nextgqa(gt, windows, qa=str(res), qa_gt=str(csv))  # csv answers win
    assert out["Acc@QA"] == pytest.approx(100 / 3) and out["Acc@GQA"] == pytest.approx(100 / 3)


def test_normalized_windows(tmp_path):
    gt = _json(tmp_path / "gt.json", GT)
    out = score_nextgqa(
        gt, _json(tmp_path / "p.json", {"v2_3": [0.25, 0.5]}), normalized=True, skip_missing=True
    )
    assert out["mIoU"] == 100.0 and out["IoU@0.5"] == 100.0


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        ({"v1_0": [5, 1]}, "question v1_0.*end < start"),
        ({"v1_0": ["a", 1]}, "question v1_0.*not a number"),
        ({"v1_0": [float("nan"), 1]}, "question v1_0.*not finite"),
        ({"v1_0": {"window": [0, 1], "prediction": 1}}, "no GT answer for question.*v1_0"),
        ({"v9_0": [0, 1]}, "no window for any question"),
    ],
)
def test_bad_predictions_name_the_question(tmp_path, pred, message):
    with pytest.raises(ScoreError, match=message):
        score_nextgqa(_json(tmp_path / "gt.json", GT), _json(tmp_path / "p.json", pred))
