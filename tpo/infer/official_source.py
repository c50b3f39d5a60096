"""The tensors of an official VideoChat-TPO folder (single file or sharded), read lazily."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from tpo.heads.official_layout import INDEX_FILE
from tpo.model.folder import MODEL_FILE

_CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

Spec = tuple[torch.dtype, tuple[int, ...]]


class OfficialSource:
    """The tensors of an official folder: names -> (dtype, shape) and shard file, read from the
    safetensors headers; `tensors()` yields them one at a time, shard by shard."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' mapping inside it")
            self.shard = {name: str(file) for name, file in weight_map.items()}
        elif (self.folder / MODEL_FILE).is_file():
            self.shard = {}
        else:
            raise FileNotFoundError(
                f"{self.folder}: no {MODEL_FILE} or {INDEX_FILE}: not an official release folder"
            )
        files = sorted(set(self.shard.values())) or [MODEL_FILE]
        self.specs: dict[str, Spec] = {}
        self.metadata: dict[str, dict[str, str] | None] = {}  # per shard file
        for file in files:
            path = self.folder / file
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a shard the index names is missing")
            with safe_open(str(path), "pt") as f:
                self.metadata[file] = f.metadata()
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    s = f.get_slice(name)
                    self.specs[name] = (_CODES[s.get_dtype()], tuple(s.get_shape()))
                    self.shard.setdefault(name, file)
        listed = [n for n, f in self.shard.items() if n not in self.specs]
        if listed:
            raise ValueError(f"{index}: lists {listed[:3]}, which no shard holds")

    def tensors(self, only: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in `specs` order (those in `only` when given), one shard open at a
        time."""
        by_file: dict[str, list[str]] = {}
        for name in self.specs:
            if only is not None and name not in only:
                continue
            by_file.setdefault(self.shard[name], []).append(name)
        for file, names in by_file.items():
            with safe_open(str(self.folder / file), "pt") as f:
                for name in names:
                    yield name, f.get_tensor(name)
