"""Per-frame video features for the temporal head: npz files, a frame encoder, a feature cache.

The temporal head sees its own frame rate (`feat_fps`, default one feature per second, capped
at `max_feats`), independent of the LLM's 16 frames. Features come either from our vision
encoder, run frame by frame without gradient and cached per video, or from precomputed npz
files holding `features [t, d]` and `timestamps [t]` (or a scalar `fps`). Training encodes the
frames its DataLoader decoded (`FrameFeatureCache.encode_frames`); the path-keyed cache serves
inference. The sampling times (`sample_feature_times`) live on the data side.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tpo.data.video import frames_at, open_source
from tpo.data.video import sample_feature_times as sample_feature_times  # moved to the data side


def load_npz_features(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read `features [t, d]` and `timestamps [t]` (seconds) from an npz file.

    The file holds `features` (or `feats`) and either `timestamps` or a scalar `fps`
    (then timestamps are the clip centres (i + 0.5) / fps).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: npz feature file not found")
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        feat_key = next((k for k in ("features", "feats") if k in data), None)
        if feat_key is None:
            raise KeyError(f"{path}: expected key 'features' (or 'feats') [t, d]; found {keys}")
        feats = np.asarray(data[feat_key], dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise ValueError(f"{path}: '{feat_key}' must be [t, d] with t >= 1, got {feats.shape}")
        if "timestamps" in data:
            times = np.asarray(data["timestamps"], dtype=np.float32)
        elif "fps" in data:
            fps = float(np.asarray(data["fps"]).reshape(-1)[0])
            if fps <= 0:
                raise ValueError(f"{path}: 'fps' must be > 0, got {fps}")
            times = (np.arange(len(feats), dtype=np.float32) + 0.5) / fps
        else:
            raise KeyError(f"{path}: expected key 'timestamps' [t] or a scalar 'fps'; found {keys}")
    if times.shape != (len(feats),):
        raise ValueError(
            f"{path}: 'timestamps' must be [{len(feats)}] to match '{feat_key}', got {times.shape}"
        )
    if not (np.isfinite(feats).all() and np.isfinite(times).all()):
        raise ValueError(f"{path}: features or timestamps hold NaN/inf")
    if (np.diff(times) <= 0).any():
        raise ValueError(f"{path}: 'timestamps' must be strictly increasing")
    return torch.from_numpy(feats), torch.from_numpy(times)


def save_npz_features(path: str | Path, feats: Tensor, timestamps: Tensor) -> None:
    """Write `feats [t, d]`, `timestamps [t]` as an npz readable by `load_npz_features` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f, features=feats.float().cpu().numpy(), timestamps=timestamps.float().cpu().numpy()
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vision_frame_encoder(vision: nn.Module, patches: bool = False) -> Callable[[Tensor], Tensor]:
    """Wrap our vision encoder as `frames [t, 3, H, W] -> features [t, d_v]`.

    Each frame is encoded as a one-frame clip `[t, 1, 3, H, W]`; the encoder's
    `VisionOutput.frames [t, 1, d_v]` gives the feature, or with `patches` its patch features
    `[t, p, d_v]` (for a spatial temporal head).
    """

    def encode(frames: Tensor) -> Tensor:
        out = vision(frames[:, None])
        return out.patches if patches else out.frames[:, 0]

    return encode


class FrameFeatureCache:
    """Features of a video at the head's frame rate, computed once without gradient and cached.

    `encode` maps frames `[t, 3, H, W]` to `[t, d]` (see `vision_frame_encoder`); `read_frames`
    decodes `(video_path, timestamps [t] s)` to frames `[t, 3, H, W]`. The last `memory_items`
    results stay in memory and, with `cache_dir`, all stay in npz files keyed by path, rate, cap and `tag` (name the encoder
    weights in `tag`: the cache assumes a frozen encoder).
    """

    def __init__(
        self,
        encode: Callable[[Tensor], Tensor],
        read_frames: Callable[[str, Tensor], Tensor],
        feat_fps: float = 1.0,
        max_feats: int = 75,
        cache_dir: str | Path | None = None,
        batch_size: int = 16,
        tag: str = "",
        memory_items: int = 256,
    ):
        self.encode = encode
        self.read_frames = read_frames
        self.feat_fps = feat_fps
        self.max_feats = max_feats
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.tag = tag
        self.memory_items = memory_items
        self._memory: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    @torch.no_grad()
    @torch.no_grad()
    def encode_frames(self, frames: Tensor) -> Tensor:
        """Features `[t, d]` (or `[t, p, d]`) float32 of frames `[t, 3, H, W]` decoded by the data
        pipeline, on their device, in chunks of `batch_size`, without gradient (as the cached
        path); nothing is read or cached (training: the same work on every step and rank,
        whatever ran before)."""
        return torch.cat([self.encode(chunk).float() for chunk in frames.split(self.batch_size)])

    def _key(self, video_path: str) -> str:
        ident = f"{Path(video_path).resolve()}|{self.feat_fps}|{self.max_feats}|{self.tag}"
        return hashlib.sha1(ident.encode()).hexdigest()

    @torch.no_grad()
    def __call__(self, video_path: str, duration: float) -> tuple[Tensor, Tensor]:
        """`(feats [t, d] float32 cpu, timestamps [t] s)` of `video_path`."""
        key = self._key(video_path)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        file = self.cache_dir / f"{key}.npz" if self.cache_dir is not None else None
        if file is not None and file.is_file():
            result = load_npz_features(file)
        else:
            times = sample_feature_times(duration, self.feat_fps, self.max_feats)
            frames = self.read_frames(video_path, times)
            if frames.shape[0] != len(times):
                raise ValueError(
                    f"{video_path}: read {frames.shape[0]} frames for {len(times)} timestamps"
                )
            chunks = [self.encode(chunk).float().cpu() for chunk in frames.split(self.batch_size)]
            result = (torch.cat(chunks), times)
            if file is not None:
                save_npz_features(file, *result)
        self._memory[key] = result
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
        return result


def frame_reader(img_size: int, resize: str) -> Callable[[str, Tensor], Tensor]:
    """`(video, times [t] s) -> frames [t, 3, S, S]` normalised, the frames nearest `times`."""

    def read(video: str, times: Tensor) -> Tensor:
        return frames_at(open_source(video), times, img_size, resize=resize)

    return read
