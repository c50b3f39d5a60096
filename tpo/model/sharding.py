"""ZeRO-3 sharded parameters: tell them apart and hold them whole for a moment.

DeepSpeed ZeRO-3 leaves each rank a shard of every parameter (`ds_id` marks one) and gathers a
module's own parameters only around that module's forward. Code that reads a parameter anywhere
else (a checkpoint copy, SAM2's learned tokens read from a method) must gather it itself.
"""

from __future__ import annotations

import contextlib

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
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)
