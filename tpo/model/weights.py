"""Copying a checkpoint's trained tensors onto a built model, by parameter name.

Shared by training (`tpo.train.checkpoint.load_trained_weights`, which also checks the base
parameters) and inference (`tpo.infer.load`), which may not import each other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def copy_trained(model: nn.Module, file: str | Path) -> dict[str, torch.Tensor]:
    """Copy every tensor of the safetensors `file` onto the same-named parameter of `model`
    (cast to its dtype); returns the tensors. A tensor with no such parameter, or of another
    shape, is an error naming the file."""
    tensors = load_file(str(file))
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{file}: tensors with no place in the model: {unknown[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise ValueError(
                    f"{file}: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(own[name].shape)}"
                )
            own[name].copy_(value.to(own[name].dtype))
    return tensors


def load_all(model: nn.Module, file: str | Path, config_file: str | Path) -> None:
    """Every weight of an inference folder's `file` onto `model` (a training run's criterion
    buffers are skipped); a tensor that does not fit the model built from `config_file` is an
    error naming both."""
    try:
        missing, unexpected = model.load_state_dict(load_file(str(file)), strict=False)
    except RuntimeError as err:  # shapes that differ from the config's: torch lists them all
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise ValueError(
            f"{file} does not fit {config_file}: {'; '.join(lines[:2])}{more}"
        ) from err
    unexpected = [k for k in unexpected if not k.startswith("criterion.")]
    missing = [k for k in missing if not k.startswith("criterion.")]
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit {config_file}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
