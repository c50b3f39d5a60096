"""Reading prediction and ground-truth files for the scorers, with errors that say where.

Every problem raises `ScoreError` naming the file, the line (or list index) or id, what was
found and what was expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MAX_IDS_SHOWN = 5


class ScoreError(ValueError):
    """Predictions or ground truth that cannot be scored; the message says where and why."""


def read_text(path: Path) -> str:
    """The file's text; a missing file names itself."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: file not found")
    return path.read_text(encoding="utf-8")


def read_json(path: Path) -> Any:
    """A whole JSON file; invalid JSON names the file, line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ScoreError(
            f"{path}:{err.lineno}: not valid JSON at column {err.colno} ({err.msg})"
        ) from err


def read_records(path: Path, expected: str) -> list[tuple[str, dict]]:
    """The objects of a JSON-lines file (or of a .json file holding a list), each with 'file:line'.

    Blank lines are skipped; `expected` describes one object for the error messages.
    """
    path = Path(path)
    if path.suffix == ".json":
        items = read_json(path)
        if not isinstance(items, list):
            raise ScoreError(f"{path}: expected a JSON list of {expected}")
        pairs = [(f"{path}:[{i}]", obj) for i, obj in enumerate(items)]
    else:
        pairs = []
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                pairs.append((where, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ScoreError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                    f"expected {expected}"
                ) from err
    for where, obj in pairs:
        if not isinstance(obj, dict):
            raise ScoreError(f"{where}: expected {expected}, got {type(obj).__name__}")
    return pairs


def need(obj: dict, key: str, where: str, what: str) -> Any:
    """`obj[key]`; a missing key names `where`, the key and `what` was expected."""
    if not isinstance(obj, dict):
        raise ScoreError(f"{where}: expected an object with key '{key}' ({what})")
    if key not in obj:
        raise ScoreError(f"{where}: missing key '{key}' (expected {what})")
    return obj[key]


def ident(value: Any, where: str, what: str = "an id (int or string)") -> str:
    """An id (int or string) as a string."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ScoreError(f"{where}: id {value!r} is not {what}")
    return str(value)


def finite(value: Any, where: str, what: str) -> float:
    """`value` as a finite float; booleans, strings, NaN and infinities name `where`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScoreError(f"{where}: {value!r} is not a number, expected {what}")
    if not math.isfinite(value):
        raise ScoreError(f"{where}: {value!r} is not finite, expected {what}")
    return float(value)


def numbers(value: Any, where: str, what: str, length: int | None = None) -> list[float]:
    """A list of finite numbers (of `length` items when given)."""
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise ScoreError(f"{where}: {value!r} is not a list of {size}numbers, expected {what}")
    return [finite(v, where, what) for v in value]


def window(value: Any, where: str, what: str, length: int = 2) -> list[float]:
    """`[start, end, ...]` seconds (`length` numbers) with end >= start."""
    w = numbers(value, where, what, length)
    if w[1] < w[0]:
        raise ScoreError(f"{where}: window {value!r} has end < start, expected {what}")
    return w


def text(value: Any, where: str, what: str) -> str:
    """A string field."""
    if not isinstance(value, str):
        raise ScoreError(f"{where}: {value!r} is not a string, expected {what}")
    return value


def flag(value: Any, name: str) -> bool:
    """A boolean option (also 'true'/'false'/'1'/'0' strings from the command line)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ScoreError(f"option {name}={value!r}: expected true or false")


def _shown(ids: list[str]) -> str:
    more = f" and {len(ids) - MAX_IDS_SHOWN} more" if len(ids) > MAX_IDS_SHOWN else ""
    return ", ".join(ids[:MAX_IDS_SHOWN]) + more


def check_ids(
    gt_ids: Iterable[str],
    pred_ids: Iterable[str],
    pred_path: Path,
    *,
    allow_missing: bool = False,
    allow_extra: bool = False,
    hint: str = "",
) -> None:
    """Raise when the prediction ids miss ground-truth ids or add unknown ones (unless allowed)."""
    gt, pred = list(dict.fromkeys(gt_ids)), set(pred_ids)
    gt_set = set(gt)
    missing = [i for i in gt if i not in pred]
    extra = sorted(pred - gt_set)
    problems = []
    if missing and not allow_missing:
        problems.append(f"no prediction for id(s) {_shown(missing)}")
    if extra and not allow_extra:
        problems.append(f"id(s) {_shown(extra)} are not in the ground truth")
    if problems:
        raise ScoreError(f"{pred_path}: {'; '.join(problems)}{hint}")


def unique(pairs: Iterable[tuple[str, str]], path: Path) -> None:
    """Raise on a repeated id; `pairs` are (id, where)."""
    seen: dict[str, str] = {}
    for key, where in pairs:
        if key in seen:
            raise ScoreError(f"{where}: id {key} repeats (first at {seen[key]}) in {path}")
        seen[key] = where
