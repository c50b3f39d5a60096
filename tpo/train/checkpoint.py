"""One checkpoint format for all stages, written atomically.

A checkpoint folder holds:
- `weights.safetensors`: every parameter that training has changed so far (the groups of this
  stage and of the stages before it); everything else is rebuilt from the config (local
  pretrained paths, or the seeded random init whose fingerprint is checked on load);
- `config.yaml` (the resolved TPOConfig) and `deepspeed.json` (the filled DeepSpeed config);
- `state.json`: stage, optimizer step, samples consumed, trained groups, base fingerprint,
  bad-sample counts;
- `ds/`: DeepSpeed's own optimizer / scheduler state (for `--resume`);
- per rank, `rng_rank{r}.pt` (RNG states) and `data_rank{r}.json` (bad samples found and counted).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from tpo.model.sharding import whole
from tpo.model.weights import copy_trained

WEIGHTS = "weights.safetensors"
STATE = "state.json"


def group_names(model: nn.Module, groups: list[str]) -> list[str]:
    """Names (as in `model.named_parameters()`) of the parameters of the given groups."""
    declared = model.trainable_groups()
    wanted = {id(p) for g in groups if g in declared for p in declared[g]}
    return [name for name, p in model.named_parameters() if id(p) in wanted]


def trained_state(
    model: nn.Module, groups: list[str], keep: bool = True
) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters of the given groups, whole even under ZeRO-3, gathered one at
    a time. Gathering is a collective there: every rank calls this, the writer with `keep`, the
    others with `keep=False` (they take part and copy nothing)."""
    params = dict(model.named_parameters())
    out = {}
    for name in group_names(model, groups):
        with whole(params[name]):
            if keep:
                out[name] = params[name].detach().to("cpu").contiguous().clone()
    return out


def base_fingerprint(model: nn.Module, exclude: Collection[str]) -> float:
    """A checksum of the parameters a checkpoint does not store (catches a different base init).

    Call it while every parameter is whole (before a ZeRO-3 engine partitions them)."""
    total = 0.0
    for name, p in model.named_parameters():
        if name not in exclude and p.device.type != "meta":
            # rounded to bf16 first, so a bf16 run and an fp32 rebuild agree
            flat = p.detach().reshape(-1)[:4096].to(torch.bfloat16).double()
            total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())
    return total


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def read_state(ckpt: str | Path) -> dict:
    """A checkpoint's state.json (clear error when `ckpt` is not a checkpoint folder)."""
    ckpt = Path(ckpt)
    if not (ckpt / WEIGHTS).is_file() or not (ckpt / STATE).is_file():
        raise FileNotFoundError(
            f"{ckpt} is not a tpo checkpoint: expected {WEIGHTS} and {STATE} inside it"
        )
    return json.loads((ckpt / STATE).read_text())


def load_trained_weights(model: nn.Module, ckpt: str | Path, *, check_base: bool = True) -> dict:
    """Load a checkpoint's weights into `model`; returns its state.json.

    Raises a clear error if the folder is not a checkpoint, a stored tensor has no place in
    the model, or the base (unstored) parameters differ from those the checkpoint was trained on.
    """
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    tensors = copy_trained(model, ckpt / WEIGHTS)
    if check_base and state.get("base_fingerprint") is not None:
        now = base_fingerprint(model, tensors)
        then = state["base_fingerprint"]
        if abs(now - then) > 1e-6 * max(1.0, abs(then)):
            raise ValueError(
                f"{ckpt}: the model's base parameters differ from those this checkpoint was "
                f"trained on (fingerprint {now:.6g} != {then:.6g}); check model.* in config.yaml "
                "and model.init_seed"
            )
    return state


def rng_state() -> dict:
    """Python, numpy and torch RNG states of this process."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    """Save this rank's RNG state beside the checkpoint."""
    state = rng_state()
    # numpy's state is a tuple holding an array: store it as plain lists for weights_only loading.
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    state["python"] = [state["python"][0], list(state["python"][1]), state["python"][2]]
    torch.save(state, folder / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    """Restore this rank's RNG state from a checkpoint."""
    state = torch.load(folder / f"rng_rank{rank}.pt", weights_only=True)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    state["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    version, inner, gauss = state["python"]
    state["python"] = (version, tuple(inner), gauss)
    set_rng_state(state)


def save_data_state(folder: Path, rank: int, state: dict) -> None:
    """Save this rank's data bookkeeping (`TrainData.state_dict`) beside the checkpoint."""
    write_json(folder / f"data_rank{rank}.json", state)


def load_data_state(folder: Path, rank: int) -> dict:
    """This rank's data bookkeeping from a checkpoint."""
    return json.loads((folder / f"data_rank{rank}.json").read_text())


def finalize(tmp: Path, final: Path) -> None:
    """Move a fully written checkpoint folder into place, replacing an older one."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of `run_dir` with the most steps (`checkpoints/step_*` or
    `final`, which a finished run wrote last and a longer rerun continues), or None."""
    root = Path(run_dir)
    steps = root / "checkpoints"
    found = [p for p in steps.iterdir() if p.name.startswith("step_")] if steps.is_dir() else []
    found.append(root / "final")
    done = [p for p in found if not p.name.endswith((".tmp", ".old")) and (p / STATE).is_file()]
    return max(done, key=lambda p: read_state(p)["step"], default=None)
