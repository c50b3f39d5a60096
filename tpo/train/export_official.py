"""`tpo export SRC --format videochat-tpo --out X`: a model in the official VideoChat-TPO
layout again (the release's names, shapes, dtypes and shards, its `config.json` and tokenizer).

SRC is a folder written by `tpo convert videochat-tpo` (its `official.json` and
`unmapped.safetensors` give the layout and the tensors tpo has no home for), or a training
checkpoint fine-tuned from one (`--layout` names the converted folder). Tensors are written one
at a time (`tpo.model.folder.StreamedSafetensors`); a tpo tensor the official layout has no
place for is an error naming it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from tpo.heads import cgdetr_layout
from tpo.heads import official_layout as layout
from tpo.model.folder import (
    MODEL_FILE,
    StreamedSafetensors,
    commit_folder,
    inference_state,
    replace_folder,
)
from tpo.train.export import load_checkpoint_model

Getter = Callable[[str], torch.Tensor]


def read_layout(folder: str | Path) -> dict:
    """The `official.json` of a converted folder (a clear error when there is none)."""
    path = Path(folder) / layout.OFFICIAL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {layout.OFFICIAL_FILE}: not a folder written by "
            "`tpo convert videochat-tpo` (give the converted folder with --layout)"
        )
    record = json.loads(path.read_text())
    if record.get("format") != "videochat-tpo":
        raise ValueError(f"{path}: format {record.get('format')!r}, expected 'videochat-tpo'")
    has_cgdetr = any(
        n.startswith(cgdetr_layout.OFFICIAL_PREFIX) for n, *_ in record.get("tensors", [])
    )
    if has_cgdetr and "criterion_weight" not in record:
        raise ValueError(
            f"{path}: converted by a tpo that kept CG-DETR unmapped; convert the release again "
            "(`tpo convert videochat-tpo`) to export it"
        )
    return record


def official_tensors(record: dict, get: Getter, kept: Getter) -> Iterator[tuple[str, torch.Tensor]]:
    """The official tensors in the recorded order, each in its recorded dtype: from tpo
    tensors (`get` by tpo name) and the kept ones (`kept` by official name)."""
    rows = record["content_rows"]
    content = None
    for name, dtype, shape, _ in record["tensors"]:
        if layout.is_kept(name):
            value = kept(name)
        elif name == layout.CRITERION_WEIGHT:  # config, recorded by the converter
            value = torch.tensor(record["criterion_weight"], dtype=torch.float64)
        elif name in rows:
            content = get(layout.CONTENT) if content is None else content
            value = content[rows[name]].reshape(shape)
        elif name == layout.EMBED:
            # the effective input embedding: PEFT writes the delta over the task tokens' rows
            value = get(layout.EMBED_BASE).clone()
            value[record["delta_rows"]] = get(layout.EMBED_DELTA).to(value.dtype)
        else:
            value = get(layout.to_tpo(name))
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name}: tpo gives shape {tuple(value.shape)}, the layout {shape}")
        yield name, value.to(getattr(torch, dtype))


def used_tpo_names(record: dict) -> set[str]:
    """The tpo tensors the official layout takes."""
    used = {layout.CONTENT, layout.EMBED_BASE, layout.EMBED_DELTA}
    for name, *_ in record["tensors"]:
        derived = name in record["content_rows"] or name in (layout.EMBED, layout.CRITERION_WEIGHT)
        if not (layout.is_kept(name) or derived):
            used.add(layout.to_tpo(name))
    return used


def write_official(record: dict, names: set[str], get: Getter, kept: Getter, out: Path) -> Path:
    """Write the official folder `out` from tpo tensors `names` (read with `get`)."""
    extra = sorted(names - used_tpo_names(record))
    if extra:
        raise ValueError(
            f"the official VideoChat-TPO layout has no place for {len(extra)} tpo tensors, "
            f"e.g. {extra[:3]}"
        )
    by_shard: dict[str, list[tuple[str, torch.dtype, tuple[int, ...]]]] = {}
    for name, dtype, shape, shard in record["tensors"]:
        by_shard.setdefault(shard, []).append((name, getattr(torch, dtype), tuple(shape)))
    tokenizer_files = {
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "added_tokens.json",
        "special_tokens_map.json",
    }
    allowed = set(by_shard) | {layout.INDEX_FILE, "config.json"} | tokenizer_files
    tmp = replace_folder(out, allowed, "an official VideoChat-TPO folder")
    stream = official_tensors(record, get, kept)
    total = 0
    for shard, specs in by_shard.items():
        meta = (record.get("metadata") or {}).get(shard)
        writer = StreamedSafetensors(tmp / shard, specs, metadata=meta)
        for _ in specs:
            name, value = next(stream)
            writer.write(name, value)
            total += value.numel() * value.element_size()
        writer.close()
    if record.get("sharded"):
        index = {
            "metadata": {"total_size": total},
            "weight_map": {name: shard for name, _, _, shard in record["tensors"]},
        }
        (tmp / layout.INDEX_FILE).write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(record["config_text"])
    return tmp


def export_official(
    src: str | Path, out: str | Path, layout_from: str | Path | None = None
) -> Path:
    """Write `src` (a converted folder, or a checkpoint with `layout_from` = the converted
    folder it was trained from) in the official layout into `out` (atomically)."""
    src = Path(src)
    home = Path(layout_from) if layout_from is not None else src
    record = read_layout(home)
    with safe_open(str(home / layout.UNMAPPED_FILE), "pt") as unmapped:
        if (src / MODEL_FILE).is_file() and layout_from is None:
            with safe_open(str(src / MODEL_FILE), "pt") as f:
                names = {n for n in f.keys() if not n.startswith("criterion.")}  # noqa: SIM118
                tmp = write_official(record, names, f.get_tensor, unmapped.get_tensor, Path(out))
        else:
            _, model = load_checkpoint_model(src)
            state = inference_state(model)
            tmp = write_official(
                record, set(state), state.__getitem__, unmapped.get_tensor, Path(out)
            )
    tokenizer = home / layout.TOKENIZER_DIR
    if tokenizer.is_dir():
        for file in tokenizer.iterdir():
            shutil.copyfile(file, tmp / file.name)
    return commit_folder(tmp, out)
