"""Files of the benchmark runners: an append-only jsonl log of finished items, atomic
whole-file writes (temp file + os.replace), the scorer's inputs (GT path + options, a GT subset
for partial runs) and the metrics tables.

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

from tpo.eval.io import read_json


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
                raise ValueError(
                    f"{where}: not a JSON line ({err}); expected a prediction"
                ) from err
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


def scorer_inputs(
    name: str, annotations: Path, split: str, out: Path, done: dict, partial: bool
) -> tuple[Path, dict]:
    """The GT path the scorer reads and its options (partial: score the predicted items)."""

    if name == "qvhighlights":
        return annotations, {"match_number": False} if partial else {}
    if name == "charades_sta":
        return annotations, {"allow_missing": True} if partial else {}
    if name == "mvbench":  # our answers read "(B) text": already the notebook's "(" + line
        opts = {"raw_generation": False}
        return annotations, dict(opts, missing="skip") if partial else opts
    if name == "nextgqa":
        opts = {"qa_gt": str(annotations / f"{split}.csv")}
        return annotations / f"gsub_{split}.json", dict(
            opts, skip_missing=True
        ) if partial else opts
    if not partial:
        return annotations, {}
    subset = out / "gt_subset"
    if name == "refcoco":
        items = [o for o in read_json(annotations) if str(o.get("id")) in done]
        return write_json_atomic(subset / annotations.name, items), {}
    meta = read_json(annotations / "meta_expressions.json")  # mevis: only the done expressions
    videos, keep = {}, set()
    for line in done.values():
        entry = meta["videos"][line["vid"]]
        video = videos.setdefault(line["vid"], dict(entry, expressions={}))
        video["expressions"][line["eid"]] = entry["expressions"][line["eid"]]
        keep.update(str(a) for a in np.atleast_1d(entry["expressions"][line["eid"]]["anno_id"]))
    masks = {k: v for k, v in read_json(annotations / "mask_dict.json").items() if k in keep}
    write_json_atomic(subset / "meta_expressions.json", dict(meta, videos=videos))
    write_json_atomic(subset / "mask_dict.json", masks)
    return subset, {"allow_extra": True}  # folders of expressions begun but not finished


def metrics_markdown(name: str, metrics: dict[str, float]) -> str:
    """A two-column markdown table of one benchmark's metrics (the scorer's scale)."""
    rows = "".join(f"| {k} | {v:.2f} |\n" for k, v in metrics.items())
    return f"## {name}\n\n| metric | value |\n|---|---|\n{rows}"
