"""The format-independent annotation record, the annotation error, and the load report."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

TASKS = ("conversation", "temporal", "region", "mask", "mc", "gqa")
# annotation format (one loader each, tpo.data.loaders.FORMATS) -> the task its records carry
FORMAT_TASKS = {
    "qvh": "temporal",
    "charades": "temporal",
    "refcoco": "region",
    "mevis": "mask",
    "conversation": "conversation",
    "mvbench": "mc",
    "nextgqa": "gqa",
}

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One annotated question about one video (or image), whatever the file format it came from.

    Fields:
        video: path of the video file, frame folder or image.
        question: the user's question (task questions come from `tpo.data.templates`).
        answer: the answer text; task answers hold the task pair, e.g. '<time_begin><temp>'.
        task: one of TASKS; says which head targets the record carries.
        qid: identifier unique within its dataset (the annotation's own id where it has one).
        source: where it came from, 'file:line' or 'file:key', for error messages.
        dataset: the manifest dataset name (set by `tpo.data.manifest.load_records`).
        instruction: optional system-style instruction (VideoChat2 'i').
        history: earlier (question, answer) turns of the same conversation.
        duration: video length in seconds as annotated (None when the format lacks it).
        start, end: clip of the video the question is about, seconds (None: whole video).
        windows: ground-truth moments [(start, end)] in seconds (temporal, gqa).
        clip_ids, saliency: relevant 2-s clip ids and their scores [n_rel, n_annotators] (QVH).
        box: xyxy pixel box on frame `frame_index` (time `frame_time` s) of a width x height frame.
        masks: video frame index -> COCO RLE of the target (union of its objects); frames absent
            from the dict are annotated empty; `mask_frames` lists every annotated frame index.
        options, answer_index: multiple-choice candidates and the index of the right one.
    """

    video: str
    question: str
    answer: str
    task: str
    qid: str
    source: str
    dataset: str = ""
    instruction: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    duration: float | None = None
    start: float | None = None
    end: float | None = None
    windows: list[tuple[float, float]] = field(default_factory=list)
    clip_ids: list[int] = field(default_factory=list)
    saliency: list[list[float]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    frame_index: int | None = None
    frame_time: float | None = None
    width: int | None = None
    height: int | None = None
    masks: dict[int, dict] | None = None
    mask_frames: list[int] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    answer_index: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.source}: task must be one of {TASKS}, got {self.task!r}")


class AnnotationError(ValueError):
    """An annotation that does not fit its format. `reason` names the kind, for skip counts."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class LoadReport:
    """What non-strict loading skipped: counts per reason and the first few messages of each."""

    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    loaded: Counter = field(default_factory=Counter)  # records kept per dataset
    max_examples: int = 3

    def add(self, err: AnnotationError) -> None:
        """Count one skipped item."""
        self.skipped[err.reason] += 1
        kept = self.examples.setdefault(err.reason, [])
        if len(kept) < self.max_examples:
            kept.append(str(err))

    def item(self, strict: bool) -> _ItemGuard:
        """Context manager around parsing one item: strict re-raises, else counts and skips.

        >>> for line in lines:
        ...     with report.item(strict):
        ...         records.append(parse(line))
        """
        return _ItemGuard(self, strict)

    def summary(self) -> str:
        """One line: total skipped and the count per reason."""
        total = sum(self.skipped.values())
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return f"skipped {total} bad annotation(s) ({parts})" if total else "skipped 0"

    def log(self) -> None:
        """Log one warning line when anything was skipped (with the first example)."""
        if self.skipped:
            first = next(iter(self.examples.values()))[0]
            log.warning("%s; e.g. %s", self.summary(), first)


class _ItemGuard:
    def __init__(self, report: LoadReport, strict: bool) -> None:
        self.report, self.strict = report, strict

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, etype: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if isinstance(err, AnnotationError) and not self.strict:
            self.report.add(err)
            return True  # swallow: the item is skipped and counted
        return False
