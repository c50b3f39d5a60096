"""Inference folders: `config.yaml` + `model.safetensors` (every weight), LoRA merged or not.

An inference folder does not depend on seeds or on the checkpoint chain: it holds every
parameter of the MLLM and its heads. With `merge_lora`, the adapters are folded into the LLM
weights (peft `merge_and_unload`) and the stored config says `model.llm.lora.enabled: false`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tpo.config import TPOConfig, load_config, to_yaml
from tpo.train.checkpoint import load_trained_weights

MODEL_FILE = "model.safetensors"
INFERENCE_FILES = {MODEL_FILE, "config.yaml"}


def load_checkpoint_model(ckpt: str | Path):
    """Rebuild the TPOModel of a training checkpoint folder and load its trained weights."""
    from tpo.stages import get_stage
    from tpo.train.builders import build_train_model

    ckpt = Path(ckpt)
    if not (ckpt / "config.yaml").is_file():
        raise FileNotFoundError(f"{ckpt} is not a tpo checkpoint: no config.yaml inside it")
    cfg = load_config(TPOConfig, [ckpt / "config.yaml"])
    model = build_train_model(cfg, get_stage(cfg.train.stage))
    load_trained_weights(model, ckpt)
    return cfg, model


def export(ckpt: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """Write an inference folder for checkpoint `ckpt` into `out` (atomically)."""
    cfg, model = load_checkpoint_model(ckpt)
    model.float()
    if merge_lora and cfg.model.llm.lora.enabled:
        llm = model.mllm.llm
        llm.model = llm.model.merge_and_unload()
        cfg.model.llm.lora.enabled = False
    return save_inference_folder(model, cfg, out)


def save_inference_folder(model: torch.nn.Module, cfg: TPOConfig, out: str | Path) -> Path:
    """Write every weight of `model` but the criterion's, and `cfg`, as an inference folder
    `out` (atomically: a temp folder renamed into place, replacing an existing one)."""
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("criterion")
    }
    # tied weights share storage; safetensors stores each tensor once
    seen: dict[int, str] = {}
    for k in list(state):
        ptr = state[k].data_ptr()
        if ptr in seen:
            state[k] = state[k].clone()
        seen[ptr] = k
    out = Path(out)
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= INFERENCE_FILES):
        raise FileExistsError(
            f"{out} exists and is not an inference folder (expected nothing but "
            f"{sorted(INFERENCE_FILES)} inside it): an export replaces its --out folder, so "
            "pick a new or empty one"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "tpo-inference-1"})
    (tmp / "config.yaml").write_text(to_yaml(cfg))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_inference_model(
    folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
):
    """The TPOModel of an inference folder (or of a training checkpoint folder)."""
    from safetensors.torch import load_file

    from tpo.stages import get_stage
    from tpo.train.builders import build_train_model

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        if (folder / "state.json").is_file():
            return load_checkpoint_model(folder)[1].to(device, dtype).eval()
        raise FileNotFoundError(
            f"{folder} is neither an inference folder ({MODEL_FILE} + config.yaml) nor a "
            "training checkpoint (weights.safetensors + state.json)"
        )
    cfg = load_config(TPOConfig, [folder / "config.yaml"])
    model = build_train_model(cfg, get_stage(3))
    try:
        missing, unexpected = model.load_state_dict(
            load_file(str(folder / MODEL_FILE)), strict=False
        )
    except RuntimeError as err:  # shapes that differ from the config's: torch lists them all
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise ValueError(
            f"{folder / MODEL_FILE} does not fit {folder / 'config.yaml'}: "
            f"{'; '.join(lines[:2])}{more}"
        ) from err
    missing = [k for k in missing if not k.startswith("criterion")]
    if missing or unexpected:
        raise ValueError(
            f"{folder / MODEL_FILE} does not fit its config.yaml: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device, dtype).eval()
