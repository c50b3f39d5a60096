"""Does training help? The untrained model, a prior-only baseline and a trained model on the
toy-world test split, scored with the same four metrics (temporal R1@0.5, box Acc@0.5, mask
J&F, multiple-choice accuracy). Used by bench/learning.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tpo.data.dataset import VideoTaskDataset
from tpo.data.records import Record

TEST_FILES = {  # name -> (format, annotation under annotations/)
    "temporal": ("qvh", "qvh_{split}.jsonl"),
    "region": ("refcoco", "refcoco_{split}.json"),
    "mask": ("mevis", "mevis_{split}"),
    "mc": ("mvbench", "mvbench_{split}.json"),
}


def load_split(root: str | Path, split: str, limit: int | None = None) -> dict[str, list[Record]]:
    """The toy world's records of one split, per task (strict: the files are generated)."""
    from tpo.data.loaders import load_annotation
    from tpo.data.records import LoadReport

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
    from tpo.train.builders import annotated_mask_frames, evenly_spaced, read_mask_frames

    visible, _ = annotated_mask_frames(sample)
    if len(visible) == 0:  # hidden on every sampled frame: score the annotated ones
        visible = sample.mask_valid.nonzero()[:, 0]
    return read_mask_frames(sample, evenly_spaced(visible, k))


def _samples(records: list[Record], cfg) -> VideoTaskDataset:
    return VideoTaskDataset(
        records,
        num_frames=cfg.data.num_frames,
        img_size=cfg.model.vision.img_size,
        sampling="middle",
        seed=0,
        strict=True,
    )


def evaluate(
    model, collator, cfg, test: dict[str, list[Record]], batch_size: int = 8, desc: str = "model"
) -> dict[str, float]:
    """The four metrics of `model` on the test records."""
    from tpo.eval.boxes import box_accuracy
    from tpo.eval.mask_ops import video_jf
    from tpo.eval.moments import recall_at_1
    from tpo.eval.multiple_choice import multiple_choice_accuracy
    from tpo.infer.predict import predict
    from tpo.train.builders import question_text

    results: dict[str, float] = {}
    for task, records in test.items():
        data = _samples(records, cfg)
        preds, gts = [], []
        for start in tqdm(range(0, len(records), batch_size), desc=f"{desc}: {task}", leave=False):
            samples = [data[i] for i in range(start, min(start + batch_size, len(records)))]
            qs = [question_text(s.record) for s in samples]
            mframes = [visible_mask_frames(s)[0] for s in samples] if task == "mask" else None
            out = predict(
                model,
                collator,
                torch.stack([s.frames for s in samples]),
                qs,
                [s.record.video for s in samples],
                [s.duration for s in samples],
                box_frames=[s.box_frame or 0 for s in samples],
                mask_frames=mframes,
            )
            for s, p in zip(samples, out):
                preds.append(p)
                gts.append(s)
        results.update(
            _score(task, preds, gts, recall_at_1, box_accuracy, video_jf, multiple_choice_accuracy)
        )
    return results


def _score(task, preds, gts, recall_at_1, box_accuracy, video_jf, mc_accuracy) -> dict[str, float]:

    if task == "temporal":
        top = np.array([p.windows[0][:2] if p.windows else [0.0, 0.0] for p in preds])
        return {"temporal R1@0.5": 100 * recall_at_1(top, [s.record.windows for s in gts], 0.5)}
    if task == "region":
        pred = np.array([p.box if p.box is not None else [0, 0, 0, 0] for p in preds], float)
        gt = np.array([s.box.tolist() for s in gts], float)
        return {"box Acc@0.5": 100 * box_accuracy(pred, gt, 0.5)}
    if task == "mask":
        scores = []
        for p, s in zip(preds, gts):
            _, gt = visible_mask_frames(s)
            pm = p.masks if p.masks is not None else np.zeros(gt.shape, bool)
            j, f = video_jf(np.asarray(pm, bool), gt.numpy().astype(bool))
            scores.append((j + f) / 2)
        return {"mask J&F": 100 * float(np.mean(scores))}
    texts = [p.text for p in preds]
    return {
        "MC accuracy": 100
        * mc_accuracy(texts, [s.record.answer for s in gts], raw_generation=False)
    }


def evaluate_prior(prior: Prior, test: dict[str, list[Record]]) -> dict[str, float]:
    """The four metrics of the constant predictions."""
    from pycocotools import mask as mask_utils

    from tpo.eval.boxes import box_accuracy
    from tpo.eval.mask_ops import video_jf
    from tpo.eval.moments import recall_at_1
    from tpo.eval.multiple_choice import multiple_choice_accuracy

    c, w = prior.span
    top = np.array(
        [
            [max(0.0, (c - w / 2) * r.duration), min(r.duration, (c + w / 2) * r.duration)]
            for r in test["temporal"]
        ]
    )
    r1 = recall_at_1(top, [r.windows for r in test["temporal"]], 0.5)
    gt_boxes = np.array(
        [
            [r.box[0] / r.width, r.box[1] / r.height, r.box[2] / r.width, r.box[3] / r.height]
            for r in test["region"]
        ]
    )
    acc = box_accuracy(np.tile(prior.box, (len(gt_boxes), 1)), gt_boxes, 0.5)
    jfs = []
    for r in test["mask"]:
        gt = np.stack([mask_utils.decode(m).astype(bool) for m in r.masks.values()])
        j, f = video_jf(np.broadcast_to(prior.mask, gt.shape).copy(), gt)
        jfs.append((j + f) / 2)
    mc = multiple_choice_accuracy(
        [f"({prior.answer_letter})" for _ in test["mc"]],
        [r.answer for r in test["mc"]],
        raw_generation=False,
    )
    return {
        "temporal R1@0.5": 100 * r1,
        "box Acc@0.5": 100 * acc,
        "mask J&F": 100 * float(np.mean(jfs)),
        "MC accuracy": 100 * mc,
    }
