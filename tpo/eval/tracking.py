"""Single-object tracking: LaSOT as pytracking (`pytracking/analysis/extract_results.py`,
`plot_results.py`) and GOT-10k as the got10k toolkit (`experiments/got10k.py`, `utils/metrics.py`).

LaSOT (keys "AUC", "OP50", "OP75", "Precision", "Norm Precision", percent as pytracking prints):
- GT root: every folder holding `groundtruth.txt` (x,y,w,h per line; searched recursively, so
  the official `{class}/{class-N}/` layout works), with optional `full_occlusion.txt` and
  `out_of_view.txt` (comma-separated 0/1 per frame; absent = visible). Predictions:
  `PRED/{seq}.txt`, x,y,w,h per line (comma, tab or space separated); `{seq}_time.txt` ignored.
- Per sequence: a predicted box with w or h = 0 is replaced by the previous frame's box; rows
  past the GT are dropped (fewer rows raise); frame 0 is set to the GT. IoU is pixel-inclusive
  (x2 = x + w - 1); centre = xy + (wh - 1) / 2. Frames with an invisible target (full
  occlusion or out of view) or a GT box with w or h <= 0 get overlap -1 and centre error inf
  (a visible GT box with w or h <= 0 gets normalised error -1, as the official) and still count
  in the frame total. Success curve = fraction of frames with IoU > t for t = 0:0.05:1 (t = i *
  0.05; the official `torch.arange` may differ by 1 ulp at some t), AUC = mean of the
  sequence-averaged curve; Precision = fraction with centre error <= 20 px; Norm Precision =
  fraction with the centre error in GT-size units (centres divided by the GT w, h) <= 0.2.
  pytracking stores per-sequence rates as float32; we use float64 (equal to ~1e-5 percent).
- Missing results raise (skip_missing=true averages over the sequences that have results, as
  pytracking's skip_missing_seq); result files of unknown sequences raise unless allow_extra.

GOT-10k (keys "AO", "SR0.5", "SR0.75", fractions as the toolkit's report):
- GT root: sequences of `list.txt` (else every sub-folder with `groundtruth.txt`), each with
  `groundtruth.txt`, `cover.label` (else `absence.label`) and `meta_info.ini` (its
  "resolution: (W, H)" line bounds the boxes). Predictions: `PRED/{seq}/{seq}_[0-9]*.txt`, one
  file per repetition, as many rows as the GT.
- Boxes (both) are clipped to the image (x to [0, W], w to [0, W - x], same for y, h), IoU is
  continuous with eps in the union and clipped to [0, 1], the first frame is excluded and only
  frames with cover > 0 count; AO = mean IoU pooled over all frames, sequences and repetitions,
  SR_t = fraction with IoU > t. clip=false skips the clipping (then no meta_info.ini needed).
Predicted rows with NaN or a negative w / h raise ScoreError naming the file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from tpo.eval.io import ScoreError, flag

SEPARATOR = re.compile(r"[,\s]+")
OVERLAP_THRESHOLDS = np.arange(21) * 0.05
LASOT_KEYS = ("AUC", "OP50", "OP75", "Precision", "Norm Precision")


def read_boxes(path: Path, *, allow_nan: bool = False) -> np.ndarray:
    """`[n, 4]` float64 x,y,w,h rows of a text file (comma / tab / space separated)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: file not found")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in SEPARATOR.split(line.strip())]
        except ValueError as err:
            raise ScoreError(f"{path}:{lineno}: {line.strip()!r} is not 4 numbers x,y,w,h") from err
        if len(row) != 4:
            raise ScoreError(f"{path}:{lineno}: {len(row)} values, expected 4 (x,y,w,h)")
        if not allow_nan and not all(np.isfinite(row)):
            raise ScoreError(f"{path}:{lineno}: {line.strip()!r} has a NaN or infinite value")
        rows.append(row)
    if not rows:
        raise ScoreError(f"{path}: no boxes")
    return np.asarray(rows, dtype=np.float64)


def _check_prediction(boxes: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((boxes[:, 2:] < 0).any(axis=1))
    if bad.size:
        raise ScoreError(f"{path}: row {bad[0] + 1} has a negative width or height {boxes[bad[0]]}")


def _read_numbers(path: Path) -> np.ndarray:
    try:
        return np.asarray(
            [float(v) for v in SEPARATOR.split(path.read_text(encoding="utf-8").strip()) if v]
        )
    except ValueError as err:
        raise ScoreError(f"{path}: expected numbers separated by commas or lines ({err})") from err


def lasot_errors(
    pred: np.ndarray, anno: np.ndarray, visible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame (overlap, centre error, normalised centre error) `[n]` of xywh `pred` `[m>=n, 4]`
    against `anno` `[n, 4]`, as pytracking's `calc_seq_err_robust` for LaSOT."""
    n = len(anno)
    if len(pred) < n:
        raise ValueError(f"{len(pred)} predicted boxes for {n} GT frames")
    pred = pred[:n].copy()
    zero = (pred[:, 2:] == 0).any(axis=1)
    zero[0] = False
    # previous frame's box for zero-size boxes (the official loop, run forwards)
    pred = pred[np.maximum.accumulate(np.where(zero, 0, np.arange(n)))]
    pred[0] = anno[0]
    visible = np.ones(n, dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    valid = (anno[:, 2:] > 0).all(axis=1) & visible
    centre_p = pred[:, :2] + 0.5 * (pred[:, 2:] - 1.0)
    centre_a = anno[:, :2] + 0.5 * (anno[:, 2:] - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.sqrt(((centre_p - centre_a) ** 2).sum(1))
        err_norm = np.sqrt(((centre_p / anno[:, 2:] - centre_a / anno[:, 2:]) ** 2).sum(1))
        tl = np.maximum(pred[:, :2], anno[:, :2])
        br = np.minimum(pred[:, :2] + pred[:, 2:] - 1.0, anno[:, :2] + anno[:, 2:] - 1.0)
        inter = np.clip(br - tl + 1.0, 0, None).prod(1)
        overlap = inter / (pred[:, 2:].prod(1) + anno[:, 2:].prod(1) - inter)
    err[~valid], err_norm[~valid], overlap[~valid] = np.inf, -1.0, -1.0
    err_norm[~visible], err[~visible] = np.inf, np.inf
    if np.isnan(overlap).any():
        raise ValueError(f"NaN overlap at frame {int(np.flatnonzero(np.isnan(overlap))[0])}")
    return overlap, err, err_norm


def lasot_curves(overlap: np.ndarray, err: np.ndarray, err_norm: np.ndarray) -> dict:
    """One sequence's success curve `[21]` and precision / normalised precision rates (all
    frames in the denominator)."""
    n = len(overlap)
    return {
        "success": (overlap[:, None] > OVERLAP_THRESHOLDS[None, :]).sum(0) / n,
        "precision": np.count_nonzero(err <= 20.0) / n,
        "norm_precision": np.count_nonzero(err_norm <= 0.2) / n,
    }


def lasot_summary(curves: list[dict]) -> dict[str, float]:
    """pytracking's summary (percent) of per-sequence curves."""
    success = np.mean([c["success"] for c in curves], axis=0) * 100.0
    return dict(
        zip(
            LASOT_KEYS,
            (
                float(success.mean()),
                float(success[10]),  # t = 0.5
                float(success[15]),  # t = 0.75
                float(np.mean([c["precision"] for c in curves]) * 100.0),
                float(np.mean([c["norm_precision"] for c in curves]) * 100.0),
            ),
        )
    )


def _lasot_visible(folder: Path, n: int) -> np.ndarray | None:
    visible = None
    for name in ("full_occlusion.txt", "out_of_view.txt"):
        path = folder / name
        if path.is_file():
            flags = _read_numbers(path)
            if len(flags) != n:
                raise ScoreError(f"{path}: {len(flags)} flags for {n} GT frames")
            visible = (flags == 0) if visible is None else visible & (flags == 0)
    return visible


def score_lasot(
    gt: Path, pred: Path, *, skip_missing: bool | str = False, allow_extra: bool | str = False
) -> dict[str, float]:
    """LaSOT AUC, OP50, OP75, Precision, Norm Precision (percent); see the module docstring."""
    gt, pred = Path(gt), Path(pred)
    if not pred.is_dir():
        raise ScoreError(f"{pred}: results folder not found")
    sequences: dict[str, Path] = {}
    for path in sorted(gt.rglob("groundtruth.txt")):
        name = path.parent.name
        if name in sequences:
            raise ScoreError(f"{path.parent}: sequence name {name} repeats ({sequences[name]})")
        sequences[name] = path.parent
    if not sequences:
        raise ScoreError(f"{gt}: no sequence folder with a groundtruth.txt")
    results = {p.stem for p in pred.glob("*.txt") if not p.stem.endswith("_time")}
    extra = sorted(results - set(sequences))
    if extra and not flag(allow_extra, "allow_extra"):
        raise ScoreError(f"{pred}: result(s) {extra[:5]} are not sequences of {gt}")
    skip = flag(skip_missing, "skip_missing")
    curves = []
    for name, folder in sequences.items():
        result = pred / f"{name}.txt"
        if not result.is_file():
            if skip:
                continue
            raise ScoreError(f"{result}: no result for sequence {name}")
        anno = read_boxes(folder / "groundtruth.txt")
        boxes = read_boxes(result)
        _check_prediction(boxes, result)
        if len(boxes) < len(anno):
            raise ScoreError(f"{result}: {len(boxes)} boxes for {len(anno)} GT frames")
        visible = _lasot_visible(folder, len(anno))
        try:
            curves.append(lasot_curves(*lasot_errors(boxes, anno, visible)))
        except ValueError as err:
            raise ScoreError(f"{result}: {err}") from err
    if not curves:
        raise ScoreError(f"{pred}: no results for any sequence of {gt}")
    return lasot_summary(curves)


def got10k_iou(pred: np.ndarray, anno: np.ndarray, bound: tuple[float, float] | None) -> np.ndarray:
    """`[n]` IoU of xywh boxes as the toolkit's `rect_iou`: clipped to `bound` = (W, H) when
    given, continuous, eps in the union, clipped to [0, 1]."""
    boxes = [np.array(pred, dtype=np.float64), np.array(anno, dtype=np.float64)]
    if bound is not None:
        for b in boxes:
            for xy, size in ((0, bound[0]), (1, bound[1])):
                b[:, xy] = np.clip(b[:, xy], 0, size)
                b[:, xy + 2] = np.clip(b[:, xy + 2], 0, size - b[:, xy])
    p, a = boxes
    wh = np.maximum(
        np.minimum(p[:, :2] + p[:, 2:], a[:, :2] + a[:, 2:]) - np.maximum(p[:, :2], a[:, :2]), 0
    )
    inter = wh.prod(1)
    union = p[:, 2:].prod(1) + a[:, 2:].prod(1) - inter
    return np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)


def _got10k_meta(folder: Path, n: int, clip: bool) -> tuple[np.ndarray, tuple | None]:
    """(cover flags [n] > 0, resolution (W, H) or None)."""
    cover, absence = folder / "cover.label", folder / "absence.label"
    if cover.is_file():
        visible = _read_numbers(cover) > 0
    elif absence.is_file():
        visible = _read_numbers(absence) == 0
    else:
        raise ScoreError(f"{cover}: file not found (nor absence.label)")
    if len(visible) != n:
        raise ScoreError(f"{folder}: {len(visible)} cover/absence labels for {n} GT frames")
    if not clip:
        return visible, None
    meta = folder / "meta_info.ini"
    if not meta.is_file():
        raise ScoreError(f"{meta}: file not found (needed for the resolution; or clip=false)")
    for line in meta.read_text(encoding="utf-8").splitlines()[1:]:
        key, _, value = line.partition(": ")
        if key.strip() == "resolution":
            try:
                res = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError) as err:
                raise ScoreError(f"{meta}: resolution {value!r} is not '(W, H)'") from err
            if not isinstance(res, tuple) or len(res) != 2:
                raise ScoreError(f"{meta}: resolution {value!r} is not '(W, H)'")
            return visible, (float(res[0]), float(res[1]))
    raise ScoreError(f"{meta}: no 'resolution: (W, H)' line")


def score_got10k(
    gt: Path, pred: Path, *, clip: bool | str = True, allow_extra: bool | str = False
) -> dict[str, float]:
    """GOT-10k AO, SR0.5, SR0.75 (fractions); see the module docstring."""
    gt, pred = Path(gt), Path(pred)
    if not gt.is_dir() or not pred.is_dir():
        raise ScoreError(f"{gt if not gt.is_dir() else pred}: folder not found")
    listing = gt / "list.txt"
    if listing.is_file():
        names = [s.strip() for s in listing.read_text(encoding="utf-8").split("\n") if s.strip()]
    else:
        names = sorted(p.parent.name for p in gt.glob("*/groundtruth.txt"))
    if not names:
        raise ScoreError(f"{gt}: no sequences (no list.txt and no */groundtruth.txt)")
    known = set(names)
    extra = sorted(p.name for p in pred.iterdir() if p.is_dir() and p.name not in known)
    if extra and not flag(allow_extra, "allow_extra"):
        raise ScoreError(f"{pred}: result folder(s) {extra[:5]} are not sequences of {gt}")
    ious = []
    for name in names:
        anno = read_boxes(gt / name / "groundtruth.txt", allow_nan=True)
        visible, bound = _got10k_meta(gt / name, len(anno), flag(clip, "clip"))
        records = sorted((pred / name).glob(f"{name}_[0-9]*.txt"))
        if not records:
            raise ScoreError(f"{pred / name}: no results {name}_001.txt ... for sequence {name}")
        for record in records:
            boxes = read_boxes(record)
            _check_prediction(boxes, record)
            if boxes.shape != anno.shape:
                raise ScoreError(f"{record}: {len(boxes)} boxes for {len(anno)} GT frames")
            seq_ious = got10k_iou(boxes[1:], anno[1:], bound)[visible[1:]]
            if np.isnan(seq_ious).any():
                raise ScoreError(f"{gt / name / 'groundtruth.txt'}: NaN box on a visible frame")
            ious.append(seq_ious)
    pooled = np.concatenate(ious)
    if pooled.size == 0:
        raise ScoreError(f"{gt}: no visible frame after the first in any sequence")
    return {
        "AO": float(pooled.mean()),
        "SR0.5": float(np.mean(pooled > 0.5)),
        "SR0.75": float(np.mean(pooled > 0.75)),
    }
