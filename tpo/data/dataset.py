"""The training dataset: records -> sampled frames + normalised head targets; weighted mixing.

Bad samples (unreadable video, annotation that does not fit its video) are skipped in
non-strict mode: the next good record is returned, and the skip is counted by reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from tpo.data.records import AnnotationError, Record
from tpo.data.video import (
    VideoError,
    frames_at,
    load_video,
    open_source,
    sample_feature_times,
)

SALIENCY_CLIP_S = 2.0  # QVHighlights scores 2-second clips


@dataclass
class Sample:
    """One training example.

    frames: `[f, 3, H, W]` normalised frames (uint8, resized only, from a dataset built with
        `normalize=False`); timestamps: `[f]` seconds (video time).
    indices: `[f]` decoded frame indices. record: the annotation it came from.
    index: the dataset index actually returned (differs from the asked one after a skip).
    clip_start, duration: the clip [clip_start, clip_start + duration) seconds that the
        temporal targets are normalised by (the whole video unless the record has start/end).
    spans: temporal `[k, 2]` (centre, width) / duration in [0, 1]; None for other tasks.
    saliency: temporal `[n_clips]` mean annotator score of each 2-s clip of the clip (0 for
        clips without scores); None when the annotation has no scores.
    box: region `[4]` normalised xyxy in [0, 1] of the asked frame; box_frame: its position in f.
    masks: mask `[f, H0, W0]` bool ground truth at the sampled frames (H0, W0: the annotation's
        size); mask_valid: `[f]` bool, False where the sampled frame was not annotated.
    temporal_frames: `[t, 3, H, W]` normalised frames for the temporal head at `temporal_times`
        `[t]` s (video time, `sample_feature_times` over [0, clip end]), when the dataset has a
        `feature_rate` and the record temporal targets; else None.
    targets: per-head target dicts for heads the built-in fields do not cover (a reader or a
        dataset subclass fills them; read by the default `TaskHead.targets_from`).
    skipped: reasons of the bad records skipped on the way to this one; bad_records: their
        indices (the same order), for counting them once in the main process.
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    indices: np.ndarray
    record: Record
    index: int
    clip_start: float
    duration: float
    spans: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    box: torch.Tensor | None = None
    box_frame: int | None = None
    masks: torch.Tensor | None = None
    mask_valid: torch.Tensor | None = None
    temporal_frames: torch.Tensor | None = None
    temporal_times: torch.Tensor | None = None
    targets: dict[str, dict] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    bad_records: tuple[int, ...] = ()


def include_frame(indices: np.ndarray, frame: int) -> tuple[np.ndarray, int]:
    """Force `frame` into sorted `indices` by replacing the nearest one; returns (indices, pos).

    A region question asks about one frame, so that frame must be among those the model sees.
    Replacing the nearest sampled index keeps the indices sorted.
    """
    pos = int(np.argmin(np.abs(indices - frame)))
    out = indices.copy()
    out[pos] = frame
    return out, pos


def _temporal_targets(
    rec: Record, clip_start: float, length: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    spans = []
    for s, e in rec.windows:
        s, e = max(s - clip_start, 0.0), min(e - clip_start, length)
        if e > s or (e == s and 0 <= s <= length):
            spans.append(((s + e) / 2 / length, (e - s) / length))
    if not spans:
        raise AnnotationError(
            f"{rec.source}: qid {rec.qid}: no window {rec.windows} overlaps the clip "
            f"[{clip_start:g}, {clip_start + length:g}] s of {rec.video}",
            "bad_window",
        )
    saliency = None
    if rec.clip_ids:
        n_clips = max(1, math.ceil(length / SALIENCY_CLIP_S - 1e-6))
        offset = int(clip_start // SALIENCY_CLIP_S)
        saliency = torch.zeros(n_clips)
        for cid, scores in zip(rec.clip_ids, rec.saliency):
            if 0 <= cid - offset < n_clips:
                saliency[cid - offset] = float(np.mean(scores))
    return torch.tensor(spans, dtype=torch.float32), saliency


def _box_target(rec: Record, orig_size: tuple[int, int]) -> torch.Tensor:
    """The box in [0, 1] of the annotated frame size (the video's own size when not given)."""
    assert rec.box is not None
    width, height = rec.width or orig_size[1], rec.height or orig_size[0]
    x1, y1, x2, y2 = rec.box
    return torch.tensor([x1 / width, y1 / height, x2 / width, y2 / height]).clamp(0, 1)


def _mask_targets(rec: Record, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    assert rec.masks is not None and rec.height and rec.width
    out = torch.zeros(len(indices), rec.height, rec.width, dtype=torch.bool)
    annotated = set(rec.mask_frames)
    valid = torch.tensor([int(i) in annotated for i in indices])
    for k, i in enumerate(indices.tolist()):
        rle = rec.masks.get(int(i))
        if rle is not None:
            try:
                m = mask_utils.decode(rle)  # [H0, W0] uint8, Fortran order
            except ValueError as err:  # counts that do not cover the frame
                raise AnnotationError(
                    f"{rec.source}: mask of frame {i} is not a valid COCO RLE ({err})", "bad_value"
                ) from err
            if m.shape != (rec.height, rec.width):
                raise AnnotationError(
                    f"{rec.source}: mask of frame {i} is {m.shape}, expected "
                    f"{(rec.height, rec.width)}",
                    "bad_value",
                )
            out[k] = torch.from_numpy(np.ascontiguousarray(m)).bool()
    return out, valid


class VideoTaskDataset(Dataset):
    """Records -> `Sample`s: frames sampled per `sampling` + the record's head targets.

    Sampling is deterministic given (seed, epoch, index); call `set_epoch` each epoch.
    Non-strict: a bad sample is skipped (the next index is tried), counted once per record in
    `bad_samples` (reason -> count; per process when DataLoader workers are used, so each
    `Sample` also lists its skips, which the main process counts with `note_bad`).
    `feature_rate` (feat_fps, max_feats): also decode the temporal head's frames of records
    with temporal targets (`Sample.temporal_frames`). `normalize=False`: frames stay resized
    uint8 (4x smaller to ship from workers and to the device, which normalises them:
    `TrainBatch.to`). `resize`: the frame resize kernel (`tpo.data.video.RESIZE_MODES`).
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        num_frames: int,
        img_size: int,
        sampling: str = "rand",
        seed: int = 0,
        strict: bool = False,
        feature_rate: tuple[float, int] | None = None,
        normalize: bool = True,
        resize: str = "uint8",
    ) -> None:
        if sampling not in ("rand", "middle"):
            raise ValueError(f"sampling must be 'rand' or 'middle', got {sampling!r}")
        if not records:
            raise ValueError("VideoTaskDataset: no records")
        self.records = list(records)
        self.num_frames, self.img_size, self.sampling = num_frames, img_size, sampling
        self.seed, self.strict, self.epoch = seed, strict, 0
        self.feature_rate, self.normalize, self.resize = feature_rate, normalize, resize
        self.bad_samples: Counter = Counter()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the random frame sampling for a new epoch."""
        self.epoch = epoch

    def state_dict(self) -> dict:
        """The bad records found so far and their counts (a resumed run neither rereads nor
        recounts them)."""
        return {"bad_samples": dict(self.bad_samples), "bad_records": sorted(self._bad)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.bad_samples = Counter(state["bad_samples"])
        self._bad = set(state["bad_records"])

    def note_bad(self, index: int, reason: str) -> bool:
        """Count bad record `index` under `reason` unless it is known already (True if new)."""
        if index in self._bad:
            return False
        self._bad.add(index)
        self.bad_samples[reason] += 1
        return True

    def __getitem__(self, index: int) -> Sample:
        skipped: list[str] = []
        bad: list[int] = []
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                sample = self.build(i)
            except (VideoError, AnnotationError) as err:
                if self.strict:
                    raise
                kind = "video" if isinstance(err, VideoError) else "annotation"
                reason = f"{kind}_{err.reason}"
                self.note_bad(i, reason)
                skipped.append(reason)
                bad.append(i)
                continue
            sample.skipped, sample.bad_records = tuple(skipped), tuple(bad)
            return sample
        raise RuntimeError(
            f"VideoTaskDataset: no readable sample among {n} records (bad: {dict(self.bad_samples)})"
        )

    def build(self, index: int) -> Sample:
        """The sample of record `index` (raises VideoError/AnnotationError when it is bad)."""
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        src = open_source(rec.video)
        indices = src.sample(self.num_frames, self.sampling, start=rec.start, end=rec.end, rng=rng)
        box_frame = None
        if rec.task == "region":
            frame = rec.frame_index
            if frame is None:
                frame = int(round((rec.frame_time or 0.0) * src.fps))
            if not 0 <= frame < src.num_total:
                raise AnnotationError(
                    f"{rec.source}: id {rec.qid}: frame {frame} is outside the video "
                    f"{rec.video} ({src.num_total} frames)",
                    "bad_box",
                )
            indices, box_frame = include_frame(indices, frame)
        clip = load_video(
            src,
            img_size=self.img_size,
            indices=indices,
            normalize=self.normalize,
            resize=self.resize,
        )
        clip_start = rec.start or 0.0
        clip_end = min(rec.end, clip.duration) if rec.end is not None else clip.duration
        sample = Sample(
            frames=clip.frames,
            timestamps=clip.timestamps,
            indices=clip.indices,
            record=rec,
            index=index,
            clip_start=clip_start,
            duration=max(clip_end - clip_start, 1.0 / clip.fps),
            box_frame=box_frame,
        )
        if rec.task in ("temporal", "gqa") and rec.windows:
            sample.spans, sample.saliency = _temporal_targets(rec, clip_start, sample.duration)
            if self.feature_rate is not None:
                times = sample_feature_times(clip_start + sample.duration, *self.feature_rate)
                sample.temporal_frames = frames_at(
                    src, times, self.img_size, self.normalize, self.resize
                )
                sample.temporal_times = times
        if rec.task == "region":
            sample.box = _box_target(rec, clip.orig_size)
        if rec.task == "mask":
            sample.masks, sample.mask_valid = _mask_targets(rec, clip.indices)
        return sample


def sample_weights(records: Sequence[Record], weights: Mapping[str, float]) -> torch.Tensor:
    """Per-record weights `[n]` such that each dataset is drawn with probability ~ its weight.

    A dataset's weight is shared by its records (weight / count), so a big dataset is not
    drawn more often than a small one of the same weight.
    """
    counts = Counter(r.dataset for r in records)
    missing = sorted(set(counts) - set(weights))
    if missing:
        raise ValueError(
            f"sample_weights: no weight for dataset(s) {missing}; have {sorted(weights)}"
        )
    return torch.tensor(
        [weights[r.dataset] / counts[r.dataset] for r in records], dtype=torch.double
    )
