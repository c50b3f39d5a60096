"""Shared checks for the annotation loaders: reading files and fields with errors that say where."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tpo.data.records import AnnotationError

WINDOW_TOL_S = 0.5  # a window may end this far past the annotated duration (rounding in the data)
BOX_TOL_PX = 1.0  # a box may stick out of the frame by this much (rounding in the data)


def read_text(path: Path) -> str:
    """The file's text; a missing file is an AnnotationError naming it."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found", "missing_file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise AnnotationError(
            f"{path}:{line}: byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8 "
            "(expected a UTF-8 text file)",
            "malformed",
        ) from err


def numbered_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, `file:line`, text) of every non-blank line, for line-based formats.

    Lines end at \\n, \\r\\n or \\r only, as when a text file is iterated (`str.splitlines`
    would also split at U+2028 and friends, which JSON writes raw inside strings).
    """
    for lineno, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        if line.strip():
            yield lineno, f"{path}:{lineno}", line.rstrip("\n")


def read_json(path: Path) -> Any:
    """A whole JSON file; invalid JSON names the file, line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{path}:{err.lineno}: not valid JSON at column {err.colno} ({err.msg})", "malformed"
        ) from err


def parse_json_line(line: str, where: str, expected: str) -> dict:
    """One JSON-lines object; `where` is 'file:line', `expected` describes the object."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{where}: not valid JSON ({err.msg} at column {err.colno}); expected {expected}",
            "malformed",
        ) from err
    if not isinstance(obj, dict):
        raise AnnotationError(
            f"{where}: expected {expected}, got {type(obj).__name__}", "malformed"
        )
    return obj


def need(obj: Any, key: str, where: str, what: str) -> Any:
    """`obj[key]`; a missing key (or `obj` not an object) names `where`, the key and `what`."""
    if not isinstance(obj, dict):
        raise AnnotationError(f"{where}: expected an object with key '{key}' ({what})", "malformed")
    if key not in obj:
        raise AnnotationError(f"{where}: missing key '{key}' (expected {what})", "missing_key")
    return obj[key]


def need_str(obj: Any, key: str, where: str, what: str, *, blank_ok: bool = False) -> str:
    """`obj[key]` checked to be a string, non-blank unless `blank_ok` (ints are accepted for ids
    and turned into strings)."""
    value = need(obj, key, where, what)
    blank = isinstance(value, str) and not value.strip() and not blank_ok
    if blank or isinstance(value, bool) or not isinstance(value, str | int):
        raise AnnotationError(f"{where}: key '{key}' is {value!r}, expected {what}", "bad_value")
    return str(value)


def need_number(obj: Any, key: str, where: str, what: str) -> float:
    """`obj[key]` checked to be a number."""
    return number(need(obj, key, where, what), f"{where}: key '{key}'", what)


def number(value: Any, where: str, what: str) -> float:
    """`value` as a float; anything else names `where` and what was expected."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        # json reads NaN and Infinity as floats
        raise AnnotationError(
            f"{where}: {value!r} is not a finite number, expected {what}", "bad_value"
        )
    return float(value)


def check_window(window: Any, duration: float | None, where: str, qid: Any) -> tuple[float, float]:
    """A [start, end] seconds window, checked against the duration and clamped into it."""
    if not isinstance(window, list | tuple) or len(window) != 2:
        raise AnnotationError(
            f"{where}: qid {qid}: window {window!r} is not [start, end] seconds", "bad_window"
        )
    s = number(window[0], where, "a window start in seconds")
    e = number(window[1], where, "a window end in seconds")
    limit = float("inf") if duration is None else duration + WINDOW_TOL_S
    if s < -WINDOW_TOL_S or e < s or e > limit:
        bound = "" if duration is None else f" <= duration {duration:g} (+{WINDOW_TOL_S}s)"
        raise AnnotationError(
            f"{where}: qid {qid}: window [{s:g}, {e:g}] is outside the video "
            f"(expected 0 <= start <= end{bound})",
            "bad_window",
        )
    hi = e if duration is None else min(e, duration)
    return max(0.0, s), max(max(0.0, s), hi)


def check_box_xywh(
    bbox: Any, width: float, height: float, where: str
) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] pixel box checked to lie in the frame; returned as clamped xyxy."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise AnnotationError(f"{where}: bbox {bbox!r} is not [x, y, w, h]", "bad_box")
    x, y, w, h = (number(v, where, "bbox [x, y, w, h] pixels") for v in bbox)
    x2, y2 = x + w, y + h
    tol = BOX_TOL_PX
    if w <= 0 or h <= 0 or x < -tol or y < -tol or x2 > width + tol or y2 > height + tol:
        raise AnnotationError(
            f"{where}: box xyxy [{x:g}, {y:g}, {x2:g}, {y2:g}] is outside the "
            f"{width:g}x{height:g} frame or empty (expected 0 <= x1 < x2 <= width, "
            f"0 <= y1 < y2 <= height)",
            "bad_box",
        )
    return max(0.0, x), max(0.0, y), min(width, x2), min(height, y2)


def resolve(root: Path, name: str) -> str:
    """`name` under `root` unless absolute."""
    path = Path(name)
    return str(path if path.is_absolute() else root / path)
