"""NExT-GQA grounded QA metrics as doc-doc/NExT-GQA `eval_ground.py` (+ `eval_next.py` for Acc@QA).

Files:
- GT `gsub_{split}.json`: {vid: {duration, fps, location: {qid: [[s, e], ...]}}} (seconds).
- predictions json keyed "{vid}_{qid}": either a window [s, e] (seconds), or
  {"window": [s, e], "prediction": answer index, "answer": GT answer index (optional)}
  ("prediction"/"answer" named as in the official `{split}-res.json`).
- option qa=PATH: the official `{split}-res.json` ({key: {"prediction", "answer"}}), merged in.
- option qa_gt=PATH: the official `{split}.csv` (video_id, qid, answer), GT answers from it.
Acc@QA / Acc@GQA are reported only when predicted answers are given somewhere.

Per question, over its GT segments: max IoU (intersection / hull) and max IoP (intersection /
predicted length), both floored at 0; a zero-length prediction has IoU 0 and IoP 1 if it lies
inside a GT segment (bounds included). Acc@GQA = answer right AND IoP >= 0.5.
Missing predictions count as wrong (IoU = IoP = 0) by default; skip_missing=true reproduces the
official, which skips questions without a window (and Acc@QA then skips those without an answer).
Keys not in the GT are ignored, as the official does. Values in percent, not rounded (the
official prints them with one decimal).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tpo.eval.io import ScoreError, finite, flag, need, read_json, read_text, window

GQA_THRESHOLDS = (0.3, 0.5)


def iou_iop(pred: Sequence[float], gt: np.ndarray) -> tuple[float, float]:
    """Max IoU and max IoP of one predicted window [2] over GT windows [g, 2] (floored at 0)."""
    s, e = float(pred[0]), float(pred[1])
    gt = np.asarray(gt, dtype=float).reshape(-1, 2)
    if s == e:  # zero-length prediction: inside a GT segment or not
        inside = np.any((gt[:, 0] <= s) & (s <= gt[:, 1]))
        return 0.0, 1.0 if inside else 0.0
    inter = np.minimum(gt[:, 1], e) - np.maximum(gt[:, 0], s)  # negative when disjoint
    hull = np.maximum(gt[:, 1], e) - np.minimum(gt[:, 0], s)
    return max(0.0, float(np.max(inter / hull))), max(0.0, float(np.max(inter / (e - s))))


def _answer_key(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ScoreError(f"{where}: answer {value!r}, expected an option index or text")
    return str(value).strip()


def _read_gt(path: Path) -> dict[str, tuple[float, np.ndarray]]:
    """'{vid}_{qid}' -> (duration, GT windows [g, 2])."""
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise ScoreError(f"{path}: expected an object {{vid: {{duration, fps, location}}}}")
    out: dict[str, tuple[float, np.ndarray]] = {}
    for vid, entry in data.items():
        at = f"{path}: video {vid}"
        duration = finite(need(entry, "duration", at, "seconds"), at, "the duration in seconds")
        location = need(entry, "location", at, "{qid: [[start, end], ...]}")
        if not isinstance(location, dict):
            raise ScoreError(f"{at}: location must be {{qid: [[start, end], ...]}}")
        for qid, spans in location.items():
            key = f"{vid}_{qid}"
            if not isinstance(spans, list) or not spans:
                raise ScoreError(f"{at}: question {key}: expected a non-empty [[start, end], ...]")
            w = [window(x, f"{at}: question {key}", "[start, end] seconds") for x in spans]
            out[key] = (duration, np.array(w))
    return out


def _read_qa_gt(path: Path) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(read_text(path)))
    missing = [c for c in ("video_id", "qid", "answer") if c not in (reader.fieldnames or [])]
    if missing:
        raise ScoreError(f"{path}:1: header lacks column(s) {missing}")
    return {
        f"{row['video_id']}_{row['qid']}": _answer_key(row["answer"], f"{path}:{reader.line_num}")
        for row in reader
    }


def _read_predictions(
    path: Path, truth: dict, normalized: bool
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, str]]:
    """Windows (seconds), predicted answers and GT answers found in a predictions file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ScoreError(f'{path}: expected an object {{"vid_qid": [start, end] or {{window}}}}')
    windows, answers, gt_answers = {}, {}, {}
    for key, value in data.items():
        if key not in truth:
            continue  # the official iterates the GT; other questions are ignored
        at = f"{path}: question {key}"
        raw = value
        if isinstance(value, dict):
            raw = value.get("window")
            if "prediction" in value:
                answers[key] = _answer_key(value["prediction"], at)
            if "answer" in value:
                gt_answers[key] = _answer_key(value["answer"], at)
        if raw is None:
            continue
        w = window(raw, at, "[start, end] seconds with end >= start")
        if normalized:  # official 'gs' mode: fractions of the duration, rounded to 0.1 s
            w = list(np.round(np.asarray(w) * truth[key][0], 1))
        windows[key] = w
    return windows, answers, gt_answers


def score_nextgqa(
    gt: Path,
    pred: Path,
    *,
    qa: str | None = None,
    qa_gt: str | None = None,
    skip_missing: bool | str = False,
    normalized: bool | str = False,
) -> dict[str, float]:
    """NExT-GQA mIoP, IoP@0.3/0.5, mIoU, IoU@0.3/0.5 (+ Acc@QA, Acc@GQA), percent.

    Options: qa (official res.json with predicted + GT answers), qa_gt (official csv with GT
    answers), skip_missing (official skipping of unpredicted questions; default counts them
    wrong), normalized (windows given as fractions of the duration, the official 'gs' mode).
    """
    skip = flag(skip_missing, "skip_missing")
    truth = _read_gt(Path(gt))
    windows, answers, gt_answers = _read_predictions(
        Path(pred), truth, flag(normalized, "normalized")
    )
    if qa is not None:
        _, more_answers, more_gt = _read_predictions(Path(qa), truth, False)
        answers.update(more_answers)
        gt_answers.update(more_gt)
    if qa_gt is not None:
        gt_answers.update(_read_qa_gt(Path(qa_gt)))
    with_qa = bool(answers)
    if with_qa:
        lacking = [k for k in answers if k not in gt_answers]
        if lacking:
            raise ScoreError(
                f"{pred}: no GT answer for question(s) {', '.join(lacking[:5])}; give "
                '"answer" in the predictions, or qa=RES_JSON / qa_gt=SPLIT_CSV'
            )
    if not windows and not skip:
        raise ScoreError(f"{pred}: no window for any question of {gt}")
    ious, iops, gqa = [], [], []
    for key, (_, gt_windows) in truth.items():
        correct = key in answers and answers[key] == gt_answers[key]
        if key not in windows:
            if skip:
                continue
            iou, iop = 0.0, 0.0
        else:
            iou, iop = iou_iop(windows[key], gt_windows)
        ious.append(iou)
        iops.append(iop)
        gqa.append(correct and iop >= 0.5)
    if not ious:
        raise ScoreError(f"{pred}: no window for any question of {gt}")
    n = len(ious)  # sums and ratios in the official's order, so the floats match it exactly
    out = {"mIoP": sum(iops) / n * 100}
    out.update({f"IoP@{t}": sum(v >= t for v in iops) * 1.0 / n * 100 for t in GQA_THRESHOLDS})
    out["mIoU"] = sum(ious) / n * 100
    out.update({f"IoU@{t}": sum(v >= t for v in ious) * 1.0 / n * 100 for t in GQA_THRESHOLDS})
    if with_qa:
        asked = [k for k in truth if k in answers or not skip]
        right = sum(k in answers and answers[k] == gt_answers[k] for k in asked)
        out["Acc@QA"] = right * 100.0 / len(asked)
        out["Acc@GQA"] = sum(gqa) * 1.0 / n * 100
    return out
