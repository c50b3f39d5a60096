"""Trainable groups: freeze everything, then switch on the groups a stage names."""

from __future__ import annotations

import logging

import torch
from torch import nn

from tpo.stages import STAGES

log = logging.getLogger(__name__)

# Groups a stage may name that a model can lack (a head left out of the config).
OPTIONAL_GROUPS = frozenset({"temporal_head", "region_head", "mask_head"})


def select_trainable(model: nn.Module, names: tuple[str, ...] | list[str]) -> dict[str, list]:
    """Freeze every parameter, then unfreeze the named groups; returns group -> parameters.

    A parameter that sits in two named groups (e.g. `connector` and `connector_proj`) is
    listed under the first only. Unknown group names are an error, naming what exists.
    """
    declared: dict[str, list[nn.Parameter]] = model.trainable_groups()
    missing = [n for n in names if n not in declared and n not in OPTIONAL_GROUPS]
    if missing:
        raise ValueError(
            f"groups {missing} are not declared by the model; it has {sorted(declared)}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    seen: set[int] = set()
    chosen: dict[str, list[nn.Parameter]] = {}
    for name in names:
        if name not in declared:
            log.info("group %s is not in this model (head not configured); skipped", name)
            continue
        params = [p for p in declared[name] if id(p) not in seen]
        seen.update(id(p) for p in params)
        for p in params:
            p.requires_grad_(True)
        chosen[name] = params
    return chosen


def optimizer_groups(
    chosen: dict[str, list[nn.Parameter]],
    lr: float,
    weight_decay: float,
    lr_scale: dict[str, float] | None = None,
    lr_override: dict[str, float] | None = None,
) -> list[dict]:
    """AdamW param groups: per trainable group an lr, and no decay for 1-d tensors (norms, biases).

    `lr_override` (`train.lr_groups`) is checked by `check_lr_groups`.
    """
    lr_scale, lr_override = lr_scale or {}, lr_override or {}
    check_lr_groups(lr_override, chosen)
    groups = []
    for name, params in chosen.items():
        group_lr = lr_override.get(name, lr * lr_scale.get(name, 1.0))
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for subset, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if subset:
                groups.append({"params": subset, "lr": group_lr, "weight_decay": wd, "name": name})
    if not groups:
        raise ValueError("no trainable parameters: the stage's groups are all absent or empty")
    return groups


def stage_groups() -> set[str]:
    """Every group a stage trains or may train (`Stage.trainable`, `Stage.optional_groups`)."""
    return {g for st in STAGES.values() for g in (*st.trainable, *st.optional_groups)}


def check_lr_groups(lr_groups: dict, trained: dict | list | tuple) -> None:
    """Check `train.lr_groups` against the groups: a key no stage declares (a typo) or an lr that
    is not a positive number is a ValueError naming it; a key naming a group this run does not
    train (an optional group left off, a head not configured) is logged and has no effect."""
    known = stage_groups() | OPTIONAL_GROUPS | set(trained)
    unknown = sorted(str(k) for k in lr_groups if k not in known)
    if unknown:
        raise ValueError(
            f"train.lr_groups: unknown group(s) {unknown}; this run trains {sorted(trained)}, "
            f"the stages declare {sorted(known)}"
        )
    for name, value in lr_groups.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"train.lr_groups.{name}: expected a positive lr, got {value!r}")
    idle = sorted(k for k in lr_groups if k not in trained)
    if idle:
        log.info("train.lr_groups %s: not trained in this run, no effect", idle)


def count(params: list[nn.Parameter] | tuple[torch.Tensor, ...]) -> int:
    """Number of elements in a list of tensors."""
    return sum(p.numel() for p in params)
