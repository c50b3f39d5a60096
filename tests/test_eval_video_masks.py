"""J and F primitives (davis2017 `metrics.py` rules) and the MeViS / DAVIS scorers, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_dilation

from tpo.eval.io import ScoreError
from tpo.eval.mask_ops import (
    boundary_f,
    boundary_map,
    boundary_radius,
    disk,
    jaccard,
    video_jf,
)
from tpo.eval.scorers import get_scorer
from tpo.eval.video_masks import (
    bench_masks,
    db_statistics,
    score_davis,
    score_mevis,
    write_mask_png,
)


def test_disk_equals_skimage_disk():
    # skimage.morphology.disk(r) = {x^2 + y^2 <= r^2} on the (2r+1)^2 grid, written out by hand.
    assert disk(0).astype(int).tolist() == [[1]]
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).astype(int).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]
    assert disk(3).astype(int).tolist() == [
        [0, 0, 0, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 1, 0, 0, 0],
    ]
    with pytest.raises(ValueError):
        disk(1.5)


def test_boundary_radius():
    assert boundary_radius(10, 10) == 1  # ceil(0.008 * 14.14) = ceil(0.113)
    assert boundary_radius(480, 854) == 8  # ceil(0.008 * 979.65) = ceil(7.84)
    assert boundary_radius(480, 854, bound_th=3) == 3  # >= 1: pixels


def _square(top: int, left: int, size: int = 4, shape=(10, 10)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def _points(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(y), int(x)) for y, x in zip(*np.nonzero(mask))}


def test_boundary_map_by_hand():
    # 1-px object at (2, 2): it differs from its E/S/SE neighbours, and (1,1), (1,2), (2,1)
    # differ from their SE / S / E neighbour (2, 2): 4 boundary pixels, offset up-left.
    one = np.zeros((5, 5), dtype=bool)
    one[2, 2] = True
    assert _points(boundary_map(one)) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    # 4x4 square rows/cols 2..5: the ring of rows 1..5 x cols 1..5 (16 pixels).
    ring = {(y, x) for y in range(1, 6) for x in range(1, 6) if y in (1, 5) or x in (1, 5)}
    assert _points(boundary_map(_square(2, 2))) == ring
    # A full frame: last row compares east only, last column south only, corner never -> empty.
    assert not boundary_map(np.ones((4, 6), dtype=bool)).any()
    # Object in the bottom-right corner pixel: only its N, W, NW neighbours flag it.
    corner = np.zeros((3, 3), dtype=bool)
    corner[2, 2] = True
    assert _points(boundary_map(corner)) == {(1, 1), (1, 2), (2, 1)}
    # Stacks are handled frame by frame.
    stack = np.stack([one, np.zeros_like(one)])
    assert boundary_map(stack)[0].sum() == 4 and not boundary_map(stack)[1].any()


def test_f_and_j_hand_computed_10x10():
    # 10x10 frames: radius ceil(0.008 * sqrt(200)) = 1, disk(1) = the 3x3 cross.
    # GT square rows/cols 2..5 -> boundary ring R_g (rows 1..5 x cols 1..5);
    # prediction shifted right by 3 (cols 5..8) -> ring R_p (rows 1..5 x cols 4..8).
    # Pred ring pixels with a GT ring pixel in their cross: top row x = 4, 5, 6 (3), bottom row
    # x = 4, 5, 6 (3), left column x = 4 at y = 2..4 (next to GT column x = 5) (3) -> P = 9/16;
    # by symmetry R = 9/16, so F = 9/16. J: overlap column 5 (4 px), union 28 -> 1/7.
    gt, pred = _square(2, 2), _square(2, 5)
    assert jaccard(pred[None], gt[None])[0] == pytest.approx(1 / 7)
    assert boundary_f(pred[None], gt[None])[0] == pytest.approx(9 / 16)
    # With radius 2 (bound_th=2) the right column x = 8 is still 3 away from x = 5: top/bottom
    # x = 4..7 (8) + left column (3) -> 11/16.
    assert boundary_f(pred[None], gt[None], bound_th=2)[0] == pytest.approx(11 / 16)


def test_empty_cases_and_one_pixel_objects():
    empty = np.zeros((10, 10), dtype=bool)
    full = np.ones((10, 10), dtype=bool)
    sq = _square(2, 2)
    dot_gt, dot_pred, dot_far = (np.zeros((10, 10), dtype=bool) for _ in range(3))
    dot_gt[4, 4], dot_pred[4, 6], dot_far[8, 1] = True, True, True
    pred = np.stack([empty, empty, sq, full, dot_pred, dot_far])
    gt = np.stack([empty, sq, empty, full, dot_gt, dot_gt])
    # empty union -> J = 1; one empty -> J = 0; 1-px objects apart -> J = 0.
    assert jaccard(pred, gt).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    f = boundary_f(pred, gt)
    assert f[0] == 1.0  # both boundaries empty
    assert f[1] == 0.0 and f[2] == 0.0  # exactly one boundary empty
    assert f[3] == 1.0  # full frames: both boundaries empty although the masks are not
    # dots at (4,4) / (4,6): boundaries {(3,3),(3,4),(4,3),(4,4)} / {(3,5),(3,6),(4,5),(4,6)};
    # (3,5)-(3,4) and (4,5)-(4,4) touch in the cross: P = R = 2/4 -> F = 1/2.
    assert f[4] == pytest.approx(0.5)
    assert f[5] == 0.0  # both non-empty but nothing matched: P + R = 0 -> F = 0
    j, fm = video_jf(pred, gt)
    assert j == pytest.approx(2 / 6) and fm == pytest.approx(2.5 / 6)
    with pytest.raises(ValueError, match="shapes differ"):
        jaccard(pred, gt[:, :9])


def _reference_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Whole-frame dilation (scipy) of the official boundary maps, the official P/R/F rules."""
    fb, gb = boundary_map(pred), boundary_map(gt)
    fd, gd = binary_dilation(fb, disk(radius)), binary_dilation(gb, disk(radius))
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 or n_gt == 0:
        return float(n_fg == n_gt)
    p, r = (fb & gd).sum() / n_fg, (gb & fd).sum() / n_gt
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_sparse_matching_equals_dense_dilation():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 23, 31)) < 0.3
    gt = rng.random((6, 23, 31)) < 0.6
    for radius in (1, 2, 3):
        ours = boundary_f(pred, gt, bound_th=radius)
        ref = [_reference_f(p, g, radius) for p, g in zip(pred, gt)]
        np.testing.assert_array_equal(ours, ref)


def test_db_statistics_by_hand():
    # 8 frames: bin edges round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7];
    # first bin v[0:3], last bin v[5:8].
    v = np.array([1, 1, 1, 0.5, 0.5, 0, 0, 0])
    assert db_statistics(v) == pytest.approx((0.5, 3 / 8, 1.0))
    assert db_statistics(np.array([1.0, 0.0])) == pytest.approx((0.5, 0.5, 1.0))


# ---------------------------------------------------------------- MeViS


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _mevis(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    sq, dot = _square(2, 2), np.zeros((10, 10), dtype=bool)
    dot[4, 4] = True
    left, right = sq.copy(), sq.copy()
    left[:, 4:], right[:, :4] = False, False
    meta = {
        "videos": {
            "v1": {
                "frames": ["00000", "00001", "00002"],
                "expressions": {
                    "0": {"exp": "a", "anno_id": ["1", "2"]},
                    "1": {"exp": "b", "anno_id": ["3"]},
                },
            },
            "v2": {"frames": ["00000"], "expressions": {"0": {"exp": "c", "anno_id": ["4"]}}},
        }
    }
    masks = {
        "1": [_rle(left), None, _rle(left)],  # union of 1 and 2 = the square on frames 0 and 2
        "2": [_rle(right), None, _rle(right)],
        "3": [_rle(dot)] * 3,
        "4": [_rle(dot)],
    }
    (gt / "meta_expressions.json").write_text(json.dumps(meta))
    (gt / "mask_dict.json").write_text(json.dumps(masks))
    dot_pred = np.zeros((10, 10), dtype=bool)
    dot_pred[4, 6] = True
    frames = {"0": [_square(2, 5), np.zeros((10, 10), bool), sq], "1": [dot_pred] * 3}
    for eid, ms in frames.items():
        for i, m in enumerate(ms):
            write_mask_png(pred / "v1" / eid / f"{i:05d}.png", m)
    return gt, pred  # v2 has no predictions


def test_score_mevis_hand_computed(tmp_path):
    gt, pred = _mevis(tmp_path)
    out = score_mevis(gt, pred)
    # expression v1/0: frames (J, F) = (1/7, 9/16), (1, 1) empty/empty, (1, 1) exact;
    # v1/1: dots 2 px apart on every frame (0, 1/2); v2/0: video missing -> (0, 0) official.
    j = np.mean([(1 / 7 + 2) / 3, 0.0, 0.0])
    f = np.mean([(9 / 16 + 2) / 3, 0.5, 0.0])
    assert out["J"] == pytest.approx(j) and out["F"] == pytest.approx(f)
    assert out["J&F"] == pytest.approx((j + f) / 2)
    assert get_scorer("mevis") is score_mevis
    assert score_mevis(gt / "meta_expressions.json", pred) == out  # the json path works too
    with pytest.raises(ScoreError, match="v2"):
        score_mevis(gt, pred, missing="error")
    # a missing expression folder also scores 0 (v1/1 had J 0, F 1/2 per frame)
    for png in (pred / "v1" / "1").iterdir():
        png.unlink()
    (pred / "v1" / "1").rmdir()
    out = score_mevis(gt, pred)
    assert out["F"] == pytest.approx(np.mean([(9 / 16 + 2) / 3, 0.0, 0.0]))
    with pytest.raises(ScoreError, match="no predictions for expression 1 of v1"):
        score_mevis(gt, pred, missing="error")


def test_score_mevis_bad_predictions(tmp_path):
    gt, pred = _mevis(tmp_path)
    write_mask_png(pred / "v9" / "0" / "00000.png", np.zeros((10, 10), bool))
    with pytest.raises(ScoreError, match="v9"):
        score_mevis(gt, pred)
    assert score_mevis(gt, pred, allow_extra=True)["J"] > 0
    write_mask_png(pred / "v1" / "1" / "00001.png", np.zeros((12, 10), bool))
    with pytest.raises(ScoreError, match=r"00001.png: mask size \(12, 10\)"):
        score_mevis(gt, pred, allow_extra=True)
    (pred / "v1" / "1" / "00001.png").unlink()
    with pytest.raises(ScoreError, match="00001.png: mask file not found"):
        score_mevis(gt, pred, allow_extra=True)


# ---------------------------------------------------------------- DAVIS


def _png_labels(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (253 * 3))
    img.save(path)


def _davis(tmp_path: Path, pred_frames: list[np.ndarray]) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    a, b = _square(0, 0, 3), _square(5, 5, 3)
    labels = (a * 1 + b * 2).astype(np.uint8)
    void = labels.copy()
    void[9, 0] = 255  # void in frame 0: background, not object 255 (objects = 1..2)
    for i, frame in enumerate([void, labels, labels, labels]):
        _png_labels(gt / "s1" / f"{i:05d}.png", frame)
    for i, frame in enumerate(pred_frames):
        _png_labels(pred / "s1" / f"{i:05d}.png", frame)
    return gt, pred


def test_score_davis_semi_supervised_hand_computed(tmp_path):
    a, b = _square(0, 0, 3), _square(5, 5, 3)
    right = (a * 1 + b * 2).astype(np.uint8)
    only_b = (b * 2).astype(np.uint8)
    # frames 1 and 2 are scored: object 1 (J, F) = (1, 1) then (0, 0) (missed);
    # object 2 = (1, 1) twice. Object 1: M 0.5, Recall 0.5, Decay 1 - 0; object 2: 1, 1, 0.
    gt, pred = _davis(tmp_path, [np.zeros_like(right), right, only_b, np.zeros_like(right)])
    out = score_davis(gt, pred)
    expected = {"J&F-Mean": 0.75, "J-Mean": 0.75, "J-Recall": 0.75, "J-Decay": 0.5}
    expected |= {"F-Mean": 0.75, "F-Recall": 0.75, "F-Decay": 0.5}
    assert out == pytest.approx(expected)
    assert list(out) == list(expected)  # the official csv's order
    assert get_scorer("davis") is score_davis
    # all 4 frames: object 1 J = [0, 1, 0, 0] (frames 0 and 3 predicted empty).
    full = score_davis(gt, pred, drop_ends=False)
    assert full["J-Mean"] == pytest.approx((0.25 + 0.5) / 2)


def test_score_davis_bad_predictions(tmp_path):
    a = _square(0, 0, 3)
    three = (a * 3).astype(np.uint8)
    gt, pred = _davis(tmp_path, [three] * 4)
    with pytest.raises(ScoreError, match="object id 3 but the GT's first frame has 2"):
        score_davis(gt, pred)
    (pred / "s1" / "00002.png").unlink()
    _png_labels(pred / "s1" / "00002.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(ScoreError, match=r"00002.png: mask size \(8, 10\)"):
        score_davis(gt, pred)


def test_bench_masks_runs_small():
    out = bench_masks(n_frames=3, h=40, w=60)
    assert out["frames"] == 3 and 0 <= out["mean_J"] <= 1 and 0 <= out["mean_F"] <= 1
    assert out["J_s"] >= 0 and out["F_s"] >= 0
