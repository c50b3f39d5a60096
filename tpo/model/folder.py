"""Writing model folders atomically: an inference folder (`config.yaml` + `model.safetensors`),
and a safetensors file streamed tensor by tensor (for checkpoints larger than memory twice).

Shared by `tpo export` (tpo.train) and `tpo convert` (tpo.infer), which may not import each
other.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

MODEL_FILE = "model.safetensors"  # read back by tpo.infer.load.load_inference_model
CONFIG_FILE = "config.yaml"

# safetensors' dtype codes (the format's header spelling)
_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class StreamedSafetensors:
    """A safetensors file written one tensor at a time, in the order of `specs`.

    safetensors' own `save_file` builds the whole byte image of the file in memory; a 16 GB
    checkpoint would then be held twice, so the header is written from the specs first and each
    tensor's bytes follow as it is produced (the format: 8-byte header length, JSON header,
    data). Written to `path` + ".tmp", renamed on `close()`.
    """

    def __init__(
        self,
        path: str | Path,
        specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.order: list[tuple[str, torch.dtype, tuple[int, ...]]] = list(specs)
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for name, dtype, shape in self.order:
            if dtype not in _CODES:
                raise ValueError(f"{self.path}: {name} has dtype {dtype}, which safetensors lacks")
            size = _nbytes(dtype, shape)
            header[name] = {
                "dtype": _CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(len(raw).to_bytes(8, "little") + raw)
        self.next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must be the one the specs list next (name, dtype, shape)."""
        if self.next >= len(self.order):
            raise ValueError(f"{self.path}: {name} is one tensor more than the header lists")
        want = self.order[self.next]
        got = (name, tensor.dtype, tuple(tensor.shape))
        if got != want:
            raise ValueError(f"{self.path}: expected {want} next, got {got}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        self.file.write(flat.view(torch.uint8).numpy().tobytes())
        self.next += 1

    def close(self) -> Path:
        """Check every listed tensor came and rename the file into place."""
        self.file.close()
        if self.next != len(self.order):
            self.tmp.unlink(missing_ok=True)
            raise ValueError(
                f"{self.path}: {len(self.order) - self.next} listed tensors were never written, "
                f"the first {self.order[self.next][0]}"
            )
        os.replace(self.tmp, self.path)
        return self.path


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def replace_folder(out: str | Path, allowed: set[str], kind: str = "an inference folder") -> Path:
    """A fresh temp folder beside `out` for writing it; `out` may exist only when it holds
    nothing but `allowed` names (the files of an earlier write of the same `kind`)."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= allowed):
        raise FileExistsError(
            f"{out} exists and is not {kind} (expected nothing but {sorted(allowed)} inside "
            "it): writing replaces its --out folder, so pick a new or empty one"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_folder(tmp: Path, out: str | Path) -> Path:
    """Move the finished temp folder `tmp` into place at `out` (replacing it)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def inference_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of `model`'s state dict but the criterion's, each with its own storage
    (tied weights share storage; safetensors stores each tensor once)."""
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("criterion")
    }
    seen: dict[int, str] = {}
    for k in list(state):
        ptr = state[k].data_ptr()
        if ptr in seen:
            state[k] = state[k].clone()
        seen[ptr] = k
    return state


def save_inference_folder(model: torch.nn.Module, config_yaml: str, out: str | Path) -> Path:
    """Write every weight of `model` but the criterion's, and the config text, as an inference
    folder `out` (atomically: a temp folder renamed into place, replacing an existing one)."""
    tmp = replace_folder(out, {MODEL_FILE, CONFIG_FILE})
    save_file(inference_state(model), str(tmp / MODEL_FILE), metadata={"format": "tpo-inference-1"})
    (tmp / CONFIG_FILE).write_text(config_yaml)
    return commit_folder(tmp, out)
