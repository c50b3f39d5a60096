"""Referring-expression boxes (RefCOCO/+/g style) Acc@0.5 as QwenLM/Qwen-VL
`eval_mm/evaluate_grounding.py`: continuous IoU (no +1) of xyxy boxes, right when IoU >= 0.5;
an unparseable answer is wrong.

Files:
- GT: json list of {"id", "video", "frame_index", "time", "expression", "bbox": [x, y, w, h]
  (COCO xywh pixels), "width", "height"} (the toy world's `refcoco_{split}.json`).
- predictions: jsonl (or a json list) of {"id", "bbox": [x1, y1, x2, y2]} in pixels, or
  {"id", "text": answer}. text_format="pixels" (default) reads the first four numbers of the
  text as x1, y1, x2, y2 pixels; text_format="qwen" reads the official pattern
  "(x1,y1),(x2,y2)" on Qwen-VL's 0..999 grid (divided by 999, times width / height) and
  computes in float32 as the official. Fewer numbers / no match: IoU 0 (wrong).
- A "bbox" that is not 4 finite numbers with x2 >= x1, y2 >= y1 raises (it is not a model's
  free text). missing="error" (default) raises on GT ids without a prediction; missing="wrong"
  counts them wrong. Unknown or repeated ids raise.
Keys: "Acc@0.5" (the official "Precision @ 1") and "mIoU", fractions.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tpo.eval.io import (
    ScoreError,
    check_ids,
    finite,
    ident,
    need,
    numbers,
    read_json,
    read_records,
    unique,
)

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
QWEN_PATTERN = re.compile(r"\((.*?)\),\((.*?)\)")
TEXT_FORMATS = ("pixels", "qwen")
MISSING = ("error", "wrong")


def box_iou(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """`[n]` IoU of paired xyxy boxes `[n, 4]` (continuous: area = (x2-x1)*(y2-y1)); 0 where the
    union is not positive. Computed in the inputs' float dtype (float64 unless both float32)."""
    p, g = np.asarray(pred_xyxy), np.asarray(gt_xyxy)
    if p.dtype != np.float32 or g.dtype != np.float32:
        p, g = p.astype(np.float64), g.astype(np.float64)
    p, g = p.reshape(-1, 4), g.reshape(-1, 4)
    if len(p) != len(g):
        raise ValueError(f"{len(p)} predicted boxes for {len(g)} GT boxes")
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    wh = np.clip(np.minimum(p[:, 2:], g[:, 2:]) - np.maximum(p[:, :2], g[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = area_p + area_g - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, 0).astype(p.dtype)


def box_accuracy(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray, thr: float = 0.5) -> float:
    """Fraction of paired xyxy boxes `[n, 4]` with IoU >= `thr` (Acc@0.5 for thr = 0.5)."""
    iou = box_iou(pred_xyxy, gt_xyxy)
    if iou.size == 0:
        raise ValueError("no boxes to score")
    return float(np.mean(iou >= thr))


def parse_box_text(text: str, width: float, height: float, text_format: str = "pixels"):
    """xyxy pixels `[4]` from a model answer, or None when it names no box (counts as wrong).

    "pixels": the first four numbers; "qwen": Qwen-VL's "(x1,y1),(x2,y2)" on a 0..999 grid,
    scaled to the image in float32 as the official.
    """
    if text_format == "qwen":
        found = QWEN_PATTERN.findall(text)
        if not found or "," not in found[0][0] or "," not in found[0][1]:
            return None
        try:
            corners = [float(v) for part in found[0] for v in part.split(",")]
        except ValueError:
            return None
        if len(corners) != 4:
            return None
        box = np.asarray(corners, dtype=np.float32) / 999
        box[0::2] *= width
        box[1::2] *= height
        return box
    values = NUMBER.findall(text)
    if len(values) < 4:
        return None
    return np.asarray([float(v) for v in values[:4]], dtype=np.float64)


def _read_gt(path: Path) -> dict[str, tuple[np.ndarray, float, float]]:
    """id -> (GT xyxy [4], width, height)."""
    items = read_json(path)
    if not isinstance(items, list) or not items:
        raise ScoreError(f"{path}: expected a non-empty JSON list of box annotations")
    out: dict[str, tuple[np.ndarray, float, float]] = {}
    for i, obj in enumerate(items):
        where = f"{path}:[{i}]"
        key = ident(need(obj, "id", where, "the annotation id"), where)
        where = f"{where} (id {key})"
        if key in out:
            raise ScoreError(f"{where}: id {key} repeats")
        x, y, w, h = numbers(need(obj, "bbox", where, "[x, y, w, h]"), where, "[x, y, w, h]", 4)
        if w < 0 or h < 0:
            raise ScoreError(f"{where}: bbox [x, y, w, h] has a negative size (w={w}, h={h})")
        width = finite(need(obj, "width", where, "pixels"), where, "the width in pixels")
        height = finite(need(obj, "height", where, "pixels"), where, "the height in pixels")
        out[key] = (np.array([x, y, x + w, y + h]), width, height)
    return out


def score_refcoco(
    gt: Path, pred: Path, *, text_format: str = "pixels", missing: str = "error"
) -> dict[str, float]:
    """Acc@0.5 and mIoU (fractions) of predicted boxes; see the module docstring."""
    if text_format not in TEXT_FORMATS:
        raise ScoreError(f"option text_format={text_format!r}: expected one of {TEXT_FORMATS}")
    if missing not in MISSING:
        raise ScoreError(f"option missing={missing!r}: expected one of {MISSING}")
    truth = _read_gt(Path(gt))
    records = read_records(Path(pred), '{"id", "bbox": [x1, y1, x2, y2]} or {"id", "text"}')
    keyed = [(ident(need(o, "id", w, "the annotation id"), w), w, o) for w, o in records]
    unique(((k, w) for k, w, _ in keyed), Path(pred))
    check_ids(truth, (k for k, _, _ in keyed), Path(pred), allow_missing=missing == "wrong")
    ious = dict.fromkeys(truth, 0.0)
    for key, where, obj in keyed:
        gt_box, width, height = truth[key]
        where = f"{where} (id {key})"
        if "bbox" in obj:
            box = np.asarray(numbers(obj["bbox"], where, "[x1, y1, x2, y2] pixels", 4))
            if box[2] < box[0] or box[3] < box[1]:
                raise ScoreError(f"{where}: bbox {obj['bbox']} has x2 < x1 or y2 < y1")
        elif "text" in obj:
            if not isinstance(obj["text"], str):
                raise ScoreError(f"{where}: 'text' must be a string, got {obj['text']!r}")
            box = parse_box_text(obj["text"], width, height, text_format)
            if box is None:
                continue  # names no box: wrong
            if box.dtype == np.float32:
                gt_box = gt_box.astype(np.float32)
        else:
            raise ScoreError(f"{where}: expected a 'bbox' [x1, y1, x2, y2] or a 'text' answer")
        ious[key] = float(box_iou(box, gt_box)[0])
    values = np.array(list(ious.values()))
    return {"Acc@0.5": float(np.mean(values >= 0.5)), "mIoU": float(values.mean())}
