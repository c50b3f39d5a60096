"""Moment retrieval metrics as moment_detr's standalone_eval (+ CG-DETR's R1 range and mIoU).

Plain functions on arrays (fractions in [0, 1]) for training code, and the QVHighlights /
Charades-STA scorers (percent, rounded to 2 decimals as the official).

Official semantics kept on purpose:
- mAP uses the first `max_pred_windows` (10) windows *as listed*, then sorts them by score
  (descending, ties keep their listed order); R1 and mIoU use the first listed window.
- Each prediction is matched greedily to the unmatched GT window of highest IoU (ties: the later
  GT window, as numpy's reversed argsort gives); a TP if that IoU >= t; VOC-interpolated AP.
- Length splits keep, per query, the GT windows whose length is in (lo, hi] and the queries that
  keep any; 'full' keeps everything. A split without queries has no keys (the official crashes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tpo.eval.highlights import N_ANNOTATORS, full_saliency, highlight_metrics, num_clips
from tpo.eval.io import (
    ScoreError,
    check_ids,
    finite,
    flag,
    ident,
    need,
    numbers,
    read_records,
    read_text,
    window,
)

MAP_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
R1_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.3, 0.95, 14))
LENGTH_SPLITS = {"full": None, "short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0)}
MAX_PRED_WINDOWS = 10


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Paired IoU of windows [n, 2] and [n, 2] -> [n] (0 where the hull is empty).

    The official's paired form: intersection over the hull of both windows, which equals the
    union whenever they overlap.
    """
    pred, gt = np.asarray(pred, dtype=float), np.asarray(gt, dtype=float)
    inter = np.maximum(0.0, np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]))
    hull = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def temporal_iou_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every window of a [..., n, 2] with every window of b [..., m, 2] -> [..., n, m].

    An empty union (two zero-length windows) gives 0 (the official gives NaN there).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    len_a = a[..., :, 1] - a[..., :, 0]
    len_b = b[..., :, 1] - b[..., :, 0]
    left = np.maximum(a[..., :, None, 0], b[..., None, :, 0])
    right = np.minimum(a[..., :, None, 1], b[..., None, :, 1])
    inter = np.clip(right - left, 0.0, None)
    union = len_a[..., :, None] + len_b[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def top1_iou(pred: np.ndarray, gt_windows: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """IoU of each query's top-1 window [n, 2] with its best GT window -> [n].

    gt_windows: [n, 2] (one GT window per query) or a sequence of [g_i, 2] arrays; the best GT is
    the first of highest IoU (official), then the paired IoU is taken.
    """
    pred = np.asarray(pred, dtype=float).reshape(-1, 2)
    if isinstance(gt_windows, np.ndarray) and gt_windows.ndim == 2:
        chosen = gt_windows.astype(float)
    else:
        chosen = np.empty_like(pred)
        for i, g in enumerate(gt_windows):
            g = np.asarray(g, dtype=float).reshape(-1, 2)
            chosen[i] = g[int(np.argmax(temporal_iou_cross(pred[i : i + 1], g)[0]))]
    return temporal_iou(pred, chosen)


def recall_at_1(
    pred: np.ndarray, gt_windows: Sequence[np.ndarray] | np.ndarray, threshold: float = 0.5
) -> float:
    """R1@threshold as a fraction: share of queries whose top-1 window [n, 2] has IoU >= it."""
    return float(np.mean(top1_iou(pred, gt_windows) >= threshold))


def mean_iou(pred: np.ndarray, gt_windows: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean top-1 IoU as a fraction."""
    return float(np.mean(top1_iou(pred, gt_windows)))


def _pad(arrays: Sequence[np.ndarray], width: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(arrays), width, cols))
    valid = np.zeros((len(arrays), width), dtype=bool)
    for i, a in enumerate(arrays):
        k = min(len(a), width)
        out[i, :k] = a[:k, :cols]
        valid[i, :k] = True
    return out, valid


def average_precision(
    pred: Sequence[np.ndarray],
    gt: Sequence[np.ndarray],
    thresholds: Sequence[float] = MAP_THRESHOLDS,
) -> np.ndarray:
    """Per-query VOC-interpolated AP at each IoU threshold -> [q, t] (fractions).

    pred: per query [r, 3] (start, end, score) windows, already cut to the windows to use;
    gt: per query [g, 2] windows (at least one). Official `compute_average_precision_detection`.
    """
    thr = np.asarray(thresholds, dtype=float)
    n_pred = max((len(p) for p in pred), default=0)
    p, p_valid = _pad(pred, max(n_pred, 1), 3)  # [q, r, 3]
    g, g_valid = _pad(gt, max(len(x) for x in gt), 2)  # [q, g, 2]
    key = np.where(p_valid, -p[..., 2], np.inf)
    order = np.argsort(key, axis=1, kind="stable")  # score descending, ties as listed
    p = np.take_along_axis(p, order[..., None], 1)
    p_valid = np.take_along_axis(p_valid, order, 1)
    iou = np.where(g_valid[:, None, :], temporal_iou_cross(p[..., :2], g), -np.inf)  # [q, r, g]
    q, r, n_gt = iou.shape
    locked = np.zeros((q, len(thr), n_gt), dtype=bool)
    tp = np.zeros((q, len(thr), r))
    fp = np.zeros((q, len(thr), r))
    rows, cols = np.arange(q)[:, None], np.arange(len(thr))[None, :]
    for k in range(r):
        cur = iou[:, None, k, :]  # [q, 1, g]
        free = (cur >= thr[None, :, None]) & ~locked  # [q, t, g]
        hit = free.any(-1) & p_valid[:, None, k]
        # the highest-IoU free GT; among equal IoUs the later one (official visiting order)
        pick = n_gt - 1 - np.argmax(np.where(free, cur, -np.inf)[..., ::-1], axis=-1)
        locked[rows, cols, pick] |= hit
        tp[:, :, k] = hit
        fp[:, :, k] = ~hit & p_valid[:, None, k]
    tp_sum, fp_sum = np.cumsum(tp, axis=2), np.cumsum(fp, axis=2)
    seen = tp_sum + fp_sum
    precision = np.divide(tp_sum, seen, out=np.zeros_like(seen), where=seen > 0)
    recall = tp_sum / g_valid.sum(1)[:, None, None]
    zeros, ones = np.zeros((q, len(thr), 1)), np.ones((q, len(thr), 1))
    m_prec = np.concatenate([zeros, precision, zeros], axis=2)
    m_rec = np.concatenate([zeros, recall, ones], axis=2)
    m_prec = np.maximum.accumulate(m_prec[..., ::-1], axis=2)[..., ::-1]
    step = np.diff(m_rec, axis=2)
    return np.where(step != 0, step * m_prec[..., 1:], 0.0).sum(2)


def _in_split(gt: Sequence[np.ndarray], split: tuple[float, float] | None) -> list:
    if split is None:
        return list(gt)
    lo, hi = split
    kept = []
    for g in gt:
        length = g[:, 1] - g[:, 0]
        kept.append(g[(lo < length) & (length <= hi)])
    return kept


def _percent(value: float) -> float:
    return float(f"{100 * value:.2f}")


def moment_metrics(
    pred: Sequence[np.ndarray],
    gt: Sequence[np.ndarray],
    *,
    max_pred_windows: int | None = MAX_PRED_WINDOWS,
    splits: dict[str, tuple[float, float] | None] | None = None,
    with_map: bool = True,
) -> dict[str, float]:
    """MR metrics under the official key names, percent rounded to 2 decimals.

    pred: per query [r, 3] windows as listed (r >= 1); gt: per query [g, 2] windows, same order.
    Keys per split s: MR-s-mAP (average over 0.5:0.05:0.95), MR-s-mAP@t, MR-s-R1@t for t in
    0.3:0.05:0.95, MR-s-mIoU.
    """
    splits = LENGTH_SPLITS if splits is None else splits
    out: dict[str, float] = {}
    for name, bounds in splits.items():
        kept = _in_split(gt, bounds)
        idx = [i for i, g in enumerate(kept) if len(g)]
        if not idx:
            continue
        g_s = [kept[i] for i in idx]
        p_s = [pred[i] for i in idx]
        if with_map:
            cut = [p[:max_pred_windows] if max_pred_windows is not None else p for p in p_s]
            ap = average_precision(cut, g_s).mean(0)  # [t], mean over queries
            out[f"MR-{name}-mAP"] = _percent(np.mean(ap))
            for t, v in zip(MAP_THRESHOLDS, ap):
                out[f"MR-{name}-mAP@{t}"] = _percent(v)
        iou = top1_iou(np.stack([p[0, :2] for p in p_s]), g_s)
        for t in R1_THRESHOLDS:
            out[f"MR-{name}-R1@{t}"] = float(f"{np.mean(iou >= t) * 100:.2f}")
        out[f"MR-{name}-mIoU"] = float(f"{np.mean(iou) * 100:.2f}")
    return out


# ----------------------------------------------------------------------------- file scorers

QVH_PRED = (
    'a QVHighlights prediction {"qid", "pred_relevant_windows": [[start, end, score], ...], '
    '"pred_saliency_scores": [...]}'
)
QVH_GT = (
    'a QVHighlights ground truth {"qid", "duration", "relevant_windows", "relevant_clip_ids", '
    '"saliency_scores"}'
)


def read_qvh_predictions(path: Path, *, need_windows: bool) -> dict[str, dict]:
    """qid -> {'where', 'windows' [r, 3] | None, 'saliency' [c] | None}, in file order."""
    preds: dict[str, dict] = {}
    for where, obj in read_records(path, QVH_PRED):
        qid = ident(need(obj, "qid", where, "the query id"), where)
        at = f"{where} (qid {qid})"
        if qid in preds:
            raise ScoreError(f"{at}: qid {qid} repeats (first at {preds[qid]['where']})")
        entry: dict = {"where": at, "windows": None, "saliency": None}
        if need_windows or "pred_relevant_windows" in obj:
            raw = need(obj, "pred_relevant_windows", at, "[[start, end, score], ...]")
            if not isinstance(raw, list) or not raw:
                raise ScoreError(
                    f"{at}: pred_relevant_windows {raw!r}, expected a non-empty list of "
                    "[start, end, score]"
                )
            entry["windows"] = np.array(
                [window(w, at, "[start, end, score] with end >= start", 3) for w in raw]
            )
        if "pred_saliency_scores" in obj:
            sal = numbers(obj["pred_saliency_scores"], at, "per-clip saliency scores")
            if not sal:
                raise ScoreError(f"{at}: pred_saliency_scores is empty, expected one per clip")
            entry["saliency"] = np.array(sal)
        preds[qid] = entry
    if not preds:
        raise ScoreError(f"{path}: no predictions")
    return preds


def read_qvh_gt(path: Path, *, need_saliency: bool) -> dict[str, dict]:
    """qid -> {'windows' [g, 2], 'saliency' [c, 3] | None}."""
    truth: dict[str, dict] = {}
    for where, obj in read_records(path, QVH_GT):
        qid = ident(need(obj, "qid", where, "the query id"), where)
        at = f"{where} (qid {qid})"
        if qid in truth:
            raise ScoreError(f"{at}: qid {qid} repeats in the ground truth")
        raw = need(obj, "relevant_windows", at, "[[start, end], ...] seconds")
        if not isinstance(raw, list) or not raw:
            raise ScoreError(f"{at}: relevant_windows {raw!r}, expected a non-empty list")
        windows = np.array([window(w, at, "[start, end] seconds") for w in raw])
        if np.any(windows[:, 1] <= windows[:, 0]):
            raise ScoreError(f"{at}: a GT window has zero length, expected end > start")
        entry = {"windows": windows, "saliency": None}
        if need_saliency:
            duration = finite(need(obj, "duration", at, "seconds"), at, "the duration")
            n = num_clips(duration)
            ids = need(obj, "relevant_clip_ids", at, "the ids of the annotated clips")
            rows = need(obj, "saliency_scores", at, "[[3 annotator scores] per relevant clip]")
            if not isinstance(ids, list) or not isinstance(rows, list) or len(ids) != len(rows):
                raise ScoreError(f"{at}: relevant_clip_ids and saliency_scores differ in length")
            ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in ids)
            if n < 1 or not ok:
                raise ScoreError(
                    f"{at}: relevant_clip_ids {ids!r}, expected ints in [0, {n}) "
                    f"(int(duration / 2) clips of duration {duration:g})"
                )
            scores = np.array(
                [numbers(r, at, "3 annotator scores", N_ANNOTATORS) for r in rows]
            ).reshape(-1, N_ANNOTATORS)
            entry["saliency"] = full_saliency(duration, ids, scores)
        truth[qid] = entry
    if not truth:
        raise ScoreError(f"{path}: no ground-truth queries")
    return truth


def score_qvhighlights(
    gt: Path,
    pred: Path,
    *,
    match_number: bool | str = True,
    max_pred_windows: int = MAX_PRED_WINDOWS,
) -> dict[str, float]:
    """QVHighlights moment retrieval + highlight detection, official key names, percent.

    gt, pred: jsonl files (or .json lists) in the official formats. MR keys come when the
    predictions carry `pred_relevant_windows`, HL keys (HL-min-{Fair,Good,VeryGood}-{mAP,Hit1})
    when they carry `pred_saliency_scores`. match_number (official default True): the qid sets
    must match; False keeps only the shared qids (official option). max_pred_windows: windows
    used for mAP (official 10).
    """
    match = flag(match_number, "match_number")
    max_windows = max_pred_windows
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ScoreError(f"option max_pred_windows={max_pred_windows!r}: expected an int >= 1")
    preds = read_qvh_predictions(pred, need_windows=False)
    present = {}
    for key, name in (("windows", "pred_relevant_windows"), ("saliency", "pred_saliency_scores")):
        has = [p[key] is not None for p in preds.values()]
        if any(has) and not all(has):
            bad = next(p["where"] for p in preds.values() if p[key] is None)
            raise ScoreError(f"{bad}: lacks {name}, which other predictions have")
        present[key] = all(has)
    with_mr, with_sal = present["windows"], present["saliency"]
    if not (with_mr or with_sal):
        raise ScoreError(
            f"{pred}: no pred_relevant_windows nor pred_saliency_scores, expected {QVH_PRED}"
        )
    truth = read_qvh_gt(gt, need_saliency=with_sal)
    hint = " (or pass match_number=false to score only the shared qids)"
    if match:
        check_ids(truth, preds, pred, hint=hint)
    qids = [q for q in preds if q in truth]
    if not qids:
        raise ScoreError(f"{pred}: no qid in common with {gt}")
    out: dict[str, float] = {}
    if with_mr:
        out.update(
            moment_metrics(
                [preds[q]["windows"] for q in qids],
                [truth[q]["windows"] for q in qids],
                max_pred_windows=max_windows,
            )
        )
    if with_sal:
        hl = highlight_metrics(
            [preds[q]["saliency"] for q in qids], [truth[q]["saliency"] for q in qids]
        )
        for level, values in hl.items():
            out[f"HL-min-{level}-mAP"] = _percent(values["mAP"])
            out[f"HL-min-{level}-Hit1"] = _percent(values["Hit1"])
    return out


def read_charades(path: Path) -> dict[str, np.ndarray]:
    """Charades-STA `vid start end##sentence` lines -> qid (1-based line number) -> [[s, e]]."""
    truth: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        head, sep, _ = line.partition("##")
        parts = head.split()
        try:
            s, e = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            s = e = float("nan")
        if not sep or len(parts) != 3 or not (np.isfinite(s) and np.isfinite(e)):
            raise ScoreError(f"{where}: expected 'vid start end##sentence', got {line.strip()!r}")
        if e < s:
            raise ScoreError(f"{where}: window [{s:g}, {e:g}] has end < start")
        truth[str(lineno)] = np.array([[s, e]])
    if not truth:
        raise ScoreError(f"{path}: no queries")
    return truth


def score_charades_sta(
    gt: Path, pred: Path, *, allow_missing: bool | str = False
) -> dict[str, float]:
    """Charades-STA R1@{0.3..0.95} and mIoU (keys MR-full-R1@t, MR-full-mIoU), percent.

    gt: the official `charades_test.txt`; pred: QVHighlights-style prediction jsonl whose qid is
    the 1-based line number of the query in `gt` (the qid `tpo.data` gives Charades records).
    R1 uses the first listed window. allow_missing: score only the predicted queries.
    """
    truth = read_charades(gt)
    preds = read_qvh_predictions(pred, need_windows=True)
    check_ids(truth, preds, pred, allow_missing=flag(allow_missing, "allow_missing"))
    qids = list(preds)
    return moment_metrics(
        [preds[q]["windows"] for q in qids],
        [truth[q] for q in qids],
        splits={"full": None},
        with_map=False,
    )
