"""The answer parts of the built-in heads: time windows, pixel boxes, mask tracks.

Each converts to and from plain JSON; masks travel as COCO RLE (pycocotools) with the counts as
ASCII strings. `tpo.infer.answer.GroundedAnswer` holds them in its typed fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


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
        self.box = tuple(float(v) for v in self.box)

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

    def normalised(self, width: float, height: float) -> list[float]:
        """The box as xyxy fractions of a `width` x `height` frame (the one conversion between
        pixel boxes and normalised ones)."""
        x1, y1, x2, y2 = self.box
        return [x1 / width, y1 / height, x2 / width, y2 / height]


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
