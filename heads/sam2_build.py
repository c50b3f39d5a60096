"""Building SAM2 for the mask head: its Hydra config (a name inside sam2 or a YAML file) and a
local checkpoint (`.pt` or safetensors) loaded strictly.

`sam2` initialises Hydra globally when it is imported (sam2#179), so it is imported only inside
these functions, and the model is built inside a scoped Hydra context that restores whatever
Hydra state existed before (building twice in one process, or next to another Hydra user, works).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch
from torch import nn

from tpo.config.heads import MaskHeadConfig

_SHOWN = 8  # names listed in a checkpoint mismatch error


@contextlib.contextmanager
def _sam2_hydra(config_dir: str | None) -> Iterator[None]:
    """Hydra initialised on sam2's config module (or on `config_dir`, an absolute folder) for
    the block; the previous state restored."""
    # function-level: sam2's hydra only when a mask head is built
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        if config_dir is None:
            scope = initialize_config_module("sam2", version_base="1.2")
        else:
            scope = initialize_config_dir(config_dir=config_dir, version_base="1.2")
        with scope:
            yield
    finally:
        restore_gh_from_backup(backup)


def sam2_config_source(sam2_config: str) -> tuple[str | None, str]:
    """(config folder, config name) of `mask.sam2_config`: an existing YAML file is composed
    from its own folder (None: a config name inside the sam2 package)."""
    if sam2_config.endswith((".yaml", ".yml")) and os.path.isfile(sam2_config):
        path = os.path.abspath(sam2_config)
        return os.path.dirname(path), os.path.basename(path)
    return None, sam2_config


def read_sam2_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """SAM2's state dict from a local `.safetensors` file or a `.pt` (the release's `{"model":
    state dict}` layout, or a bare state dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"mask.checkpoint: no SAM2 checkpoint at {path!r} (a local .pt or .safetensors file)"
        )
    if path.endswith(".safetensors"):
        # function-level: safetensors only when a checkpoint of that kind is read
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"mask.checkpoint {path!r}: expected a state dict, got {type(state)}")
    return state


def load_sam2_weights(sam: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `sam` strictly; missing, unexpected or misshapen names are an error
    that names them (`source`: where the tensors came from)."""
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    problems = [
        f"{len(names)} {what}: {', '.join(names[:_SHOWN])}{' ...' if len(names) > _SHOWN else ''}"
        for what, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", misshapen),
        )
        if names
    ]
    if problems:
        raise ValueError(
            f"mask.checkpoint {source!r} does not fit the SAM2 built from its config: "
            + "; ".join(problems)
        )
    sam.load_state_dict(state, strict=True)


def build_sam2_model(cfg: MaskHeadConfig, device: str | torch.device = "cpu") -> nn.Module:
    """A `SAM2VideoPredictor` (a `SAM2Base`) from `cfg.sam2_config`, as sam2's own
    `build_sam2_video_predictor` sets it up for video (dynamic multimask via stability,
    binarised point masks for the memory encoder, hole filling where its CUDA op exists).

    One model serves both the training path (image encoder + prompt encoder + mask decoder) and
    video propagation. Image size: `cfg.image_size`, or the config's own when None.
    `cfg.checkpoint`: a local file (None: random weights; they may be loaded later with
    `load_state_dict`, SAM2's own parameter names).
    """
    state = None if cfg.checkpoint is None else read_sam2_checkpoint(cfg.checkpoint)
    # function-level: sam2's hydra only when a mask head is built
    from hydra.errors import MissingConfigException

    # function-level: sam2 (and hydra) only when a mask head is built
    from sam2.build_sam import build_sam2_video_predictor

    config_dir, name = sam2_config_source(cfg.sam2_config)
    overrides = [] if cfg.image_size is None else [f"++model.image_size={cfg.image_size}"]
    try:
        with _sam2_hydra(config_dir):
            model = build_sam2_video_predictor(
                name, None, device=str(device), hydra_overrides_extra=overrides
            )
    except MissingConfigException as err:
        raise ValueError(
            f"mask.sam2_config: no SAM2 config {cfg.sam2_config!r}: expected a YAML file or a "
            "config name inside the sam2 package like configs/sam2.1/sam2.1_hiera_t.yaml"
        ) from err
    if state is not None:
        load_sam2_weights(model, state, str(cfg.checkpoint))
    if importlib.util.find_spec("sam2._C") is None:
        # hole filling needs sam2's optional CUDA extension; without it sam2 warns on every
        # frame and skips the step, so switch it off (the masks are the same)
        model.fill_hole_area = 0
    return model
