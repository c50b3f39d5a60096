"""What the inference API returns: a grounded answer with time windows, boxes and mask tracks,
and the outputs of any other head.

Every type converts to and from plain JSON (`json.dumps` works on `GroundedAnswer.to_json()`);
masks travel as COCO RLE (pycocotools) with the counts as ASCII strings. The part types live
beside the heads (`tpo.heads.parts`) and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tpo.heads import registry
from tpo.heads.parts import BoxPrediction, MaskTrack, TimeWindow

__all__ = ["BoxPrediction", "EnsembleRecord", "GroundedAnswer", "MaskTrack", "TimeWindow"]


@dataclass
class EnsembleRecord:
    """How a preference-ensemble answer was made (tpo.infer.decoding.PreferenceEnsemble).

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

    text: the reply; heads: heads that fired (registered names), in order of first firing; windows: time spans;
    saliency: `[k]` per-frame score at `saliency_times` `[k]` seconds; boxes: per asked frame;
    masks: the tracked object's masks; outputs: other heads' parts, `{head: {field: JSON value}}`;
    video/duration/fps: the source (path, seconds, rate); ensemble: how a preference-ensemble
    answer was made (None: one response); token_ids: the generated ids (prompt excluded, up to
    and not including eos).
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
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids = [int(i) for i in self.token_ids]
        known = registry.names()
        bad = [h for h in self.heads if h not in known]
        if bad:
            raise ValueError(f"GroundedAnswer.heads: expected registered heads {known}, got {bad}")
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

    def add(self, head: str, part: dict[str, Any]) -> None:
        """Merge one head's answer part: typed fields are extended (lists) or set (the rest);
        any other key goes to `outputs[head]`."""
        typed = {"windows", "saliency", "saliency_times", "boxes", "masks"}
        for key, value in part.items():
            if key not in typed:
                self.outputs.setdefault(head, {})[key] = value
            elif isinstance(getattr(self, key), list):
                getattr(self, key).extend(value)
            else:
                setattr(self, key, value)
        self.__post_init__()

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
            "outputs": {h: dict(v) for h, v in self.outputs.items()},
            "token_ids": [int(i) for i in self.token_ids],
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
            outputs={h: dict(v) for h, v in (data.get("outputs") or {}).items()},
            token_ids=list(data.get("token_ids") or []),
        )
