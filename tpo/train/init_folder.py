"""Starting a stage from an inference folder (`tpo export`, `tpo convert videochat-tpo`):
`train.init_from=DIR` where DIR holds `config.yaml` + `model.safetensors`.

The run's model is the folder's: its `model` config (the command line's `model.*` overrides
still apply on top) with `model.base_weights` = the folder, so every build of this run's model,
and of its checkpoints when they are loaded later, starts from the folder's weights; the
checkpoints store the trained groups as always.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from tpo.config import TPOConfig, load_saved_config, to_dict
from tpo.config.load import merge_into
from tpo.model.folder import CONFIG_FILE, MODEL_FILE
from tpo.train.checkpoint import STATE


def is_inference_folder(path: str | Path) -> bool:
    """Whether `path` is an inference folder (every weight), not a training checkpoint."""
    path = Path(path)
    return (
        (path / MODEL_FILE).is_file()
        and (path / CONFIG_FILE).is_file()
        and not (path / STATE).is_file()
    )


def adopt_folder_model(cfg: TPOConfig, overrides: Sequence[str] = ()) -> TPOConfig:
    """`cfg` with the model of its `train.init_from` inference folder (`model.*` entries of
    `overrides` applied on top) and `model.base_weights` pointing at that folder."""
    assert cfg.train.init_from is not None
    folder = Path(cfg.train.init_from).resolve()
    saved = load_saved_config(TPOConfig, folder / CONFIG_FILE)
    node = to_dict(cfg)
    node["model"] = to_dict(saved)["model"]
    node["model"]["base_weights"] = str(folder)
    model_overrides = [o for o in overrides if o.split("=", 1)[0].startswith("model.")]
    sources = [(f"{folder / CONFIG_FILE} + the stage config", node)]
    if model_overrides:
        sources.append(("command line", OmegaConf.from_dotlist(model_overrides)))
    return merge_into(TPOConfig, sources)
