"""Parameters under DeepSpeed ZeRO: tell ZeRO-3 shards apart, hold them whole for a moment,
and give every trainable parameter a gradient each step.

DeepSpeed ZeRO-3 leaves each rank a shard of every parameter (`ds_id` marks one) and gathers a
module's own parameters only around that module's forward. Code that reads a parameter anywhere
else (a checkpoint copy, SAM2's learned tokens read from a method) must gather it itself.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def is_sharded(p: nn.Parameter) -> bool:
    """Whether DeepSpeed ZeRO-3 manages `p` (its data may be an empty shard)."""
    return hasattr(p, "ds_id")


def whole(*params: nn.Parameter) -> contextlib.AbstractContextManager:
    """Context in which `params` hold their whole values (read-only). Under ZeRO-3 gathering is a
    collective, so every rank must enter it; for other parameters it does nothing."""
    # available ones (persistent small tensors, or in use by a module now) are whole already;
    # the status is the same on every rank, so skipping them keeps the collective in step
    sharded = [p for p in params if is_sharded(p) and p.ds_status.name != "AVAILABLE"]
    if not sharded:
        return contextlib.nullcontext()
    # function-level: deepspeed is heavy to import; only training runs need it
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)


def zero_through_all(model: nn.Module) -> torch.Tensor:
    """A zero that depends on every trainable parameter (so each gets a gradient every step).

    Parameters that ZeRO-3 shards are left out: outside their module's forward they
    hold no data, and ZeRO-3 itself gives a zero gradient to those a step did not use."""
    params = [p for p in model.parameters() if p.requires_grad and not is_sharded(p)]
    if not params:
        return torch.zeros(())
    return sum(p.reshape(-1)[:1].sum() for p in params) * 0.0
