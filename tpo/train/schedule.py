"""Learning-rate schedule: linear warmup, then cosine decay to a minimum ratio of the peak."""

from __future__ import annotations

import math

import torch


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `cosine_factor` to every param group's own peak lr."""
    warmup = int(round(warmup_ratio * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total, warmup, min_ratio)
    )
