"""Loading a model for inference: `build_model(cfg.model)` + the folder's weights.

Two folder kinds hold a model: an inference folder (`config.yaml` + `model.safetensors`, every
weight, from `tpo export`) and a training checkpoint (`config.yaml` + `weights.safetensors`, the
trained parameters, + `state.json`; the rest is the seeded init of `model.init_seed`). Neither
needs a training stage: the model is the one `build_model` gives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpo.config import TPOConfig, load_saved_config
from tpo.heads.build import build_model
from tpo.model.tpo_model import TPOModel
from tpo.model.weights import copy_trained, load_all

MODEL_FILE = "model.safetensors"  # an inference folder's weights
CHECKPOINT_WEIGHTS = "weights.safetensors"  # a training checkpoint's trained parameters
CHECKPOINT_STATE = "state.json"


def load_inference_model(
    folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TPOModel:
    """The TPOModel of an inference folder (or of a training checkpoint folder), in eval mode."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a tpo checkpoint: no config.yaml inside it")
    cfg = load_saved_config(TPOConfig, folder / "config.yaml")
    model = build_model(cfg.model)
    if (folder / MODEL_FILE).is_file():
        load_all(model, folder / MODEL_FILE, folder / "config.yaml")
    elif (folder / CHECKPOINT_STATE).is_file() and (folder / CHECKPOINT_WEIGHTS).is_file():
        copy_trained(model, folder / CHECKPOINT_WEIGHTS)
    else:
        raise FileNotFoundError(
            f"{folder} is neither an inference folder ({MODEL_FILE} + config.yaml) nor a "
            f"training checkpoint ({CHECKPOINT_WEIGHTS} + {CHECKPOINT_STATE})"
        )
    return model.to(device, dtype).eval()
