"""Which frames to decode and where the temporal head's features sit: index and time samplers
(pure numpy / torch, no decoding), used by `tpo.data.video` and the heads."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

SampleMode = Literal["middle", "rand", "fps"]


def sample_indices(
    num_total: int,
    fps: float,
    num_frames: int,
    mode: SampleMode = "middle",
    *,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices `[f]` to decode from a video of `num_total` frames at `fps`.

    The clip is frames [round(start*fps), round(end*fps)) (whole video when None), split into
    `num_frames` equal segments as VideoChat2 does: 'middle' takes each segment's centre frame
    (floor), 'rand' a uniformly random frame inside each segment. A clip shorter than
    `num_frames` repeats frames (segments shorter than one frame share it), so `f == num_frames`.
    'fps' takes one frame per 1/sample_fps seconds at the centre of each interval; when that
    gives more than `num_frames` (> 0) frames it falls back to 'middle' with `num_frames`.
    """
    if num_total <= 0:
        raise ValueError(f"sample_indices: the video has no frames (num_total={num_total})")
    if not fps > 0:
        raise ValueError(f"sample_indices: fps must be > 0, got {fps}")
    lo = 0 if start is None else max(0, int(round(start * fps)))
    hi = num_total if end is None else min(num_total, int(round(end * fps)))
    if lo >= num_total:
        raise ValueError(
            f"sample_indices: clip start {start}s is past the end of the video "
            f"({num_total} frames at {fps:.3f} fps = {num_total / fps:.2f}s)"
        )
    hi = max(hi, lo + 1)  # an empty or inverted clip keeps its first frame
    if mode == "fps":
        if sample_fps is None or not sample_fps > 0:
            raise ValueError(f"sample_indices: mode 'fps' needs sample_fps > 0, got {sample_fps}")
        step = fps / sample_fps  # frames per sample
        count = max(1, int(np.floor((hi - lo) / step)))
        if num_frames <= 0 or count <= num_frames:
            return np.minimum(lo + np.floor((np.arange(count) + 0.5) * step), hi - 1).astype(
                np.int64
            )
        mode = "middle"
    if num_frames <= 0:
        raise ValueError(f"sample_indices: num_frames must be > 0, got {num_frames}")
    edges = lo + (hi - lo) * np.arange(num_frames + 1) / num_frames  # segment boundaries
    if mode == "middle":
        idx = np.floor((edges[:-1] + edges[1:]) / 2)
    elif mode == "rand":
        rng = rng if rng is not None else np.random.default_rng()
        first = np.ceil(edges[:-1])  # whole frames k with edges[i] <= k < edges[i + 1]
        count = np.ceil(edges[1:]) - first
        pick = first + np.floor(rng.random(num_frames) * np.maximum(count, 1))
        idx = np.where(count >= 1, pick, np.floor(edges[:-1]))  # sub-frame segment: its frame
    else:
        raise ValueError(f"sample_indices: mode must be 'middle', 'rand' or 'fps', got {mode!r}")
    return np.clip(idx, lo, hi - 1).astype(np.int64)


def sample_feature_times(duration: float, feat_fps: float, max_feats: int) -> torch.Tensor:
    """Clip-centre timestamps in seconds `[t]`: one per 1/feat_fps s, at most `max_feats`.

    The video is cut into clips [i / feat_fps, min((i + 1) / feat_fps, duration)] (at least one);
    when there are more than `max_feats`, into `max_feats` equal clips instead.
    """
    if not duration > 0:
        raise ValueError(f"sample_feature_times: duration must be > 0 s, got {duration}")
    if feat_fps <= 0 or max_feats < 1:
        raise ValueError(
            f"sample_feature_times: need feat_fps > 0 and max_feats >= 1, got {feat_fps}, {max_feats}"
        )
    count = max(1, int(np.ceil(duration * feat_fps - 1e-6)))
    if count > max_feats:
        step = duration / max_feats
        return ((torch.arange(max_feats, dtype=torch.float64) + 0.5) * step).float()
    starts = torch.arange(count, dtype=torch.float64) / feat_fps
    ends = ((torch.arange(count, dtype=torch.float64) + 1) / feat_fps).clamp(max=duration)
    return ((starts + ends) / 2).float()
