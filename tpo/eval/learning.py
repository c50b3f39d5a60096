"""Does training help? The untrained model, a prior-only baseline and a trained model on the
toy-world test split, scored item by item with the same four metrics (temporal R1@0.5, box
Acc@0.5, mask J&F, multiple-choice accuracy), and how sure a difference is (a paired bootstrap
interval over the test items). Used by bench/learning.py. Models answer through the one
predictor (`tpo.infer.predictor.Predictor`, as `ask` does): the mask metric scores SAM2's
propagation through the scored frames, prompted on the first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpo.data.dataset import VideoTaskDataset
from tpo.data.loaders import load_annotation
from tpo.data.records import LoadReport, Record
from tpo.data.sample_frames import annotated_mask_frames, evenly_spaced, read_mask_frames
from tpo.data.templates import question_text
from tpo.eval.boxes import box_iou
from tpo.eval.mask_ops import video_jf
from tpo.eval.moments import top1_iou
from tpo.eval.multiple_choice import check_answer
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack, TimeWindow
from tpo.infer.predictor import AskOptions, Predictor

METRICS = {  # task -> the metric its test records are scored with
    "temporal": "temporal R1@0.5",
    "region": "box Acc@0.5",
    "mask": "mask J&F",
    "mc": "MC accuracy",
}

TEST_FILES = {  # name -> (format, annotation under annotations/)
    "temporal": ("qvh", "qvh_{split}.jsonl"),
    "region": ("refcoco", "refcoco_{split}.json"),
    "mask": ("mevis", "mevis_{split}"),
    "mc": ("mvbench", "mvbench_{split}.json"),
}


def load_split(root: str | Path, split: str, limit: int | None = None) -> dict[str, list[Record]]:
    """The toy world's records of one split, per task (strict: the files are generated)."""

    root = Path(root)
    out = {}
    for task, (fmt, name) in TEST_FILES.items():
        recs = load_annotation(
            fmt,
            root / "annotations" / name.format(split=split),
            root / "videos",
            split=split,
            strict=True,
            report=LoadReport(),
            dataset=f"toy_{task}",
        )
        out[task] = recs[:limit] if limit else recs
    return out


@dataclass
class Prior:
    """The best constant predictions learned from the training split."""

    span: tuple[float, float]  # mean (centre, width) / duration
    box: list[float]  # mean normalised xyxy
    mask: np.ndarray  # [H, W] bool: pixels foreground in at least half of the training masks
    answer_letter: str  # the most frequent right option letter

    @classmethod
    def fit(cls, train: dict[str, list[Record]]) -> Prior:
        """Fit the constants on training records."""
        # function-level: pycocotools only when masks are (de)coded
        from pycocotools import mask as mask_utils

        spans = [
            ((s + e) / 2 / r.duration, (e - s) / r.duration)
            for r in train["temporal"]
            for s, e in r.windows[:1]
        ]
        boxes = [
            [r.box[0] / r.width, r.box[1] / r.height, r.box[2] / r.width, r.box[3] / r.height]
            for r in train["region"]
        ]
        acc, n = None, 0
        for r in train["mask"]:
            for rle in r.masks.values():
                m = mask_utils.decode(rle).astype(np.float64)
                acc = m if acc is None else acc + m
                n += 1
        letters = Counter(r.answer.split(")")[0].strip("(") for r in train["mc"])
        return cls(
            tuple(np.mean(spans, 0)),
            list(np.mean(boxes, 0)),
            (acc / max(n, 1)) >= 0.5,
            letters.most_common(1)[0][0],
        )


def visible_mask_frames(sample, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `k` sampled frames where the target is visible: uint8 `[k, 3, H, W]`, GT `[k, H, W]`.

    Frames where the target is hidden have an empty GT, on which J and F are 1 for an empty
    prediction; scoring visible frames only keeps the comparison about finding the object.
    """

    visible, _ = annotated_mask_frames(sample)
    if len(visible) == 0:  # hidden on every sampled frame: score the annotated ones
        visible = sample.mask_valid.nonzero()[:, 0]
    return read_mask_frames(sample, evenly_spaced(visible, k))


def _samples(records: list[Record], cfg) -> VideoTaskDataset:
    return VideoTaskDataset(
        records,
        num_frames=cfg.data.num_frames,
        img_size=cfg.model.vision.img_size,
        resize=cfg.model.vision.resize,
        sampling="middle",
        seed=0,
        strict=True,
    )


@dataclass
class EvalItems:
    """One task's test samples, decoded once and shared by every model and the prior scored.

    mask_frames / gt_masks (mask task only): per sample the frames the mask head predicts on,
    uint8 `[k, 3, H0, W0]`, and their GT, bool `[k, H0, W0]` (see `visible_mask_frames`).
    """

    task: str
    samples: list
    mask_frames: list[torch.Tensor] = field(default_factory=list)
    gt_masks: list[np.ndarray] = field(default_factory=list)


def prepare(test: dict[str, list[Record]], cfg) -> dict[str, EvalItems]:
    """The test records as samples at the model's frames and size, per task."""
    items = {}
    for task, records in test.items():
        data = _samples(records, cfg)
        it = EvalItems(task, [data[i] for i in range(len(records))])
        if task == "mask":
            for frames, gt in map(visible_mask_frames, it.samples):
                it.mask_frames.append(frames)
                it.gt_masks.append(gt.numpy().astype(bool))
        items[task] = it
    return items


def evaluate(
    predictor: Predictor, items: dict[str, EvalItems], batch_size: int = 8, desc: str = "model"
) -> dict[str, np.ndarray]:
    """Per-item scores of the predictor's model: metric -> `[n]` (hits 0/1, J&F in [0, 1])."""

    results: dict[str, np.ndarray] = {}
    for task, it in items.items():
        preds: list[GroundedAnswer] = []
        for start in tqdm(
            range(0, len(it.samples), batch_size), desc=f"{desc}: {task}", leave=False
        ):
            samples = it.samples[start : start + batch_size]
            frames = it.mask_frames[start : start + batch_size] or [None] * len(samples)
            preds += predictor.answer_samples(
                samples,
                [question_text(s.record) for s in samples],
                options=[AskOptions(s.box_frame or 0, f) for s, f in zip(samples, frames)],
                max_new_tokens=32,
            )
        results[METRICS[task]] = item_scores(task, preds, it.samples, it.gt_masks)
    return results


def evaluate_prior(prior: Prior, items: dict[str, EvalItems]) -> dict[str, np.ndarray]:
    """Per-item scores of the constant predictions, on the same samples and frames as `evaluate`."""
    results: dict[str, np.ndarray] = {}
    c, w = prior.span
    for task, it in items.items():
        preds = []
        for k, s in enumerate(it.samples):
            d = s.record.duration or s.duration  # the fit normalised by the annotated one
            rec = s.record
            box = None
            if rec.width and rec.height:
                x1, y1, x2, y2 = prior.box
                box = BoxPrediction(
                    (x1 * rec.width, y1 * rec.height, x2 * rec.width, y2 * rec.height), 0, 0.0
                )
            mask = None
            if it.gt_masks:
                stack = np.broadcast_to(prior.mask, it.gt_masks[k].shape).copy()
                mask = MaskTrack(stack, np.arange(len(stack)), 1.0)
            preds.append(
                GroundedAnswer(
                    text=f"({prior.answer_letter})",
                    windows=[TimeWindow(max(0.0, (c - w / 2) * d), min(d, (c + w / 2) * d), 1.0)],
                    boxes=[] if box is None else [box],
                    masks=mask,
                )
            )
        results[METRICS[task]] = item_scores(task, preds, it.samples, it.gt_masks)
    return results


def item_scores(
    task: str, preds: list[GroundedAnswer], samples: list, gt_masks: list | None = None
) -> np.ndarray:
    """`[n]` scores of answers against their `VideoTaskDataset` samples: top-1 window IoU >=
    0.5, box IoU >= 0.5 (normalised xyxy: the pixel box over the record's size), J&F of the
    mask track on `gt_masks` (bool `[k, H, W]` each), right option (the MVBench rule)."""

    if len(preds) != len(samples):
        raise ValueError(f"{len(preds)} predictions for {len(samples)} samples")
    if task == "temporal":
        top = np.array(
            [[p.windows[0].start, p.windows[0].end] if p.windows else [0.0, 0.0] for p in preds],
            float,
        )
        gt = [s.record.windows for s in samples]
        return (top1_iou(top.reshape(-1, 2), gt) >= 0.5).astype(float)
    if task == "region":
        pred = np.array(
            [
                p.boxes[0].normalised(s.record.width, s.record.height) if p.boxes else [0.0] * 4
                for p, s in zip(preds, samples)
            ],
            float,
        )
        gt = np.array([s.box.tolist() for s in samples], float)
        return (box_iou(pred.reshape(-1, 4), gt.reshape(-1, 4)) >= 0.5).astype(float)
    if task == "mask":
        if gt_masks is None or len(gt_masks) != len(preds):
            raise ValueError("mask scores need one GT mask stack per prediction")
        scores = []
        for p, gt in zip(preds, gt_masks):
            pm = p.masks.masks if p.masks is not None else np.zeros(gt.shape, bool)
            j, f = video_jf(np.asarray(pm, bool), gt)
            scores.append((j + f) / 2)
        return np.array(scores, float)
    if task == "mc":
        return np.array(
            [check_answer(p.text, s.record.answer) for p, s in zip(preds, samples)], float
        )
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(METRICS)}")


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """metric -> 100 x the mean item score."""
    return {m: 100 * float(np.mean(s)) if len(s) else 0.0 for m, s in scores.items()}


def paired_difference(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """100 x (mean(a) - mean(b)) of paired item scores and its `level` bootstrap interval
    (resampling test items, so both models see the same draw)."""
    # function-level: scipy only when this computation runs
    from scipy.stats import bootstrap

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two [n] arrays, got {a.shape} and {b.shape}")
    diff = 100 * float(a.mean() - b.mean())
    if len(a) < 2:
        return diff, diff, diff
    # percentile, not scipy's default BCa: BCa is undefined (NaN) when every item is a tie
    res = bootstrap(
        (a, b),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        random_state=seed,
    )
    return diff, 100 * float(res.confidence_interval.low), 100 * float(res.confidence_interval.high)
