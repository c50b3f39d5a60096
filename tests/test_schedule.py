"""The learning-rate schedule (transformers' cosine with a floor) on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.train.schedule import build_scheduler, warmup_steps


def _optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])


def _curve(sched, steps: int) -> list[list[float]]:
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_to_the_floor_of_each_groups_peak():
    # total 10, warmup 0.2 -> 2 steps, floor 0.1 of the peak
    assert warmup_steps(10, 0.2) == 2
    lrs = _curve(build_scheduler(_optimizer(), 10, 0.2, 0.1), 11)
    by_hand = {
        0: 0.0,  # warmup: s / w
        1: 0.5,
        2: 1.0,  # cosine starts at the peak
        6: 0.1 + 0.9 * 0.5,  # half-way: cos(pi / 2) = 0
        8: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 6 / 8)),
        10: 0.1,  # the floor at the last step
    }
    for step, factor in by_hand.items():
        assert lrs[step] == pytest.approx([factor, 0.1 * factor], abs=1e-12), step


def test_resume_restores_the_curve():
    full = _curve(build_scheduler(_optimizer(), 20, 0.1, 0.05), 20)
    first = build_scheduler(_optimizer(), 20, 0.1, 0.05)
    _curve(first, 7)
    state = first.state_dict()
    resumed = build_scheduler(_optimizer(), 20, 0.1, 0.05)
    resumed.load_state_dict(state)
    # the scheduler's state restores the step and the lrs it set; the optimizer's own state
    # (restored by DeepSpeed beside it) is not needed for the curve
    for g, lr in zip(resumed.optimizer.param_groups, resumed.get_last_lr(), strict=True):
        g["lr"] = lr
    assert _curve(resumed, 13) == full[7:]
