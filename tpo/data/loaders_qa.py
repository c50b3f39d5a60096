"""Loaders of the question-answer formats: VideoChat2 conversations, MVBench, NExT-GQA."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tpo.data.loader_utils import (
    check_window,
    need,
    need_number,
    need_str,
    read_json,
    read_text,
    resolve,
)
from tpo.data.records import AnnotationError, LoadReport, Record

LETTERS = "ABCDEFGHIJ"


def _clip(obj: dict, where: str) -> tuple[float | None, float | None]:
    start = need_number(obj, "start", where, "clip start seconds") if "start" in obj else None
    end = need_number(obj, "end", where, "clip end seconds") if "end" in obj else None
    if start is not None and end is not None and end <= start:
        raise AnnotationError(f"{where}: clip [{start:g}, {end:g}] has end <= start", "bad_window")
    return start, end


def load_conversation(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """VideoChat2 json list of {video (or image), QA: [{i, q, a}], start?, end?}.

    Each QA turn is one record; its earlier turns are its `history`. qid = '{item}_{turn}'.
    """
    items = read_json(annotation)
    if not isinstance(items, list):
        raise AnnotationError(f"{annotation}: expected a JSON list of conversations", "malformed")
    records: list[Record] = []
    for i, obj in enumerate(items):
        where = f"{annotation}:[{i}]"
        with report.item(strict):
            key = (
                "image"
                if isinstance(obj, dict) and "image" in obj and "video" not in obj
                else "video"
            )
            video = need_str(obj, key, where, "the video file name")
            turns = need(obj, "QA", where, "a list of {i, q, a} turns")
            if not isinstance(turns, list) or not turns:
                raise AnnotationError(
                    f"{where}: 'QA' must be a non-empty list of turns", "malformed"
                )
            start, end = _clip(obj, where)
            history: list[tuple[str, str]] = []
            new: list[Record] = []
            for t, turn in enumerate(turns):
                at = f"{where}.QA[{t}]"
                # VideoChat2's caption data leave 'q' empty: the instruction 'i' asks
                question = need_str(turn, "q", at, "the question text", blank_ok=True)
                answer = need_str(turn, "a", at, "the answer text")
                new.append(
                    Record(
                        video=resolve(videos, video),
                        question=question,
                        answer=answer,
                        task="conversation",
                        qid=f"{i}_{t}",
                        source=at,
                        dataset=dataset,
                        instruction=turn.get("i") or None,
                        history=list(history),
                        start=start,
                        end=end,
                    )
                )
                history.append((question, answer))
            records.extend(new)
    return records


def _options(obj: dict, keys: list[str], where: str) -> list[str]:
    return [need_str(obj, k, where, "an answer option") for k in keys]


def load_mvbench(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """MVBench json list of {video, question, candidates, answer (text), start?, end?}."""
    items = read_json(annotation)
    if not isinstance(items, list):
        raise AnnotationError(f"{annotation}: expected a JSON list of questions", "malformed")
    records: list[Record] = []
    for i, obj in enumerate(items):
        where = f"{annotation}:[{i}]"
        with report.item(strict):
            video = need_str(obj, "video", where, "the video file name")
            question = need_str(obj, "question", where, "the question text")
            candidates = need(obj, "candidates", where, "a list of answer options")
            answer = need_str(obj, "answer", where, "the right option's text")
            if not isinstance(candidates, list) or not 2 <= len(candidates) <= len(LETTERS):
                raise AnnotationError(
                    f"{where}: candidates {candidates!r}, expected 2-{len(LETTERS)} options",
                    "bad_value",
                )
            if not all(
                isinstance(c, str | int | float) and not isinstance(c, bool) for c in candidates
            ):
                raise AnnotationError(
                    f"{where}: candidates {candidates!r}, expected option texts", "bad_value"
                )
            options = [str(c) for c in candidates]
            if answer not in options:
                raise AnnotationError(
                    f"{where}: answer {answer!r} is not one of the candidates {options}",
                    "bad_value",
                )
            k = max(j for j, c in enumerate(options) if c == answer)  # as the MVBench notebook
            start, end = _clip(obj, where)
            records.append(
                Record(
                    video=resolve(videos, video),
                    question=question,
                    answer=f"({LETTERS[k]}) {answer}",
                    task="mc",
                    qid=str(i),
                    source=where,
                    dataset=dataset,
                    start=start,
                    end=end,
                    options=options,
                    answer_index=k,
                )
            )
    return records


NEXTGQA_COLUMNS = ("video_id", "question", "answer", "qid", "a0", "a1", "a2", "a3", "a4")


def load_nextgqa(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """NExT-GQA folder: `gsub_{split}.json` ({vid: {duration, fps, location: {qid: [[s, e]]}}})
    + `{split}.csv` (video_id, question, answer = option index, qid, a0..a4).

    Record qid = '{video_id}_{qid}' (the key of NExT-GQA prediction files).
    """
    gsub_path, csv_path = annotation / f"gsub_{split}.json", annotation / f"{split}.csv"
    gsub = read_json(gsub_path)
    if not isinstance(gsub, dict):
        raise AnnotationError(f"{gsub_path}: expected an object keyed by video id", "malformed")
    reader = csv.DictReader(io.StringIO(read_text(csv_path)))
    missing = [c for c in NEXTGQA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise AnnotationError(
            f"{csv_path}:1: header lacks column(s) {missing}, expected {list(NEXTGQA_COLUMNS)}",
            "missing_key",
        )
    option_keys = ["a0", "a1", "a2", "a3", "a4"]
    records: list[Record] = []
    for row in reader:
        where = f"{csv_path}:{reader.line_num}"
        with report.item(strict):
            vid, qid = row["video_id"], row["qid"]
            options = _options(row, option_keys, where)
            try:
                k = int(row["answer"])
            except (TypeError, ValueError) as err:
                raise AnnotationError(
                    f"{where}: answer {row['answer']!r}, expected an option index 0-4", "bad_value"
                ) from err
            if not 0 <= k < len(options):
                raise AnnotationError(
                    f"{where}: answer {k}, expected an option index 0-4", "bad_value"
                )
            at = f"{gsub_path}:{vid}"
            entry = need(gsub, vid, str(gsub_path), "{duration, fps, location} of the video")
            duration = need_number(entry, "duration", at, "the video duration in seconds")
            location = need(entry, "location", at, "{qid: [[start, end], ...]}")
            spans = need(location, qid, f"{at}.location", "the [[start, end]] of the question")
            if not isinstance(spans, list) or not spans:
                raise AnnotationError(
                    f"{at}.location.{qid}: expected a non-empty list of [start, end]", "bad_window"
                )
            key = f"{vid}_{qid}"
            records.append(
                Record(
                    video=resolve(videos, f"{vid}.mp4"),
                    question=need_str(row, "question", where, "the question text"),
                    answer=f"({LETTERS[k]}) {options[k]}",
                    task="gqa",
                    qid=key,
                    source=where,
                    dataset=dataset,
                    duration=duration,
                    windows=[check_window(s, duration, f"{at}.location.{qid}", key) for s in spans],
                    options=options,
                    answer_index=k,
                )
            )
    return records
