"""DeepSpeed JSON configs, filled from the YAML at launch (DeepSpeed itself has no "auto")."""

from __future__ import annotations

import json
from pathlib import Path

from tpo.config.schema import TrainConfig

# Fields the YAML owns; a JSON file that sets them differently is refused, not silently overridden.
FILLED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16",
    "fp16",
    "optimizer",
    "scheduler",
)


def grad_accum_steps(train: TrainConfig, world_size: int) -> int:
    """Accumulation steps: from `global_batch` when set, else `grad_accum`."""
    if train.global_batch is None:
        return train.grad_accum
    per_step = train.micro_batch * world_size
    if train.global_batch % per_step:
        raise ValueError(
            f"train.global_batch {train.global_batch} is not a multiple of micro_batch "
            f"{train.micro_batch} x world size {world_size}"
        )
    return train.global_batch // per_step


def build_ds_config(train: TrainConfig, world_size: int) -> dict:
    """Read `train.deepspeed` and fill batch, accumulation, precision and clipping from the YAML."""
    path = Path(train.deepspeed)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"train.deepspeed: DeepSpeed config {path} not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err
    for key in FILLED:
        if key in cfg:
            raise ValueError(
                f"{path}: key '{key}' is filled from the YAML (train.*) at launch; remove it"
            )
    accum = grad_accum_steps(train, world_size)
    cfg.update(
        train_micro_batch_size_per_gpu=train.micro_batch,
        gradient_accumulation_steps=accum,
        train_batch_size=train.micro_batch * accum * world_size,
        gradient_clipping=train.clip_grad,
        bf16={"enabled": bool(train.bf16)},
    )
    return cfg
