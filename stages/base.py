"""A training stage as a small declarative object; one engine (tpo.train.engine) runs any."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    """What one stage trains, at which learning rates, on which data, with which losses.

    Trainable parameters are named by group (groups are declared by the modules through
    `trainable_groups()`), never by parameter-name substrings.
    """

    number: int
    name: str
    trainable: tuple[str, ...]  # group names; every other parameter stays bit-identical
    lr_scale: dict[str, float] = field(default_factory=dict)  # group -> multiple of train.lr
    lm_weight: float = 1.0  # weight of the LM loss in the total
    head_losses: bool = True  # whether the head criteria contribute
    init_from: str | None = None  # default checkpoint to start from (the previous stage's)
    optional_groups: tuple[str, ...] = ()  # trained only when the config asks (train.extra_groups)

    def __post_init__(self) -> None:
        unknown = set(self.lr_scale) - set(self.trainable) - set(self.optional_groups)
        if unknown:
            raise ValueError(
                f"stage {self.number}: lr_scale names untrained groups {sorted(unknown)}"
            )
        if self.lm_weight == 0 and not self.head_losses:
            raise ValueError(f"stage {self.number}: no loss is switched on")

    def groups(self, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
        """The trained groups: the declared ones plus the optional ones the config switches on."""
        bad = [g for g in extra if g not in self.optional_groups]
        if bad:
            raise ValueError(
                f"stage {self.number}: train.extra_groups {bad} are not optional groups of this "
                f"stage (optional: {list(self.optional_groups)})"
            )
        return tuple(self.trainable) + tuple(g for g in extra if g not in self.trainable)
