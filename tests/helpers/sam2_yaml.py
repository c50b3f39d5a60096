"""Until the mask head's `sam2_config` takes a YAML file path (the SAM2 change in flight),
tests that build SAM2 from a converted folder's `sam2.yaml` patch the builder with
`sam2_from_file`: a file path is composed with hydra from its own folder; a sam2 config name
goes to the builder unchanged."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpo.heads import mask, sam2_backend


def _build(cfg, device="cpu", force_device=None):
    device = force_device or device
    if not Path(cfg.sam2_config).is_file():
        return _ORIGINAL(cfg, device)
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2_video_predictor

    path = Path(cfg.sam2_config).resolve()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        model = build_sam2_video_predictor(
            path.name,
            cfg.checkpoint,
            device=str(device),
            hydra_overrides_extra=[f"++model.image_size={cfg.image_size}"],
        )
    model.fill_hole_area = 0  # hole filling needs sam2's CUDA extension
    return model


_ORIGINAL = sam2_backend.build_sam2_model


@contextlib.contextmanager
def sam2_from_file(device: str | None = None) -> Iterator[None]:
    """Patch the SAM2 builder (see the module docstring) for the block; `device` "meta" builds
    SAM2 without memory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mask, "build_sam2_model", functools.partial(_build, force_device=device))
        yield
