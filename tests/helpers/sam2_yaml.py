"""Building SAM2 on the meta device: sam2's builder moves the model to its `device` argument,
which for a meta-device build must be "meta" too (tpo's builder is given "cpu")."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import pytest

from tpo.heads import mask
from tpo.heads.sam2_build import build_sam2_model


@contextlib.contextmanager
def sam2_on_meta() -> Iterator[None]:
    """Patch the mask head's SAM2 builder to build on "meta" for the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mask, "build_sam2_model", functools.partial(_on_meta, build_sam2_model))
        yield


def _on_meta(build, cfg, device="cpu"):
    return build(cfg, "meta")
