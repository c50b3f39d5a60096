"""What the inference API returns: a grounded answer with time windows, boxes and mask tracks.

Every type converts to and from plain JSON (`json.dumps` works on `GroundedAnswer.to_json()`);
masks travel as COCO RLE (pycocotools) with the counts as ASCII strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

HEAD_NAMES = ("temporal", "region", "mask")


@dataclass
class TimeWindow:
    """A predicted moment: `start`..`end` in seconds and its confidence `score`."""

    start: float
    end: float
    score: float

    def __post_init__(self) -> None:
        if not self.end >= self.start:
            raise ValueError(f"TimeWindow: expected end >= start, got [{self.start}, {self.end}]")

    def to_json(self) -> dict[str, float]:
        """{'start', 'end', 'score'} as floats."""
        return {"start": float(self.start), "end": float(self.end), "score": float(self.score)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TimeWindow:
        """Inverse of `to_json`."""
        return cls(float(data["start"]), float(data["end"]), float(data["score"]))


@dataclass
class BoxPrediction:
    """A box `(x1, y1, x2, y2)` in pixels on frame `frame_index`, shown at `time` seconds."""

    box: tuple[float, float, float, float]
    frame_index: int
    time: float

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"BoxPrediction.box: expected 4 numbers xyxy, got {self.box!r}")
        x1, y1, x2, y2 = (float(v) for v in self.box)
        self.box = (x1, y1, x2, y2)

    def to_json(self) -> dict[str, Any]:
        """{'box': [x1, y1, x2, y2], 'frame_index', 'time'}."""
        return {
            "box": list(self.box),
            "frame_index": int(self.frame_index),
            "time": float(self.time),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoxPrediction:
        """Inverse of `to_json`."""
        return cls(tuple(data["box"]), int(data["frame_index"]), float(data["time"]))


@dataclass
class MaskTrack:
    """Masks of one object over frames: `masks` `[f, H, W]` bool at the video's resolution on
    the video frames `frame_indices` `[f]` of a video at `fps`."""

    masks: np.ndarray
    frame_indices: np.ndarray
    fps: float

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks).astype(bool, copy=False)
        self.frame_indices = np.asarray(self.frame_indices, dtype=np.int64).reshape(-1)
        if self.masks.ndim != 3:
            raise ValueError(f"MaskTrack.masks: expected [f, H, W], got shape {self.masks.shape}")
        if len(self.frame_indices) != len(self.masks):
            raise ValueError(
                f"MaskTrack: expected one frame index per mask ({len(self.masks)}), "
                f"got {len(self.frame_indices)}"
            )

    @property
    def times(self) -> np.ndarray:
        """`[f]` seconds of each mask's frame."""
        return self.frame_indices / float(self.fps)

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO RLE per frame: [{'size': [H, W], 'counts': str}]."""
        if len(self.masks) == 0:
            return []
        stacked = np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8))
        rles = mask_utils.encode(stacked)
        return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]

    @classmethod
    def from_rle(
        cls,
        rles: list[dict[str, Any]],
        frame_indices: np.ndarray | list[int],
        fps: float,
        *,
        size: tuple[int, int] | None = None,
    ) -> MaskTrack:
        """Decode per-frame COCO RLE (counts as str or bytes); `size` (H, W) shapes an empty track."""
        if not rles:
            h, w = size if size is not None else (0, 0)
            return cls(np.zeros((0, h, w), bool), np.asarray(frame_indices), fps)
        coded = []
        for i, r in enumerate(rles):
            if "size" not in r or "counts" not in r:
                raise ValueError(f"MaskTrack.from_rle: rle {i} needs keys 'size' and 'counts'")
            counts = r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]
            coded.append({"size": list(r["size"]), "counts": counts})
        masks = mask_utils.decode(coded).transpose(2, 0, 1).astype(bool)
        return cls(masks, np.asarray(frame_indices), fps)

    def to_json(self) -> dict[str, Any]:
        """{'rle', 'frame_indices', 'fps', 'size'}."""
        return {
            "rle": self.to_rle(),
            "frame_indices": [int(i) for i in self.frame_indices],
            "fps": float(self.fps),
            "size": [int(self.masks.shape[1]), int(self.masks.shape[2])],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MaskTrack:
        """Inverse of `to_json`."""
        size = tuple(data["size"]) if data.get("size") else None
        return cls.from_rle(data["rle"], data["frame_indices"], data["fps"], size=size)


@dataclass
class EnsembleRecord:
    """How a preference-ensemble answer was made (tpo.popen.ensemble_infer).

    k: responses sampled at `temperature` (`seed`); texts: their answers; scores: their
    preference scores (log gamma; `score` names the kind: "logp" or "dpo"); best: the
    best-scored response, whose text and non-mask heads make the answer; used: which responses
    carried a `<tracking>` query (those are combined for the mask head); weights: each one's
    attention weight in that combination (0 where not used).
    """

    k: int
    score: str
    scores: list[float]
    texts: list[str]
    best: int
    used: list[bool]
    weights: list[float]
    temperature: float
    seed: int | None = None

    def __post_init__(self) -> None:
        sizes = [len(self.scores), len(self.texts), len(self.used), len(self.weights)]
        if sizes != [self.k] * 4:
            raise ValueError(
                f"EnsembleRecord: expected k={self.k} scores, texts, used flags and weights, "
                f"got {sizes}"
            )
        if not 0 <= self.best < self.k:
            raise ValueError(f"EnsembleRecord.best: expected an index in [0, {self.k})")

    def to_json(self) -> dict[str, Any]:
        """All fields as JSON values."""
        return {
            "k": int(self.k),
            "score": self.score,
            "scores": [float(v) for v in self.scores],
            "texts": list(self.texts),
            "best": int(self.best),
            "used": [bool(v) for v in self.used],
            "weights": [float(v) for v in self.weights],
            "temperature": float(self.temperature),
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnsembleRecord:
        """Inverse of `to_json`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in np.asarray(values).reshape(-1)]


def _array(values: list[float] | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


@dataclass
class GroundedAnswer:
    """An answer to one question about one video.

    text: the reply; heads: heads that fired, in order (of HEAD_NAMES); windows: time spans;
    saliency: `[k]` per-frame score at `saliency_times` `[k]` seconds; boxes: per asked frame;
    masks: the tracked object's masks; video/duration/fps: the source (path, seconds, rate);
    ensemble: how a preference-ensemble answer was made (None: one greedy response).
    """

    text: str
    heads: list[str] = field(default_factory=list)
    windows: list[TimeWindow] = field(default_factory=list)
    saliency: np.ndarray | None = None
    saliency_times: np.ndarray | None = None
    boxes: list[BoxPrediction] = field(default_factory=list)
    masks: MaskTrack | None = None
    video: str | None = None
    duration: float | None = None
    fps: float | None = None
    ensemble: EnsembleRecord | None = None

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in HEAD_NAMES]
        if unknown:
            raise ValueError(f"GroundedAnswer.heads: expected names in {HEAD_NAMES}, got {unknown}")
        if (self.saliency is None) != (self.saliency_times is None):
            raise ValueError("GroundedAnswer: saliency and saliency_times go together")
        if self.saliency is not None:
            self.saliency = np.asarray(self.saliency, dtype=np.float64).reshape(-1)
            self.saliency_times = np.asarray(self.saliency_times, dtype=np.float64).reshape(-1)
            if len(self.saliency) != len(self.saliency_times):
                raise ValueError(
                    f"GroundedAnswer: expected one time per saliency score ({len(self.saliency)}),"
                    f" got {len(self.saliency_times)}"
                )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (numbers as floats/ints, masks as RLE)."""
        return {
            "text": self.text,
            "heads": list(self.heads),
            "windows": [w.to_json() for w in self.windows],
            "saliency": _floats(self.saliency),
            "saliency_times": _floats(self.saliency_times),
            "boxes": [b.to_json() for b in self.boxes],
            "masks": None if self.masks is None else self.masks.to_json(),
            "video": self.video,
            "duration": None if self.duration is None else float(self.duration),
            "fps": None if self.fps is None else float(self.fps),
            "ensemble": None if self.ensemble is None else self.ensemble.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroundedAnswer:
        """Inverse of `to_json`."""
        if "text" not in data:
            raise ValueError("GroundedAnswer.from_json: missing key 'text'")
        masks, ens = data.get("masks"), data.get("ensemble")
        return cls(
            text=data["text"],
            heads=list(data.get("heads", [])),
            windows=[TimeWindow.from_json(w) for w in data.get("windows", [])],
            saliency=_array(data.get("saliency")),
            saliency_times=_array(data.get("saliency_times")),
            boxes=[BoxPrediction.from_json(b) for b in data.get("boxes", [])],
            masks=None if masks is None else MaskTrack.from_json(masks),
            video=data.get("video"),
            duration=data.get("duration"),
            fps=data.get("fps"),
            ensemble=None if ens is None else EnsembleRecord.from_json(ens),
        )
