"""Question templates and fixed answers that turn task annotations into question/answer records.

A template is chosen deterministically from the record's qid (crc32, stable across runs and
processes, unlike `hash`). The answers are exactly the strings the toy world writes into its
conversation data, so stage-1 task assignment and stage-2/3 task data agree.
"""

from __future__ import annotations

import zlib

TEMPORAL_ANSWER = "It happens at <time_begin><temp>."
REGION_ANSWER = "It is here: <box_begin><boxes>."
MASK_ANSWER = "Tracking it: <track_begin><tracking>."

TEMPORAL_QUESTIONS = (
    "When does '{query}' happen in the video?",
    "Find the moment in the video where {query}.",
    "At what time in the video does this happen: {query}?",
    "Give the start and end time of: {query}.",
)
REGION_VIDEO_QUESTIONS = (
    "Where is {expression} at {time:.1f} seconds?",
    "Locate {expression} in the frame at {time:.1f}s.",
    "Give the bounding box of {expression} at {time:.1f} seconds.",
)
REGION_IMAGE_QUESTIONS = (
    "Where is {expression}?",
    "Locate {expression} in the image.",
    "Give the bounding box of {expression}.",
)
MASK_QUESTIONS = (
    "Track {expression} through the video.",
    "Segment {expression} in every frame.",
    "Follow {expression} and give its mask over time.",
)


def pick(templates: tuple[str, ...], qid: str) -> str:
    """The template for `qid` (the same on every run)."""
    return templates[zlib.crc32(str(qid).encode("utf-8")) % len(templates)]


def temporal_question(query: str, qid: str) -> str:
    """A moment-retrieval question about `query`."""
    return pick(TEMPORAL_QUESTIONS, qid).format(query=query.strip().rstrip("."))


def region_question(expression: str, qid: str, time: float | None) -> str:
    """A referring-box question; `time` None means a still image."""
    expression = expression.strip().rstrip(".")
    if time is None:
        return pick(REGION_IMAGE_QUESTIONS, qid).format(expression=expression)
    return pick(REGION_VIDEO_QUESTIONS, qid).format(expression=expression, time=time)


def mask_question(expression: str, qid: str) -> str:
    """A referring-segmentation (tracking) question."""
    return pick(MASK_QUESTIONS, qid).format(expression=expression.strip().rstrip("."))


def mc_prompt(question: str, options: list[str]) -> str:
    """A multiple-choice question with its lettered options (answers read "(B) option")."""
    letters = "ABCDEFGHIJ"
    lines = "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
    return f"Question: {question}\nOptions:\n{lines}\nAnswer with the option's letter."


def question_text(record) -> str:
    """The user turn of a record: multiple-choice questions list their lettered options."""
    if record.task == "mc" and record.options:
        return mc_prompt(record.question, record.options)
    return record.question
