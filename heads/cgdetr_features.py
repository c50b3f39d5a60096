"""The external features CG-DETR reads: clip features of the video and features of the query.

Sources are callables on a `HeadSample`; each returns the features given for that one question
first (`HeadSample.video_features` `[t, d]` at the source's rate, `HeadSample.query_features`
`[l, d]`), else its own:

- video: `NpzVideoFeatures` (`{folder}/{video_id}.npz`, array `features` `[t, dim]` at `fps`
  per second, the layout moment-retrieval datasets ship) or `VisionVideoFeatures` (tpo's own
  encoder through `HeadSample.frame_features`);
- query: `NpzQueryFeatures` (`{folder}/qid{qid}.npz`, array `last_hidden_state` `[l, dim]`) or
  `LLMQueryFeatures` (the LLM's input embeddings of `HeadSample.query_ids`).

No source appends the temporal endpoint feature nor cuts the query to `max_q_l`: the head does.
`as_features` converts what `ask(video_features=..., query_features=...)` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from tpo.config.heads import CGDETRConfig, TemporalHeadConfig
from tpo.model.task_head import HeadSample

VIDEO_KEY = "features"  # array of a video's npz file, [t, d]
QUERY_KEY = "last_hidden_state"  # array of a query's npz file, [l, d]
_KEYS = {"video": VIDEO_KEY, "query": QUERY_KEY}


@dataclass
class ClipFeatures:
    """Video features of one question's clip: `feats` `[t, d]` float32 (no temporal endpoint
    feature), `times` `[t]` seconds of the clip (clip centres), `fps` features per second."""

    feats: Tensor
    times: Tensor
    fps: float


class TemporalFeatureSource(Protocol):
    """Where CG-DETR's clip features come from (a port of another video encoder implements it)."""

    def __call__(self, sample: HeadSample) -> ClipFeatures:
        """The clip features of `sample`'s question."""
        ...


class QueryFeatureSource(Protocol):
    """Where CG-DETR's text features come from."""

    def __call__(self, sample: HeadSample) -> Tensor:
        """The query features `[l, d]` float32 (l >= 1) of `sample`'s question."""
        ...


def check_features(feats: Tensor, where: str, dim: int | None = None) -> Tensor:
    """`feats` as float32 `[n, d]`, checked: 2-d, n >= 1, finite, d == `dim` (when given);
    `where` names the file or argument in the errors."""
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{where}: expected features [n, d] with n >= 1, got {tuple(feats.shape)}")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(f"{where}: expected features of width {dim}, got {feats.shape[1]}")
    feats = feats.detach().float()
    if not torch.isfinite(feats).all():
        raise ValueError(f"{where}: features hold NaN or inf")
    return feats


def load_npz_array(path: Path, key: str, dim: int | None = None) -> Tensor:
    """Array `key` of the npz file `path` as checked float32 `[n, d]` (see `check_features`)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable npz file ({e})") from e
    with data:
        if not hasattr(data, "files"):  # a plain .npy saved under an .npz name
            raise ValueError(f"{path}: expected an npz archive holding {key!r}, got a bare array")
        if key not in data.files:
            raise KeyError(f"{path}: expected array {key!r}; found keys {sorted(data.files)}")
        array = np.asarray(data[key])
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: {key!r} must be numeric, got dtype {array.dtype}")
    return check_features(torch.from_numpy(array.astype(np.float32)), f"{path} [{key}]", dim)


def as_features(value, what: str) -> Tensor:
    """Features given to `ask` as float32 `[n, d]` (cpu): a numpy array or tensor `[n, d]`, or
    the path of an npz file (array `features` for `what` "video", `last_hidden_state` for
    "query")."""
    if what not in _KEYS:
        raise ValueError(f"as_features: what must be 'video' or 'query', not {what!r}")
    arg = f"{what}_features"
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{arg}: {path}: no such npz file")
        return load_npz_array(path, _KEYS[what])
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"{arg}: expected a numeric array [n, d], got dtype {value.dtype}")
        value = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if not torch.is_tensor(value):
        raise TypeError(
            f"{arg}: expected a numpy array, a tensor [n, d] or an .npz path, got "
            f"{type(value).__name__}"
        )
    return check_features(value.cpu(), arg)


def _given_clips(sample: HeadSample, fps: float, dim: int | None) -> ClipFeatures | None:
    """The sample's given video features at `fps`, centred clip times; None when not given."""
    if sample.video_features is None:
        return None
    feats = check_features(sample.video_features, "the given video_features", dim)
    return ClipFeatures(feats, (torch.arange(len(feats), dtype=torch.float32) + 0.5) / fps, fps)


class NpzVideoFeatures:
    """Clip features from `{folder}/{video_id}.npz` (array `features` `[t, dim]`, `fps` per
    second from the start of the video; video_id: the stem of `sample.video`), cut to the
    sample's clip (features whose centre lies in `[clip_start, clip_start + duration)`);
    `folder` None: only features given per question."""

    def __init__(self, folder: str | Path | None, fps: float, dim: int) -> None:
        if fps <= 0:
            raise ValueError(f"NpzVideoFeatures: fps must be > 0, got {fps}")
        self.folder = None if folder is None else Path(folder)
        self.fps, self.dim = float(fps), int(dim)

    def __call__(self, sample: HeadSample) -> ClipFeatures:
        """The clip features of `sample` (its given features first)."""
        given = _given_clips(sample, self.fps, self.dim)
        if given is not None:
            return given
        if self.folder is None:
            raise ValueError(
                "no video features for this question: give video_features (clip features "
                f"[t, {self.dim}] at {self.fps:g}/s) or set heads.temporal.cgdetr.video_feature_dir"
            )
        if sample.video is None:
            raise ValueError(
                "npz video features are keyed by the video's file name: this question's video "
                "is not a file (give video_features)"
            )
        video_id = Path(sample.video).stem
        path = self.folder / f"{video_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"no video features for video {video_id!r}: {path.name} not found in {self.folder}"
            )
        feats = load_npz_array(path, VIDEO_KEY, self.dim)
        times = (torch.arange(len(feats), dtype=torch.float32) + 0.5) / self.fps - sample.clip_start
        keep = (times >= 0) & (times < sample.duration) if sample.duration > 0 else times >= 0
        if not keep.any():
            raise ValueError(
                f"{path}: its {len(feats)} features at {self.fps:g}/s cover "
                f"{len(feats) / self.fps:g} s, none inside the clip [{sample.clip_start:g}, "
                f"{sample.clip_start + sample.duration:g}] s"
            )
        return ClipFeatures(feats[keep], times[keep], self.fps)


class VisionVideoFeatures:
    """Clip features from tpo's own encoder (`sample.frame_features()`: feats `[t, d]`, times
    `[t]` s of the clip) at `fps`, the temporal head's `feat_fps`."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"VisionVideoFeatures: fps must be > 0, got {fps}")
        self.fps = float(fps)

    def __call__(self, sample: HeadSample) -> ClipFeatures:
        """The clip features of `sample` (its given features first)."""
        given = _given_clips(sample, self.fps, None)
        if given is not None:
            return given
        if sample.frame_features is None:
            raise ValueError(
                "cgdetr.video_features 'vision': this question has no per-frame feature source "
                "(the model's temporal_features) and no given video_features"
            )
        feats, times = sample.frame_features()
        feats = check_features(feats, "the vision encoder's frame features")
        if times.shape != (len(feats),):
            raise ValueError(
                f"the vision encoder's frame features: {len(feats)} features but times of shape "
                f"{tuple(times.shape)}"
            )
        return ClipFeatures(feats, times.detach().float().cpu(), self.fps)


def _given_query(sample: HeadSample, dim: int | None) -> Tensor | None:
    if sample.query_features is None:
        return None
    return check_features(sample.query_features, "the given query_features", dim)


class NpzQueryFeatures:
    """Query features from `{folder}/qid{qid}.npz` (array `last_hidden_state` `[l, dim]`;
    `dim` None: any width), qid being `sample.qid`; `folder` None: only features given per
    question."""

    def __init__(self, folder: str | Path | None, dim: int | None = None) -> None:
        self.folder, self.dim = (None if folder is None else Path(folder)), dim

    def __call__(self, sample: HeadSample) -> Tensor:
        """The query features `[l, d]` of `sample` (its given features first)."""
        given = _given_query(sample, self.dim)
        if given is not None:
            return given
        if self.folder is None:
            raise ValueError(
                "no query features for this question: give query_features ([l, d] text "
                "features) or set heads.temporal.cgdetr.query_feature_dir"
            )
        if sample.qid is None:
            raise ValueError(
                "npz query features are keyed by the question id: this question has no qid "
                "(give query_features, or a qid in the ask options)"
            )
        path = self.folder / f"qid{sample.qid}.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"no query features for qid {sample.qid!r}: {path.name} not found in {self.folder}"
            )
        return load_npz_array(path, QUERY_KEY, self.dim)


def _device_of(embed: Callable) -> torch.device | None:
    """Device of the module `embed` is (or is a bound method of); None when neither."""
    owner = embed if isinstance(embed, nn.Module) else getattr(embed, "__self__", None)
    if isinstance(owner, nn.Module):
        param = next(owner.parameters(), None)
        return None if param is None else param.device
    return None


class LLMQueryFeatures:
    """Query features from the LLM's input embeddings: `embed(sample.query_ids [l]) -> [l, d]`,
    without gradient, float32 on the embedding's device."""

    def __init__(self, embed: Callable[[Tensor], Tensor]) -> None:
        self.embed = embed

    @torch.no_grad()
    def __call__(self, sample: HeadSample) -> Tensor:
        """The query features `[l, d]` of `sample` (its given features first)."""
        given = _given_query(sample, None)
        if given is not None:
            return given
        ids = sample.query_ids
        if ids is None or ids.numel() == 0:
            raise ValueError(
                "cgdetr.query_features 'llm': this question has no query token ids (query_ids)"
            )
        if ids.ndim != 1:
            raise ValueError(f"query_ids: expected token ids [l], got {tuple(ids.shape)}")
        device = _device_of(self.embed)
        ids = ids.long() if device is None else ids.long().to(device)
        return check_features(self.embed(ids), "the LLM's query embeddings")


def build_video_source(tcfg: TemporalHeadConfig) -> TemporalFeatureSource:
    """The video source `tcfg.cgdetr.video_features` names ("npz" or "vision")."""
    c = tcfg.cgdetr
    if c.video_features == "npz":
        if c.video_feature_dim is None:
            raise ValueError("cgdetr.video_features 'npz' needs video_feature_dim")
        return NpzVideoFeatures(c.video_feature_dir, c.video_feature_fps, c.video_feature_dim)
    if c.video_features == "vision":
        return VisionVideoFeatures(tcfg.feat_fps)
    raise ValueError(f"cgdetr.video_features must be 'vision' or 'npz', not {c.video_features!r}")


def build_query_source(
    ccfg: CGDETRConfig, embed: Callable[[Tensor], Tensor] | None
) -> QueryFeatureSource:
    """The query source `ccfg.query_features` names ("npz", or "llm" over `embed`)."""
    if ccfg.query_features == "npz":
        return NpzQueryFeatures(ccfg.query_feature_dir, ccfg.t_feat_dim)
    if ccfg.query_features == "llm":
        if embed is None:
            raise ValueError("cgdetr.query_features 'llm' needs the LLM's embedding (embed)")
        return LLMQueryFeatures(embed)
    raise ValueError(f"cgdetr.query_features must be 'llm' or 'npz', not {ccfg.query_features!r}")
