"""LaSOT (pytracking analysis) and GOT-10k (toolkit) tracking metrics on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tpo.eval.io import ScoreError
from tpo.eval.scorers import get_scorer
from tpo.eval.tracking import got10k_iou, lasot_errors, score_got10k, score_lasot


def _rows(path: Path, rows: list[list[float]], sep: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sep.join(str(v) for v in r) + "\n" for r in rows))


def test_lasot_errors_by_hand():
    anno = np.array([[0, 0, 10, 10]] * 4, dtype=float)
    pred = np.array([[50, 50, 5, 5], [5, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10]], dtype=float)
    overlap, err, err_norm = lasot_errors(pred, anno, np.array([1, 1, 1, 0], bool))
    # frame 0 = GT; frame 1: pixel-inclusive x 0..9 vs 5..14 -> 50 / 150; centres 4.5 vs 9.5;
    # frame 2: zero size -> frame 1's box; frame 3: invisible -> -1, inf, inf.
    np.testing.assert_allclose(overlap, [1, 1 / 3, 1 / 3, -1])
    np.testing.assert_allclose(err, [0, 5, 5, np.inf])
    np.testing.assert_allclose(err_norm, [0, 0.5, 0.5, np.inf])
    # pixel-inclusive: a 1x1 box on itself has IoU 1 (x2 = x + w - 1 = x)
    one = np.array([[3, 3, 1, 1], [3, 3, 1, 1]], dtype=float)
    assert lasot_errors(one, one)[0].tolist() == [1.0, 1.0]
    # a visible GT box with w = 0: overlap -1, centre error inf, normalised error -1
    anno = np.array([[0, 0, 4, 4], [0, 0, 0, 4]], dtype=float)
    overlap, err, err_norm = lasot_errors(np.array([[0, 0, 4, 4]] * 3, float), anno)
    assert overlap[1] == -1 and err[1] == np.inf and err_norm[1] == -1


def _lasot(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a = gt / "cat" / "cat-1"  # the official {class}/{class-N} layout
    _rows(a / "groundtruth.txt", [[0, 0, 10, 10]] * 4)
    (a / "full_occlusion.txt").write_text("0,0,0,1\n")
    (a / "out_of_view.txt").write_text("0,0,0,0\n")
    _rows(gt / "dog" / "dog-2" / "groundtruth.txt", [[10, 10, 20, 20]] * 2 + [[10, 10, 0, 5]])
    _rows(pred / "cat-1.txt", [[50, 50, 5, 5], [5, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10]], "\t")
    _rows(pred / "dog-2.txt", [[10, 10, 20, 20]] * 4)  # one row too many: dropped
    (pred / "cat-1_time.txt").write_text("0.01\n")  # pytracking's timing file: ignored
    return gt, pred


def test_score_lasot_hand_computed(tmp_path):
    out = score_lasot(*_lasot(tmp_path))
    # cat-1: overlaps [1, 1/3, 1/3, -1]: fraction > t is 3/4 for t = 0..0.30 (7 thresholds),
    # 1/4 for t = 0.35..0.95 (13), 0 at t = 1. dog-2: overlaps [1, 1, -1]: 2/3 for t < 1 (20).
    auc_cat = (7 * 0.75 + 13 * 0.25) / 21
    auc_dog = (20 * 2 / 3) / 21
    assert out["AUC"] == pytest.approx(100 * (auc_cat + auc_dog) / 2)
    assert out["OP50"] == pytest.approx(100 * (0.25 + 2 / 3) / 2)
    assert out["OP75"] == pytest.approx(100 * (0.25 + 2 / 3) / 2)
    # centre errors cat [0, 5, 5, inf] -> 3/4 <= 20 px; dog [0, 0, inf] -> 2/3
    assert out["Precision"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    # normalised: cat [0, .5, .5, inf] -> 1/4; dog [0, 0, -1 (visible, w = 0)] -> 3/3
    assert out["Norm Precision"] == pytest.approx(100 * (0.25 + 1.0) / 2)
    assert get_scorer("lasot") is score_lasot


def test_score_lasot_bad_and_missing(tmp_path):
    gt, pred = _lasot(tmp_path)
    (pred / "dog-2.txt").unlink()
    with pytest.raises(ScoreError, match="no result for sequence dog-2"):
        score_lasot(gt, pred)
    only_cat = score_lasot(gt, pred, skip_missing=True)
    assert only_cat["Precision"] == pytest.approx(75.0)
    _rows(pred / "dog-2.txt", [[10, 10, 20, 20]] * 2)
    with pytest.raises(ScoreError, match="2 boxes for 3 GT frames"):
        score_lasot(gt, pred)
    _rows(pred / "dog-2.txt", [[10, 10, 20, 20], [1, 1, -2, 3], [1, 1, 1, 1]])
    with pytest.raises(ScoreError, match="dog-2.txt: row 2 has a negative width"):
        score_lasot(gt, pred)
    _rows(pred / "dog-2.txt", [[10, 10, 20, 20], [1, 1, "nan", 3], [1, 1, 1, 1]])
    with pytest.raises(ScoreError, match="dog-2.txt:2: .* NaN"):
        score_lasot(gt, pred)
    _rows(pred / "dog-2.txt", [[10, 10, 20, 20]] * 3)
    _rows(pred / "eel-3.txt", [[10, 10, 20, 20]] * 3)
    with pytest.raises(ScoreError, match="eel-3"):
        score_lasot(gt, pred)
    assert score_lasot(gt, pred, allow_extra=True)["AUC"] > 0


def test_got10k_iou_clips_to_image():
    # a GT box past the 20x20 image: 15,15,10,10 -> 15,15,5,5
    anno = np.array([[15, 15, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[15, 15, 5, 5], [-5, -5, 10, 10]], float)  # second -> 0,0,10,10 (w kept)
    np.testing.assert_allclose(got10k_iou(pred, anno, (20, 20)), [1.0, 1.0])
    np.testing.assert_allclose(got10k_iou(pred, anno, None), [0.25, 25 / 175])


def _got(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    name = "GOT-10k_Val_000001"
    seq = gt / name
    _rows(
        seq / "groundtruth.txt", [[0, 0, 10, 10], [0, 0, 10, 10], [15, 15, 10, 10], [0, 0, 10, 10]]
    )
    (seq / "cover.label").write_text("8\n8\n4\n0\n")  # last frame: target absent
    (seq / "meta_info.ini").write_text("[METAINFO]\nurl: x\nresolution: (20, 20)\n")
    (gt / "list.txt").write_text(name + "\n")
    # repetition 1: frame 0 (excluded) far off; frame 1 IoU 50/150; frame 2 IoU 1 after clipping
    _rows(
        pred / name / f"{name}_001.txt",
        [[3, 3, 3, 3], [5, 0, 10, 10], [15, 15, 5, 5], [9, 9, 1, 1]],
    )
    # repetition 2: frame 1 exact; frame 2 clipped to 0,0,10,10 vs 15,15,5,5 -> 0
    _rows(
        pred / name / f"{name}_002.txt",
        [[3, 3, 3, 3], [0, 0, 10, 10], [-5, -5, 10, 10], [9, 9, 1, 1]],
    )
    (pred / name / f"{name}_time.txt").write_text("0.1\n")
    return gt, pred


def test_score_got10k_hand_computed(tmp_path):
    gt, pred = _got(tmp_path)
    out = score_got10k(gt, pred)
    # pooled IoUs [1/3, 1, 1, 0] (first frame and the absent frame excluded)
    assert out == pytest.approx({"AO": (1 / 3 + 2) / 4, "SR0.5": 0.5, "SR0.75": 0.5})
    # without clipping: frame 2 of rep. 1 is 15,15,5,5 vs 15,15,10,10 -> 0.25
    unclipped = score_got10k(gt, pred, clip=False)
    assert unclipped["AO"] == pytest.approx((1 / 3 + 0.25 + 1 + 0) / 4)
    assert unclipped["SR0.5"] == pytest.approx(0.25)
    assert get_scorer("got10k") is score_got10k


def test_score_got10k_bad_inputs(tmp_path):
    gt, pred = _got(tmp_path)
    name = "GOT-10k_Val_000001"
    _rows(pred / name / f"{name}_002.txt", [[3, 3, 3, 3]] * 3)
    with pytest.raises(ScoreError, match="_002.txt: 3 boxes for 4 GT frames"):
        score_got10k(gt, pred)
    (pred / name / f"{name}_001.txt").unlink()
    (pred / name / f"{name}_002.txt").unlink()
    with pytest.raises(ScoreError, match="no results"):
        score_got10k(gt, pred)
    _rows(pred / name / f"{name}_001.txt", [[3, 3, 3, 3]] * 4)
    (gt / name / "meta_info.ini").unlink()
    with pytest.raises(ScoreError, match="meta_info.ini: file not found"):
        score_got10k(gt, pred)
    # 3,3,3,3 vs 0,0,10,10 -> 9/100 on frame 1, disjoint from 15,15,10,10 on frame 2
    assert score_got10k(gt, pred, clip=False)["AO"] == pytest.approx((0.09 + 0) / 2)
