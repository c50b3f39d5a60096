"""Moment retrieval + highlight metrics: hand-computed cases and a loop transcription of the
official evaluator (moment_detr standalone_eval + sklearn precision_recall_curve)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tpo.eval.highlights import binary_ap, highlight_metrics
from tpo.eval.io import ScoreError
from tpo.eval.moments import (
    MAP_THRESHOLDS,
    average_precision,
    mean_iou,
    moment_metrics,
    recall_at_1,
    score_charades_sta,
    score_qvhighlights,
    temporal_iou,
    temporal_iou_cross,
)

# ------------------------------------------------------------------ loop references (official)


def ref_ap(pred: list, gt: list, thresholds=MAP_THRESHOLDS) -> np.ndarray:
    """One query, as compute_average_precision_detection: loops, sorted(), dict locks."""
    pred = sorted(pred, key=lambda w: -w[2])
    ap = np.zeros(len(thresholds))
    tp = np.zeros((len(thresholds), len(pred)))
    fp = np.zeros((len(thresholds), len(pred)))
    lock = [[False] * len(gt) for _ in thresholds]
    for i, (s, e, _) in enumerate(pred):
        ious = []
        for gs, ge in gt:
            inter = max(0.0, min(e, ge) - max(s, gs))
            ious.append(inter / ((e - s) + (ge - gs) - inter))
        order = sorted(range(len(gt)), key=lambda j: (ious[j], j), reverse=True)
        for t, thr in enumerate(thresholds):
            for j in order:
                if ious[j] < thr:
                    break
                if lock[t][j]:
                    continue
                tp[t, i], lock[t][j] = 1, True
                break
            fp[t, i] = 1 - tp[t, i]
    for t in range(len(thresholds)):
        tps, fps = np.cumsum(tp[t]), np.cumsum(fp[t])
        prec = [0.0, *(tps / (tps + fps)), 0.0]
        rec = [0.0, *(tps / len(gt)), 1.0]
        for k in range(len(prec) - 2, -1, -1):
            prec[k] = max(prec[k], prec[k + 1])
        ap[t] = sum(
            (rec[k] - rec[k - 1]) * prec[k] for k in range(1, len(rec)) if rec[k] != rec[k - 1]
        )
    return ap


def ref_binary_ap(y: list, s: list) -> float:
    """get_ap(interpolate=True) over sklearn's precision_recall_curve, in plain Python."""
    if len(set(y)) == 1:
        return float(y[0])
    levels = sorted(set(s), reverse=True)
    prec, rec = [], []
    for v in levels:
        chosen = [yy for yy, ss in zip(y, s) if ss >= v]
        prec.append(sum(chosen) / len(chosen))
        rec.append(sum(chosen) / sum(y))
    prec, rec = prec[::-1] + [1.0], rec[::-1] + [0.0]
    for i in range(1, len(prec)):
        prec[i] = max(prec[i - 1], prec[i])
    picked = [prec[i] for i in range(len(rec) - 1) if rec[i + 1] != rec[i]]
    return sum(picked) / len(picked)


# ------------------------------------------------------------------ plain functions


def test_temporal_iou_paired_and_cross():
    pred = np.array([[0.0, 10.0], [5.0, 5.0], [3.0, 3.0], [0.0, 4.0]])
    gt = np.array([[5.0, 15.0], [0.0, 10.0], [3.0, 3.0], [6.0, 8.0]])
    np.testing.assert_allclose(temporal_iou(pred, gt), [5 / 15, 0.0, 0.0, 0.0])
    cross = temporal_iou_cross(pred[:1], np.array([[5.0, 15.0], [0.0, 4.0], [20.0, 30.0]]))
    np.testing.assert_allclose(cross, [[5 / 15, 0.4, 0.0]])
    assert temporal_iou_cross(np.array([[2.0, 2.0]]), np.array([[2.0, 2.0]]))[0, 0] == 0.0


def test_recall_at_1_picks_the_best_of_several_gt_windows():
    pred = np.array([[0.0, 10.0], [0.0, 10.0]])
    gts = [np.array([[20.0, 30.0], [0.0, 8.0]]), np.array([[0.0, 5.0]])]
    assert recall_at_1(pred, gts, 0.8) == 0.5  # IoU 0.8 (second GT window) and 0.5
    assert recall_at_1(pred, gts, 0.85) == 0.0
    assert recall_at_1(pred, gts, 0.5) == 1.0
    assert mean_iou(pred, gts) == pytest.approx(0.65)
    assert recall_at_1(pred, np.array([[0.0, 10.0], [10.0, 20.0]]), 0.5) == 0.5


def test_ap_hand_computed_two_gt_windows():
    # sorted: [21,30] IoU 0.9 TP, [40,50] FP, [0,10] IoU 1 TP -> P 1, 1/2, 2/3 at R .5, .5, 1
    pred = [np.array([[0, 10, 0.5], [21, 30, 0.9], [40, 50, 0.7]])]
    gt = [np.array([[0.0, 10.0], [20.0, 30.0]])]
    ap = average_precision(pred, gt)[0]
    np.testing.assert_allclose(ap[:9], 0.5 + 0.5 * 2 / 3)
    assert ap[9] == pytest.approx(0.5 / 3)  # at 0.95 only [0,10] is a TP, ranked third
    out = moment_metrics(pred, gt)
    assert out["MR-full-mAP@0.5"] == 83.33 and out["MR-full-mAP@0.95"] == 16.67
    assert out["MR-full-mAP"] == 76.67  # (9 * 5/6 + 1/6) / 10
    assert out["MR-full-R1@0.95"] == 100.0  # first listed window [0, 10]
    assert out["MR-short-mAP"] == 76.67 and "MR-middle-mAP" not in out


def test_ap_one_to_one_matching_duplicate_is_false_positive():
    pred = [np.array([[0, 10, 0.9], [0, 10, 0.8], [50, 60, 0.7]])]
    gt = [np.array([[0.0, 10.0], [50.0, 60.0]])]
    np.testing.assert_allclose(average_precision(pred, gt)[0], 0.5 + 0.5 * 2 / 3)


def test_ap_equal_iou_gt_windows_later_one_is_taken():
    # [0,10] has IoU 0.5 with both GT; it locks [5,10] (official order), so [5,10] is a FP
    pred = [np.array([[0, 10, 0.9], [5, 10, 0.5]])]
    gt = [np.array([[0.0, 5.0], [5.0, 10.0]])]
    ap = average_precision(pred, gt)[0]
    assert ap[0] == pytest.approx(0.5)
    np.testing.assert_allclose(ap[1:], 0.25)  # first FP, second TP: P 1/2 at R 1/2


def test_ap_score_ties_keep_listed_order():
    gt = [np.array([[0.0, 10.0]])]
    miss_first = [np.array([[20, 30, 0.5], [0, 10, 0.5]])]
    hit_first = [np.array([[0, 10, 0.5], [20, 30, 0.5]])]
    np.testing.assert_allclose(average_precision(miss_first, gt)[0], 0.5)
    np.testing.assert_allclose(average_precision(hit_first, gt)[0], 1.0)


def test_map_uses_the_first_ten_listed_windows_only():
    gt = [np.array([[0.0, 10.0]])]
    misses = [[100 + 10 * i, 105 + 10 * i, 0.5] for i in range(10)]
    late_hit = [np.array([*misses, [0, 10, 1.0]])]  # best score, but 11th as listed
    assert moment_metrics(late_hit, gt)["MR-full-mAP"] == 0.0
    assert moment_metrics(late_hit, gt, max_pred_windows=11)["MR-full-mAP"] == 100.0
    zero_length = [np.array([[5, 5, 1.0], [0, 10, 0.1]])]  # IoU 0: a FP ranked first
    assert moment_metrics(zero_length, gt)["MR-full-mAP"] == 50.0
    assert moment_metrics(zero_length, gt)["MR-full-mIoU"] == 0.0


def test_length_splits_filter_gt_windows_per_query():
    gt = [np.array([[0.0, 8.0], [20.0, 45.0]]), np.array([[0.0, 40.0]])]
    pred = [np.array([[20, 45, 0.9]]), np.array([[0, 40, 0.9]])]
    out = moment_metrics(pred, gt)
    assert out["MR-short-R1@0.5"] == 0.0  # q1 keeps only [0, 8]
    assert out["MR-middle-R1@0.5"] == 100.0 and out["MR-middle-mAP"] == 100.0  # q1: [20, 45]
    assert out["MR-long-mIoU"] == 100.0  # q2 only
    assert out["MR-full-mAP"] == 75.0  # q1 finds one of its two windows: AP 1/2
    assert out["MR-full-R1@0.7"] == 100.0


def test_vectorised_ap_equals_official_loops_on_random_queries():
    rng = np.random.default_rng(0)
    pred, gt = [], []
    for _ in range(150):
        g = []
        for _ in range(rng.integers(1, 5)):
            s = int(rng.integers(0, 20))
            g.append([s, s + int(rng.integers(1, 8))])
        r = int(rng.integers(1, 14))
        starts = rng.integers(0, 20, r)
        p = np.stack([starts, starts + rng.integers(0, 8, r), rng.integers(0, 4, r) / 4], 1)
        pred.append(p.astype(float))
        gt.append(np.array(g, dtype=float))
    got = average_precision([p[:10] for p in pred], gt)
    want = np.stack([ref_ap(p[:10].tolist(), g.tolist()) for p, g in zip(pred, gt)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ highlights


def test_binary_ap_hand_computed_with_score_ties():
    scores = np.array([0.1, 0.9, 0.2, 0.5, 0.5])
    assert binary_ap(np.array([0, 1, 0, 0, 0.0]), scores) == pytest.approx(1.0)
    assert binary_ap(np.array([0, 0, 0, 1, 0.0]), scores) == pytest.approx(1 / 3)  # tied at .5
    assert binary_ap(np.array([0, 1, 1, 0, 0.0]), scores) == pytest.approx(0.75)
    assert binary_ap(np.array([0, 1, 1, 1, 0.0]), scores) == pytest.approx(2.5 / 3)
    assert binary_ap(np.zeros(5), scores) == 0.0  # all negative
    assert binary_ap(np.ones(5), scores) == 1.0  # all positive


def test_binary_ap_equals_sklearn_transcription_on_random_rows():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 15))
        y = rng.integers(0, 2, n).astype(float)
        s = rng.integers(0, 4, n) / 3
        assert binary_ap(y, s) == pytest.approx(ref_binary_ap(y.tolist(), s.tolist()), abs=1e-12)


def test_highlight_metrics_truncate_pad_and_hit1():
    gt1 = np.zeros((5, 3))
    gt1[1:4] = [[4, 2, 0], [3, 3, 1], [1, 4, 0]]
    gt2 = np.array([[4.0, 4, 4], [4, 4, 2]])
    pred = [np.array([0.1, 0.9, 0.2, 0.5, 0.5, 7.0]), np.array([0.3])]  # 6 > 5 clips; 1 < 2
    out = highlight_metrics(pred, [gt1, gt2])
    assert out["VeryGood"]["mAP"] == pytest.approx((1 + 1 / 3 + 0 + 3) / 6)
    assert out["Good"]["mAP"] == pytest.approx((0.75 + 0.5 + 0 + 3) / 6)
    assert out["Fair"]["mAP"] == pytest.approx((0.75 + 2.5 / 3 + 0 + 3) / 6)
    # q1's top clip (index 5) is past the video's 5 clips: a miss; q2's clip 0 is a hit
    assert {v["Hit1"] for v in out.values()} == {0.5}


# ------------------------------------------------------------------ file scorers


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GT_ROWS = [
    {"qid": 1, "duration": 10, "relevant_windows": [[2, 8]], "relevant_clip_ids": [1, 2, 3],
     "saliency_scores": [[4, 2, 0], [3, 3, 1], [1, 4, 0]]},
    {"qid": 2, "duration": 4.9, "relevant_windows": [[0, 4]], "relevant_clip_ids": [0, 1],
     "saliency_scores": [[4, 4, 4], [4, 4, 2]]},
]  # fmt: skip
PRED_ROWS = [
    {"qid": 1, "pred_relevant_windows": [[2, 8, 0.9]],
     "pred_saliency_scores": [0.1, 0.9, 0.2, 0.5, 0.5, 7.0]},
    {"qid": 2, "pred_relevant_windows": [[0, 2, 1.0]], "pred_saliency_scores": [0.3]},
]  # fmt: skip


def test_score_qvhighlights_official_keys_and_values(tmp_path):
    out = score_qvhighlights(
        _write(tmp_path / "gt.jsonl", GT_ROWS), _write(tmp_path / "p.jsonl", PRED_ROWS)
    )
    assert out["HL-min-VeryGood-mAP"] == 72.22 and out["HL-min-VeryGood-Hit1"] == 50.0
    assert out["HL-min-Good-mAP"] == 70.83 and out["HL-min-Fair-mAP"] == 76.39
    assert out["MR-full-R1@0.5"] == 100.0 and out["MR-full-R1@0.7"] == 50.0  # IoU 1 and 0.5
    assert out["MR-full-mIoU"] == 75.0
    assert out["MR-full-mAP@0.5"] == 100.0 and out["MR-full-mAP@0.75"] == 50.0
    assert out["MR-full-mAP"] == 55.0  # (100 + 9 * 50) / 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop(), "no prediction for id(s) 2"),
        (lambda p: p.append({**p[0], "qid": 9}), "id(s) 9 are not in the ground truth"),
        (lambda p: p.append(dict(p[0])), "qid 1 repeats"),
        (lambda p: p[1].update(pred_relevant_windows=[[0, 2, float("nan")]]), "qid 2"),
        (lambda p: p[1].update(pred_relevant_windows=[[3, 2, 0.5]]), "end < start"),
        (lambda p: p[0].update(pred_relevant_windows=[["a", 2, 0.5]]), "'a' is not a number"),
        (lambda p: p[0].update(pred_relevant_windows=[]), "non-empty list"),
        (lambda p: p[0].update(pred_saliency_scores=[0.1, None]), "qid 1"),
        (lambda p: p[1].pop("pred_saliency_scores"), "lacks pred_saliency_scores"),
    ],
)
def test_score_qvhighlights_bad_predictions_name_the_id(tmp_path, change, message):
    rows = [dict(r) for r in PRED_ROWS]
    change(rows)
    gt = _write(tmp_path / "gt.jsonl", GT_ROWS)
    with pytest.raises(ScoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score_qvhighlights(gt, _write(tmp_path / "p.jsonl", rows))


def test_score_qvhighlights_match_number_false_keeps_shared_qids(tmp_path):
    gt = _write(tmp_path / "gt.jsonl", GT_ROWS)
    pred = _write(tmp_path / "p.jsonl", [PRED_ROWS[0], {**PRED_ROWS[1], "qid": 7}])
    out = score_qvhighlights(gt, pred, match_number=False)
    assert out["MR-full-mAP"] == 100.0 and out["HL-min-VeryGood-mAP"] == pytest.approx(44.44)


def test_score_qvhighlights_bad_ground_truth(tmp_path):
    pred = _write(tmp_path / "p.jsonl", PRED_ROWS)
    zero = [GT_ROWS[0], {**GT_ROWS[1], "relevant_windows": [[3, 3]]}]
    with pytest.raises(ScoreError, match="qid 2.*zero length"):
        score_qvhighlights(_write(tmp_path / "g.jsonl", zero), pred)
    past = [GT_ROWS[0], {**GT_ROWS[1], "relevant_clip_ids": [0, 2]}]  # int(4.9 / 2) = 2 clips
    with pytest.raises(ScoreError, match=r"qid 2.*\[0, 2\)"):
        score_qvhighlights(_write(tmp_path / "g.jsonl", past), pred)
    (tmp_path / "bad.jsonl").write_text('{"qid": 1,\n')
    with pytest.raises(ScoreError, match="bad.jsonl:1: not valid JSON"):
        score_qvhighlights(tmp_path / "bad.jsonl", pred)


def test_score_charades_sta(tmp_path):
    gt = tmp_path / "charades_test.txt"
    gt.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\n\nY6R7T 10 20##x\n")
    pred = _write(
        tmp_path / "p.jsonl",
        [
            {"qid": 1, "pred_relevant_windows": [[0.0, 6.9, 1.0]]},  # IoU 1
            {"qid": "3", "pred_relevant_windows": [[12, 20, 0.9], [10, 20, 0.1]]},  # IoU 0.8
        ],
    )
    out = score_charades_sta(gt, pred)
    assert out["MR-full-R1@0.3"] == 100.0 and out["MR-full-R1@0.7"] == 100.0
    assert out["MR-full-R1@0.85"] == 50.0 and out["MR-full-mIoU"] == 90.0
    assert not any("mAP" in k for k in out)
    with pytest.raises(ScoreError, match="no prediction for id"):
        score_charades_sta(
            gt, _write(tmp_path / "q.jsonl", [{"qid": 1, "pred_relevant_windows": [[0, 1, 1]]}])
        )
    gt.write_text("AO8RW 6.9 0.0##reversed\n")
    with pytest.raises(ScoreError, match="charades_test.txt:1: .*end < start"):
        score_charades_sta(gt, pred)
