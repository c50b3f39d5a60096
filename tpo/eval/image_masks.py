"""Image reasoning segmentation gIoU / cIoU as dvlab-research/LISA (`train_ds.py` validate with
`utils/utils.py` intersectionAndUnionGPU, K = 2, ignore_index = 255), for ReasonSeg / POPEN.

Per mask k (foreground class only): I_k = |pred & gt|, U_k = |pred| + |gt| - I_k, with GT pixels
of value 255 removed from both; IoU_k = I_k / (U_k + 1e-5), or 1.0 when U_k = 0 (no object, no
prediction). gIoU = mean IoU_k; cIoU = sum I_k / (sum U_k + 1e-10). Fractions (LISA prints them
so), computed in float64 (LISA sums float32 on the GPU: equal to ~1e-7).

Files: GT = a folder of PNG masks rasterised as LISA's `get_mask_from_json` (0 background,
1 target, 255 ignore; any other value raises); predictions = a folder with the same stems, each
`{stem}.png` (nonzero = foreground, at the GT's resolution) or `{stem}.npy` (float logits,
foreground where > 0 as LISA binarises `pred_masks > 0`; or a bool array).
missing="error" (default) raises on GT stems without a prediction; missing="empty" scores them
as empty masks. Unknown prediction stems raise unless allow_extra=true.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tpo.eval.io import ScoreError, flag
from tpo.eval.video_masks import read_mask_png

IGNORE = 255
MISSING = ("error", "empty")


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(I, U) of the foreground of bool `pred` `[H, W]` and GT labels `gt` `[H, W]` (0/1/255)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    target = gt == 1
    pred = pred & (gt != IGNORE)
    inter = int(np.count_nonzero(pred & target))
    return inter, int(np.count_nonzero(pred)) + int(np.count_nonzero(target)) - inter


def giou_ciou(inters: Sequence[int], unions: Sequence[int]) -> dict[str, float]:
    """{"gIoU", "cIoU"} from per-mask intersections and unions (LISA's formulas)."""
    inter, union = np.asarray(inters, dtype=np.float64), np.asarray(unions, dtype=np.float64)
    if inter.size == 0:
        raise ValueError("no masks to score")
    iou = inter / (union + 1e-5)
    iou[union == 0] += 1.0  # no-object target predicted empty
    return {"gIoU": float(iou.mean()), "cIoU": float(inter.sum() / (union.sum() + 1e-10))}


def _read_gt(path: Path) -> np.ndarray:
    gt = read_mask_png(path, labels=True)
    bad = np.setdiff1d(np.unique(gt), [0, 1, IGNORE])
    if bad.size:
        raise ScoreError(
            f"{path}: GT values {bad[:5].tolist()}; expected 0 (background), 1 (target), "
            "255 (ignore)"
        )
    return gt


def _read_pred(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        return read_mask_png(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ScoreError(f"{path}: not a readable .npy array ({err})") from err
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ScoreError(f"{path}: expected a [H, W] mask or logits, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ScoreError(f"{path}: logits must be finite numbers (found NaN/inf or non-numbers)")
    return array > 0


def score_reasonseg(
    gt: Path, pred: Path, *, missing: str = "error", allow_extra: bool | str = False
) -> dict[str, float]:
    """gIoU and cIoU (fractions) of the prediction folder `pred` against the GT folder `gt`."""
    if missing not in MISSING:
        raise ScoreError(f"option missing={missing!r}: expected one of {MISSING}")
    gt, pred = Path(gt), Path(pred)
    for folder in (gt, pred):
        if not folder.is_dir():
            raise ScoreError(f"{folder}: folder not found")
    gt_files = {p.stem: p for p in sorted(gt.glob("*.png"))}
    if not gt_files:
        raise ScoreError(f"{gt}: no GT PNG masks")
    preds: dict[str, Path] = {}
    for p in sorted(pred.iterdir()):
        if p.suffix not in (".png", ".npy"):
            continue
        if p.stem in preds:
            raise ScoreError(f"{p}: two predictions for {p.stem} ({preds[p.stem].name} too)")
        preds[p.stem] = p
    extra = sorted(set(preds) - set(gt_files))
    if extra and not flag(allow_extra, "allow_extra"):
        raise ScoreError(f"{pred}: prediction(s) {extra[:5]} have no GT mask in {gt}")
    absent = [s for s in gt_files if s not in preds]
    if absent and missing == "error":
        raise ScoreError(f"{pred}: no prediction for {absent[:5]} ({len(absent)} missing)")
    inters, unions = [], []
    for stem, path in gt_files.items():
        truth = _read_gt(path)
        mask = _read_pred(preds[stem]) if stem in preds else np.zeros(truth.shape, dtype=bool)
        if mask.shape != truth.shape:
            raise ScoreError(
                f"{preds[stem]}: mask size {mask.shape}, expected the GT's {truth.shape} "
                "(predictions are scored at the original resolution)"
            )
        i, u = intersection_union(mask, truth)
        inters.append(i)
        unions.append(u)
    return giou_ciou(inters, unions)
