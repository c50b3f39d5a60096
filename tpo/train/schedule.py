"""Learning-rate schedule: linear warmup, then cosine decay to a minimum ratio of the peak.

transformers' `get_cosine_with_min_lr_schedule_with_warmup`, with the warmup given as a ratio of
the run (`train.warmup_ratio`) and the floor as a ratio of each group's peak (`train.min_lr_ratio`).
"""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup


def warmup_steps(total: int, warmup_ratio: float) -> int:
    """Optimizer steps of linear warmup: `warmup_ratio` of `total`, rounded."""
    return int(round(warmup_ratio * total))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over every param group's own peak lr: at optimizer step s (0-based), with
    w warmup steps, the factor is s / w during warmup, then
    min_ratio + (1 - min_ratio) * (1 + cos(pi * (s - w) / (total - w))) / 2."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        num_warmup_steps=warmup_steps(total, warmup_ratio),
        num_training_steps=total,
        min_lr_rate=min_ratio,
    )
