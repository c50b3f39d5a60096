"""Highlight detection (QVHighlights saliency): HIT@1 and HL-mAP as moment_detr's standalone_eval.

Clips are 2 s; a video has int(duration / 2) clips; a clip is positive for an annotator when its
saliency score (0-4) is >= 2 / 3 / 4 (Fair / Good / VeryGood). Values are fractions in [0, 1];
the scorer turns them into percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLIP_SECONDS = 2.0
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}  # name -> minimum positive score
N_ANNOTATORS = 3


def num_clips(duration: float) -> int:
    """Clips of a video as the official counts them: int(duration / 2)."""
    return int(duration / CLIP_SECONDS)


def full_saliency(duration: float, clip_ids: Sequence[int], scores: np.ndarray) -> np.ndarray:
    """Per-clip annotator scores [c, 3]: `scores` [n_rel, 3] at `clip_ids`, 0 elsewhere."""
    full = np.zeros((num_clips(duration), scores.shape[1]))
    full[np.asarray(clip_ids, dtype=np.int64)] = scores
    return full


def binary_ap(
    labels: np.ndarray, scores: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Average precision of each row, as the official `get_ap(interpolate=True)`.

    That is: sklearn's precision-recall curve (one point per distinct score, ties grouped), the
    precision made monotone (each point takes the best precision at equal or higher recall),
    then the unweighted mean of those precisions over the points where recall grows.
    All-negative rows give 0, all-positive rows 1 (official special cases).
    Written in numpy because the official needs scikit-learn, which we do not depend on.

    labels, scores: [q, c] (0/1 labels, finite scores); valid: [q, c] marks real clips (rows may
    be padded). Returns [q].
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    valid = np.ones(labels.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if labels.ndim == 1:
        return binary_ap(labels[None], scores[None], valid[None])[0]
    q, c = labels.shape
    n_valid = valid.sum(1)
    n_pos = (labels * valid).sum(1)
    key = np.where(valid, -scores, np.inf)  # padding sorts after every real clip
    order = np.argsort(key, axis=1, kind="stable")
    s = np.take_along_axis(key, order, 1)
    y = np.take_along_axis(labels * valid, order, 1)
    tp = np.cumsum(y, axis=1)
    seen = np.arange(1, c + 1)[None, :]
    is_end = np.ones((q, c), dtype=bool)  # last clip of a group of equal scores
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    is_start = np.ones((q, c), dtype=bool)
    is_start[:, 1:] = s[:, 1:] != s[:, :-1]
    precision = np.where(is_end, tp / seen, 0.0)
    best_at_lower = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    tp_before = np.maximum.accumulate(np.where(is_start, tp - y, -1.0), axis=1)
    counted = is_end & (tp > tp_before) & np.isfinite(s)
    n_counted = counted.sum(1)
    ap = np.where(counted, best_at_lower, 0.0).sum(1) / np.maximum(n_counted, 1)
    ap = np.where(n_pos == 0, 0.0, ap)
    return np.where(n_pos == n_valid, 1.0, ap)


def pad_scores(pred: Sequence[np.ndarray], n_clips: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted saliency truncated or zero-padded to each video's clips, batched.

    Returns scores [q, c_max] and valid [q, c_max] (c_max = the most clips of any video).
    """
    width = max(max(n_clips), 1)
    out = np.zeros((len(pred), width))
    valid = np.arange(width)[None, :] < np.asarray(n_clips)[:, None]
    for i, (p, n) in enumerate(zip(pred, n_clips)):
        k = min(len(p), n)
        out[i, :k] = p[:k]
    return out, valid


def highlight_metrics(
    pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]
) -> dict[str, dict[str, float]]:
    """HL-mAP and HIT@1 (fractions) per saliency level, aligned lists of queries.

    pred: predicted per-clip saliency [c_pred] per query; gt: annotator scores [c, 3] per query.
    Returns {'Fair': {'mAP': .., 'Hit1': ..}, 'Good': .., 'VeryGood': ..}.
    """
    n_clips = [len(g) for g in gt]
    scores, valid = pad_scores(pred, n_clips)
    width = scores.shape[1]
    raw = np.zeros((len(gt), width, N_ANNOTATORS))
    for i, g in enumerate(gt):
        raw[i, : len(g)] = g
    top = np.array([int(np.argmax(p)) for p in pred])  # first maximum of the raw prediction
    top_ok = top < np.asarray(n_clips)
    out = {}
    for name, minimum in SALIENCY_LEVELS.items():
        labels = (raw >= minimum).astype(float)  # [q, c, 3]
        ap = np.stack(
            [binary_ap(labels[:, :, a], scores, valid) for a in range(N_ANNOTATORS)], axis=1
        )  # [q, 3]
        hits = np.zeros((len(gt), N_ANNOTATORS))
        rows = np.nonzero(top_ok)[0]
        hits[rows] = labels[rows, top[rows]]
        out[name] = {"mAP": float(np.mean(ap)), "Hit1": float(np.mean(np.max(hits, 1)))}
    return out
