"""Crash-safe files of the benchmark runners: an append-only jsonl log of finished items and
atomic whole-file writes (temp file + os.replace).

A run appends each batch's lines with one write, then flush + fsync, so after a crash the file
holds complete lines plus at most one truncated last line; `JsonlLog.recover` drops that line
and returns the finished items, keyed by their id, so a restart skips them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _tmp_near(path: Path, suffix: str) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    fd, tmp = _tmp_near(path, ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Save a bool mask `[H, W]` as a grey PNG (255 = foreground), atomically."""
    path = Path(path)
    fd, tmp = _tmp_near(path, ".png")
    os.close(fd)
    try:
        Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(tmp, "PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class JsonlLog:
    """Append-only jsonl of finished items, each a JSON object carrying its id under `id_key`."""

    def __init__(self, path: str | Path, id_key: str) -> None:
        self.path, self.id_key = Path(path), id_key

    def recover(self) -> dict[str, dict]:
        """Finished items (id -> object) in file order; drops a truncated last line.

        A complete line (ending in a newline) that is not a JSON object with the id key, or an
        id seen twice, raises ValueError naming the line: that is not what a crash leaves.
        """
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a write cut short by a crash: keep the complete lines only
            write_text_atomic(self.path, data[:cut].decode("utf-8"))
        done: dict[str, dict] = {}
        for lineno, line in enumerate(data[:cut].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not a JSON line ({err}); expected a prediction") from err
            if not isinstance(obj, dict) or self.id_key not in obj:
                raise ValueError(f"{where}: expected a JSON object with key {self.id_key!r}")
            key = str(obj[self.id_key])
            if key in done:
                raise ValueError(f"{where}: {self.id_key} {key} repeats")
            done[key] = obj
        return done

    def append(self, items: Iterable[dict]) -> None:
        """Append complete lines with one write, then flush and fsync."""
        text = "".join(json.dumps(obj) + "\n" for obj in items)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
