"""Inference folders: `config.yaml` + `model.safetensors` (every weight), LoRA merged or not.

An inference folder does not depend on seeds or on the checkpoint chain: it holds every
parameter of the MLLM and its heads; `tpo.infer.load.load_inference_model` (and `tpo.load`)
read it back. With `merge_lora`, the adapters are folded into the LLM
weights (peft `merge_and_unload`) and the stored config says `model.llm.lora.enabled: false`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpo.config import TPOConfig, load_saved_config, to_yaml
from tpo.heads.build import build_model
from tpo.model import folder
from tpo.train.checkpoint import load_trained_weights

MODEL_FILE = folder.MODEL_FILE  # read back by tpo.infer.load.load_inference_model


def load_checkpoint_model(ckpt: str | Path):
    """Rebuild the TPOModel of a training checkpoint folder (`build_model`, no stage) and load
    its trained weights (checking the base parameters' fingerprint)."""
    ckpt = Path(ckpt)
    if not (ckpt / "config.yaml").is_file():
        raise FileNotFoundError(f"{ckpt} is not a tpo checkpoint: no config.yaml inside it")
    cfg = load_saved_config(TPOConfig, ckpt / "config.yaml")
    model = build_model(cfg.model)
    load_trained_weights(model, ckpt)
    return cfg, model


def export(ckpt: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """Write an inference folder for checkpoint `ckpt` into `out` (atomically)."""
    cfg, model = load_checkpoint_model(ckpt)
    model.float()
    cfg.model.base_weights = None  # the folder holds every weight itself
    if merge_lora and cfg.model.llm.lora.enabled:
        llm = model.mllm.llm
        llm.model = llm.model.merge_and_unload()
        cfg.model.llm.lora.enabled = False
    return save_inference_folder(model, cfg, out)


def save_inference_folder(model: torch.nn.Module, cfg: TPOConfig, out: str | Path) -> Path:
    """Write every weight of `model` but the criterion's, and `cfg`, as an inference folder
    `out` (atomically: a temp folder renamed into place, replacing an existing one)."""
    return folder.save_inference_folder(model, to_yaml(cfg), out)
