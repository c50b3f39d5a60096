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
