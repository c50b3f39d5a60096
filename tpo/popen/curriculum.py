"""POPEN's curriculum over the segmentation-embedding preference set.

The perturbed runs of one sample are ranked by mask quality into tiers "high", "medium" and
"low" (`rank_tiers`). Training first uses coarse pairs (every high run preferred to every low
run: coarse localisation), then fine pairs (high over medium and medium over low: boundary
refinement). `Curriculum` says which phase an optimizer step / epoch is in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

TIERS = ("high", "medium", "low")
PHASES = ("coarse", "fine")


def rank_tiers(scores: Sequence[float]) -> list[str]:
    """Tier of each run from its mask quality score (higher is better), in input order.

    Runs are sorted by descending score, ties broken by index (stable). The top round(n / 3)
    are "high", the bottom round(n / 3) "low" and the rest "medium": n = 30 gives 10/10/10,
    31 gives 10/11/10, 32 gives 11/10/11, 2 gives 1/0/1, 1 gives one "medium".
    """
    values = [float(s) for s in scores]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"rank_tiers: scores must not be NaN, got {values}")
    n = len(values)
    k = (n + 1) // 3  # round(n / 3): n / 3 never ends in .5
    order = sorted(range(n), key=lambda i: (-values[i], i))
    tiers = ["medium"] * n
    for rank, i in enumerate(order):
        if rank < k:
            tiers[i] = "high"
        elif rank >= n - k:
            tiers[i] = "low"
    return tiers


def preference_pairs(tiers: Sequence[str], phase: str) -> list[tuple[int, int]]:
    """(winner, loser) index pairs: "coarse" = every high x low pair; "fine" = every
    high x medium pair, then every medium x low pair. Ordered by winner index, then loser."""
    bad = [t for t in tiers if t not in TIERS]
    if bad:
        raise ValueError(f"preference_pairs: tiers must be in {TIERS}, got {bad[0]!r}")
    by_tier = {t: [i for i, x in enumerate(tiers) if x == t] for t in TIERS}
    if phase == "coarse":
        steps = [("high", "low")]
    elif phase == "fine":
        steps = [("high", "medium"), ("medium", "low")]
    else:
        raise ValueError(f"preference_pairs: phase must be one of {PHASES}, got {phase!r}")
    return [(w, lo) for win, lose in steps for w in by_tier[win] for lo in by_tier[lose]]


@dataclass(frozen=True)
class Curriculum:
    """When the fine pairs start: at optimizer step `switch_step` or at epoch `switch_epoch`
    (of the segmentation set), whichever is set (both set: ValueError). Steps / epochs before
    the switch are "coarse", from the switch on "fine". Neither set: always "coarse" (the
    high-vs-low pairs the paper names in its loss, no refinement phase)."""

    switch_step: int | None = None
    switch_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.switch_step is not None and self.switch_epoch is not None:
            raise ValueError("Curriculum: set switch_step or switch_epoch, not both")
        for key in ("switch_step", "switch_epoch"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"Curriculum: {key} must be >= 0 or None, got {value}")

    def phase(self, step: int, epoch: int = 0) -> str:
        """ "coarse" or "fine" at optimizer step `step` (0-based) in epoch `epoch` (0-based)."""
        if self.switch_step is not None:
            return "fine" if step >= self.switch_step else "coarse"
        if self.switch_epoch is not None:
            return "fine" if epoch >= self.switch_epoch else "coarse"
        return "coarse"

    def pairs(
        self, scores: Sequence[float] | Tensor, step: int, epoch: int = 0
    ) -> list[tuple[int, int]]:
        """(winner, loser) pairs of one sample's runs (their quality `scores`) at this step."""
        values = scores.tolist() if isinstance(scores, Tensor) else scores
        return preference_pairs(rank_tiers(values), self.phase(step, epoch))
