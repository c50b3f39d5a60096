"""The one list of task heads: their order is the head index of the content tokens.

The built-in heads (temporal, region, mask) are listed here; another head registers its class
with `register` (a `tpo.model.task_head.TaskHead` subclass declaring `name`, `tokens`,
`from_config`...), and from then on `build_model` gives it task tokens and builds it, the
criterion routes its losses and the predictor puts its answer parts in `GroundedAnswer`.
Importing this module builds nothing and does not import sam2.
"""

from __future__ import annotations

from tpo.heads.mask import MaskHead
from tpo.heads.region import RegionHead
from tpo.heads.temporal import TemporalHead
from tpo.model.task_head import TaskHead, head_pairs
from tpo.model.tokens import TaskPair

BUILTIN: tuple[type[TaskHead], ...] = (TemporalHead, RegionHead, MaskHead)  # head index 0, 1, 2
_HEADS: dict[str, type[TaskHead]] = {h.name: h for h in BUILTIN}


def register(cls: type[TaskHead]) -> type[TaskHead]:
    """Add head class `cls` after the registered ones (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, TaskHead)):
        raise TypeError(f"register: expected a TaskHead subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    tokens = getattr(cls, "tokens", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: {cls.__name__}.name must be a non-empty string")
    if not (isinstance(tokens, tuple) and len(tokens) == 2 and all(tokens)):
        raise ValueError(f"register: {cls.__name__}.tokens must be (begin, content) strings")
    if name in _HEADS and _HEADS[name] is not cls:
        raise ValueError(f"register: a head named {name!r} is already registered")
    used = {t for h in _HEADS.values() if h is not cls for t in h.tokens}
    if used & set(tokens):
        raise ValueError(f"register: tokens {sorted(used & set(tokens))} already belong to a head")
    _HEADS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a registered head (the built-in ones stay)."""
    if name in {h.name for h in BUILTIN}:
        raise ValueError(f"unregister: {name!r} is a built-in head")
    _HEADS.pop(name, None)


def heads() -> list[type[TaskHead]]:
    """The registered head classes, in head-index order."""
    return list(_HEADS.values())


def get(name: str) -> type[TaskHead]:
    """The head class registered as `name`."""
    if name not in _HEADS:
        raise KeyError(f"no head {name!r} registered; heads: {list(_HEADS)}")
    return _HEADS[name]


def names() -> tuple[str, ...]:
    """The registered head names, in head-index order."""
    return tuple(_HEADS)


def task_pairs() -> list[TaskPair]:
    """The registered heads' task pairs, in head-index order."""
    return head_pairs(heads())
