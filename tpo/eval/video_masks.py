"""Referring / semi-supervised video segmentation J&F: MeViS `tools/eval_mevis.py` and the
DAVIS-2017 semi-supervised protocol of davis2017-evaluation (J and F from `tpo.eval.mask_ops`).

MeViS (also Ref-YouTube-VOS / Ref-DAVIS style folders):
- GT: a folder with `meta_expressions.json` ({"videos": {vid: {"expressions": {eid: {"exp",
  "anno_id": [...]}}, "frames": [names]}}}) and `mask_dict.json` ({anno_id: [COCO RLE or null
  per listed frame]}); the GT of an expression is the union of its anno_ids' masks.
- predictions: `PRED/{vid}/{eid}/{frame}.png` for every listed frame, nonzero = foreground after
  grey conversion (as `cv2.IMREAD_GRAYSCALE`), the GT's size.
- J and F are averaged over ALL frames of an expression, then over expressions; J&F = (J + F)/2.
  Keys "J&F", "J", "F" as fractions (the official prints them so).
- A video folder missing from PRED scores J = F = 0 for its expressions (official), and so does
  a missing expression folder (the official crashes there); missing="error" raises instead. A
  missing frame PNG in an expression folder always raises. Prediction folders of unknown videos
  raise unless allow_extra=true.

DAVIS-2017 semi-supervised (davis2017-evaluation `evaluation.py`, the subset we implement):
- GT: `GT/{seq}/{frame}.png` (palette or grey values: object ids, 255 = void, read as
  background); objects = ids 1..max id of the FIRST frame; predictions `PRED/{seq}/{frame}.png`
  with the same ids. First and last frames are dropped (drop_ends=false keeps them).
- A prediction id above the GT object count raises (the official exits); objects the prediction
  never shows are scored as empty masks (the official zero-pads).
- Per object: J-Mean / F-Mean (mean over frames), Recall (fraction of frames > 0.5), Decay
  (mean of the first quarter minus the last, the official 4 bins, its uint8 index cast kept);
  each averaged over all objects of all sequences; J&F-Mean = (J-Mean + F-Mean) / 2. Fractions,
  keys as the official csv. No unsupervised (Hungarian-matched) protocol here.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from tpo.eval.io import ScoreError, flag, read_json
from tpo.eval.mask_ops import BOUND_TH, CHUNK_PIXELS, boundary_f, jaccard

MISSING = ("zero", "error")
DAVIS_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def read_mask_png(path: Path, *, labels: bool = False) -> np.ndarray:
    """A PNG mask `[H, W]`: raw values (palette indices / grey levels) if `labels`, else bool
    foreground = nonzero after grey conversion (palette and colour images via PIL's 'L')."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: mask file not found")
    try:
        with Image.open(path) as img:
            if labels or img.mode in ("1", "L", "I", "I;16", "F"):
                array = np.array(img)
            else:
                array = np.array(img.convert("L"))
    except OSError as err:
        raise ScoreError(f"{path}: not a readable image ({err})") from err
    if array.ndim != 2:
        raise ScoreError(f"{path}: expected a single-channel mask, got shape {array.shape}")
    return array if labels else array != 0


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a bool mask `[H, W]` as a grey PNG (0 / 255), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    try:
        Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(tmp, "PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _mevis_paths(gt: Path) -> tuple[Path, Path]:
    gt = Path(gt)
    folder = gt.parent if gt.is_file() else gt
    return folder / "meta_expressions.json", folder / "mask_dict.json"


def _decode(rle: object, where: str, size: tuple[int, int]) -> np.ndarray:
    """One COCO RLE (compressed string or uncompressed list counts) -> bool `[H, W]`."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ScoreError(f"{where}: expected a COCO RLE {{'size': [h, w], 'counts': ...}} or null")
    if list(rle["size"]) != list(size):
        raise ScoreError(f"{where}: RLE size {rle['size']} differs from the others' {size}")
    try:
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError) as err:
        raise ScoreError(f"{where}: not a valid COCO RLE ({err})") from err


def _expression_jf(
    folder: Path, frames: list, rles: list[tuple[str, list]], bound_th: float
) -> tuple[float, float]:
    """Mean J and F over all frames of one expression (GT = union of `rles` per frame)."""
    sizes = [
        tuple(r["size"]) for _, per in rles for r in per if isinstance(r, dict) and "size" in r
    ]
    size = sizes[0] if sizes else read_mask_png(folder / f"{frames[0]}.png").shape
    origin = "the GT's" if sizes else f"the size of {frames[0]}.png"
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ScoreError(f"{rles[0][0]}: RLE size {list(size)} is not [height, width]")
    step = max(1, CHUNK_PIXELS // (size[0] * size[1]))
    js, fs = [], []
    for s in range(0, len(frames), step):
        names = frames[s : s + step]
        pred = np.zeros((len(names), *size), dtype=bool)
        for i, name in enumerate(names):
            mask = read_mask_png(folder / f"{name}.png")
            if mask.shape != size:
                raise ScoreError(
                    f"{folder / f'{name}.png'}: mask size {mask.shape}, expected {size} ({origin})"
                )
            pred[i] = mask
        truth = np.zeros_like(pred)
        for where, per_frame in rles:
            for i in range(len(names)):
                if per_frame[s + i] is not None:
                    truth[i] |= _decode(per_frame[s + i], f"{where} frame {s + i}", size)
        js.append(jaccard(pred, truth))
        fs.append(boundary_f(pred, truth, bound_th))
    return float(np.concatenate(js).mean()), float(np.concatenate(fs).mean())


def _mevis_video(meta_path: Path, vid: str, entry: object) -> tuple[list, dict]:
    where = f"{meta_path}: videos.{vid}"
    if not isinstance(entry, dict) or "frames" not in entry or "expressions" not in entry:
        raise ScoreError(f"{where}: expected {{'expressions': {{...}}, 'frames': [...]}}")
    frames, expressions = entry["frames"], entry["expressions"]
    if not isinstance(frames, list) or not frames or not isinstance(expressions, dict):
        raise ScoreError(f"{where}: expected 'frames' a non-empty list, 'expressions' an object")
    return frames, expressions


def _anno_rles(exp: object, where: str, masks: dict, mask_path: Path, n: int) -> list:
    anno_ids = exp.get("anno_id") if isinstance(exp, dict) else None
    if anno_ids is None:
        raise ScoreError(f"{where}: missing key 'anno_id' (expected a list of anno_ids)")
    out = []
    for anno in anno_ids if isinstance(anno_ids, list) else [anno_ids]:
        per_frame = masks.get(str(anno))
        if not isinstance(per_frame, list) or len(per_frame) != n:
            raise ScoreError(
                f"{mask_path}: anno_id {anno} (of {where}): expected a list of {n} per-frame "
                "RLEs or nulls, one per listed frame"
            )
        out.append((f"{mask_path}: anno_id {anno}", per_frame))
    return out


def score_mevis(
    gt: Path,
    pred: Path,
    *,
    missing: str = "zero",
    allow_extra: bool | str = False,
    bound_th: float = BOUND_TH,
) -> dict[str, float]:
    """MeViS J&F, J, F (fractions) of the PNG folders under `pred` (see the module docstring)."""
    if missing not in MISSING:
        raise ScoreError(f"option missing={missing!r}: expected one of {MISSING}")
    meta_path, mask_path = _mevis_paths(gt)
    meta, masks = read_json(meta_path), read_json(mask_path)
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict) or not isinstance(masks, dict):
        raise ScoreError(
            f"{meta_path} / {mask_path}: expected {{'videos': {{...}}}} / {{anno_id: [...]}}"
        )
    pred = Path(pred)
    if not pred.is_dir():
        raise ScoreError(f"{pred}: prediction folder not found")
    extra = sorted(p.name for p in pred.iterdir() if p.is_dir() and p.name not in videos)
    if extra and not flag(allow_extra, "allow_extra"):
        raise ScoreError(f"{pred}: video folder(s) {extra[:5]} are not in {meta_path}")
    j_all, f_all = [], []
    for vid, entry in videos.items():
        frames, expressions = _mevis_video(meta_path, vid, entry)
        for eid, exp in expressions.items():
            where = f"{meta_path}: videos.{vid}.expressions.{eid}"
            rles = _anno_rles(exp, where, masks, mask_path, len(frames))
            folder = pred / vid / str(eid)
            if not folder.is_dir():
                if missing == "error":
                    raise ScoreError(f"{folder}: no predictions for expression {eid} of {vid}")
                j_all.append(0.0)
                f_all.append(0.0)
                continue
            j, f = _expression_jf(folder, frames, rles, bound_th)
            j_all.append(j)
            f_all.append(f)
    if not j_all:
        raise ScoreError(f"{meta_path}: no expressions to score")
    j, f = float(np.mean(j_all)), float(np.mean(f_all))
    return {"J&F": (j + f) / 2, "J": j, "F": f}


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall = fraction > 0.5, Decay) of per-frame values, as davis2017 `db_statistics`."""
    values = np.asarray(values, dtype=np.float64)
    mean, recall = float(np.nanmean(values)), float(np.nanmean(values > 0.5))
    # The official casts the 5 bin edges to uint8 (wrapping past 255 frames); kept for equality.
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64) % 256
    first, last = values[edges[0] : edges[1] + 1], values[edges[3] : edges[4] + 1]
    with np.errstate(invalid="ignore"):
        decay = float(np.nanmean(first) - np.nanmean(last)) if first.size and last.size else np.nan
    return mean, recall, decay


def _read_stack(paths: list[Path], shape: tuple[int, ...] | None) -> np.ndarray:
    arrays = []
    for p in paths:
        a = read_mask_png(p, labels=True)
        if shape is not None and a.shape != shape:
            raise ScoreError(f"{p}: mask size {a.shape}, expected {shape} (the GT's)")
        shape = a.shape
        arrays.append(a)
    return np.stack(arrays).astype(np.int64)


def _davis_sequence(
    gt_dir: Path, pred_dir: Path, drop_ends: bool, bound_th: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-frame (J, F) arrays of each object of one sequence."""
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise ScoreError(f"{gt_dir}: no GT PNG masks")
    truth = _read_stack(gt_files, None)
    truth[truth == 255] = 0  # void pixels count as background (semi-supervised protocol)
    n_objects = int(truth[0].max())
    if drop_ends:
        gt_files, truth = gt_files[1:-1], truth[1:-1]
    if not gt_files:
        raise ScoreError(f"{gt_dir}: fewer than 3 frames, nothing left after dropping the ends")
    if not pred_dir.is_dir():
        raise ScoreError(f"{pred_dir}: no predictions for sequence {gt_dir.name}")
    preds = _read_stack([pred_dir / f.name for f in gt_files], truth.shape[1:])
    if int(preds.max()) > n_objects:
        bad = gt_files[int(np.argmax(preds.reshape(len(preds), -1).max(1)))].name
        raise ScoreError(
            f"{pred_dir / bad}: object id {int(preds.max())} but the GT's first frame has "
            f"{n_objects} object(s)"
        )
    return [
        (jaccard(preds == k, truth == k), boundary_f(preds == k, truth == k, bound_th))
        for k in range(1, n_objects + 1)
    ]


def score_davis(
    gt: Path,
    pred: Path,
    *,
    drop_ends: bool | str = True,
    allow_extra: bool | str = False,
    bound_th: float = BOUND_TH,
) -> dict[str, float]:
    """DAVIS-2017 semi-supervised J&F-Mean, J/F Mean, Recall, Decay (fractions); see above."""
    gt, pred = Path(gt), Path(pred)
    if not gt.is_dir() or not pred.is_dir():
        raise ScoreError(f"{gt if not gt.is_dir() else pred}: folder not found")
    sequences = sorted(p for p in gt.iterdir() if p.is_dir())
    names = {p.name for p in sequences}
    extra = sorted(p.name for p in pred.iterdir() if p.is_dir() and p.name not in names)
    if extra and not flag(allow_extra, "allow_extra"):
        raise ScoreError(f"{pred}: sequence folder(s) {extra[:5]} are not in {gt}")
    stats: dict[str, list[tuple[float, float, float]]] = {"J": [], "F": []}
    for seq in sequences:
        for j, f in _davis_sequence(seq, pred / seq.name, flag(drop_ends, "drop_ends"), bound_th):
            stats["J"].append(db_statistics(j))
            stats["F"].append(db_statistics(f))
    if not stats["J"]:
        raise ScoreError(f"{gt}: no objects to score (no sequence with an object in frame 0)")
    jm, jr, jd = (float(np.mean(c)) for c in zip(*stats["J"]))
    fm, fr, fd = (float(np.mean(c)) for c in zip(*stats["F"]))
    return dict(zip(DAVIS_KEYS, ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)))


def _blobs(rng: np.random.Generator, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Random elliptic GT blobs `[n, H, W]` and predictions displaced and resized from them."""
    yy = np.arange(h, dtype=np.float32)[None, :, None]
    xx = np.arange(w, dtype=np.float32)[None, None, :]

    def ellipses(*params: np.ndarray) -> np.ndarray:
        cy, cx, ry, rx = (v.astype(np.float32)[:, None, None] for v in params)
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    cy, cx = rng.uniform(0.2, 0.8, n) * h, rng.uniform(0.2, 0.8, n) * w
    ry, rx = rng.uniform(0.05, 0.3, n) * h, rng.uniform(0.05, 0.3, n) * w
    shift = rng.normal(0, 0.03, (4, n))
    pred = ellipses(cy + shift[0] * h, cx + shift[1] * w, ry * (1 + shift[2]), rx * (1 + shift[3]))
    return pred, ellipses(cy, cx, ry, rx)


def bench_masks(n_frames: int = 1000, h: int = 480, w: int = 854, seed: int = 0) -> dict:
    """Seconds to compute J and F over `n_frames` random-blob `h` x `w` frames (one core's work;
    mask generation not timed)."""
    rng = np.random.default_rng(seed)
    step = max(1, min(n_frames, 4_000_000 // (h * w)))
    t_j = t_f = 0.0
    j_sum = f_sum = 0.0
    for s in range(0, n_frames, step):
        pred, gt = _blobs(rng, min(step, n_frames - s), h, w)
        t0 = time.perf_counter()
        j_sum += float(jaccard(pred, gt).sum())
        t1 = time.perf_counter()
        f_sum += float(boundary_f(pred, gt).sum())
        t_j, t_f = t_j + t1 - t0, t_f + time.perf_counter() - t1
    return {
        "frames": n_frames,
        "size": [h, w],
        "J_s": round(t_j, 3),
        "F_s": round(t_f, 3),
        "ms_per_frame": round(1000 * (t_j + t_f) / n_frames, 3),
        "mean_J": round(j_sum / n_frames, 4),
        "mean_F": round(f_sum / n_frames, 4),
    }
