"""The three training stages as declarative objects (installed as tpo.stages)."""

from tpo.stages.base import Stage
from tpo.stages.cotraining import STAGE3
from tpo.stages.head_training import STAGE2
from tpo.stages.task_assignment import STAGE1

STAGES: dict[int, Stage] = {1: STAGE1, 2: STAGE2, 3: STAGE3}


def get_stage(number: int) -> Stage:
    """The stage with this number (1, 2 or 3)."""
    if number not in STAGES:
        raise ValueError(f"unknown stage {number}; stages are {sorted(STAGES)}")
    return STAGES[number]


__all__ = ["STAGES", "Stage", "get_stage"]
