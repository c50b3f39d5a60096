"""UMT-style video ViT (VideoChat2 / VideoChat-TPO vision encoder).

Patch 16 `Conv3d` tubelet embedding, fixed sinusoid position embedding, BEiT-style blocks
(fused qkv without bias + learnable q_bias / v_bias, no k bias), features after block
`return_index` followed by an extra LayerNorm (eps 1e-12), no final norm.

Position embedding, as the official UMT encoder builds it: a 1-d sinusoid table over the
flattened `pos_frames * p` token positions (frame-major), linearly interpolated along time
(`F.interpolate(mode="linear")`, align_corners False) to the input's temporal token count;
single-frame input (images) uses the 1-d table over the `p` spatial positions. It is computed,
never stored, so it is not in the state dict.

Only the `depth + return_index + 1` blocks that run are built: the official checkpoint holds
blocks 0..22 of the 24-block ViT-L (290.5M parameters with the patch embedding).

Parameter names against the official checkpoint (`videochat-tpo` safetensors):
    vision_encoder.encoder.patch_embed.proj.*   -> patch_embed.proj.*
    vision_encoder.encoder.blocks.N.*           -> blocks.N.*  (norm1, attn.qkv.weight,
                                                   attn.q_bias, attn.v_bias, attn.proj.*, norm2,
                                                   mlp.fc1.*, mlp.fc2.*: identical)
    vision_layernorm.*  (top level there)       -> vision_layernorm.*
`load_vision_checkpoint` applies this mapping when it sees official names.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.models.beit import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tpo.config.model import VisionConfig

log = logging.getLogger(__name__)

OFFICIAL_PREFIX = "vision_encoder.encoder."
OFFICIAL_LN_PREFIX = "vision_layernorm."


@dataclass
class VisionOutput:
    """Encoder output.

    patches: [b, t*p, d_v] features of every (tubelet) frame's patches, t = f // tubelet.
    frames: [b, t, d_v] mean over each frame's patches.
    """

    patches: Tensor
    frames: Tensor

    def frame_patches(self, rows: Tensor, frames: Tensor) -> Tensor:
        """Patches `[m, p, d_v]` of (tubelet) frame `frames[k]` of batch row `rows[k]` (both `[m]`)."""
        b, t = self.frames.shape[:2]
        per_frame = self.patches.view(b, t, -1, self.patches.shape[-1])  # [b, t, p, d_v]
        return per_frame[rows.to(per_frame.device), frames.to(per_frame.device)]


def sinusoid_table(n: int, d: int) -> Tensor:
    """[n, d] float32: angle pos / 10000^(2*(j//2)/d), sin on even j, cos on odd j."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(d)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / d)
    return torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()


@functools.lru_cache(maxsize=32)
def position_embedding(
    t: int, pos_frames: int, p: int, d: int, device: torch.device | None = None
) -> Tensor:
    """[t*p, d] float32 position embedding of `t` temporal tokens of `p` patches.

    t == 1: the spatial table over p positions (image path); otherwise the table built for
    `pos_frames` frames, linearly interpolated in time to t (exact when t == pos_frames).
    Cached per shape and device; treat the result as read-only.
    """
    if t == 1:
        return sinusoid_table(p, d).to(device)
    table = sinusoid_table(pos_frames * p, d).view(pos_frames, p, d)
    if t != pos_frames:
        # [T0, p, d] -> [p, d, T0]: interpolate each (patch, channel) series along time
        series = table.permute(1, 2, 0)
        table = F.interpolate(series, size=t, mode="linear", align_corners=False).permute(2, 0, 1)
    return table.reshape(t * p, d).contiguous().to(device)


class PatchEmbed3D(nn.Module):
    """Tubelet patch embedding: [b, 3, f, H, W] -> [b, t, p, d] with a strided Conv3d."""

    def __init__(self, patch_size: int, tubelet: int, width: int) -> None:
        super().__init__()
        kernel = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(3, width, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        """x [b, 3, f, H, W] -> [b, t, p, d]."""
        return self.proj(x).flatten(3).permute(0, 2, 3, 1)


class VisionEncoder(nn.Module):
    """UMT-style ViT: frames [b, f, 3, H, W] (ImageNet-normalised) -> VisionOutput."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width
        self.grid = cfg.img_size // cfg.patch_size
        self.num_patches = self.grid**2
        n_blocks = (
            cfg.return_index + 1 if cfg.return_index >= 0 else cfg.depth + cfg.return_index + 1
        )
        # stochastic-depth rates rise linearly over the full depth (official rule)
        drop_path = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.tubelet, cfg.width)
        # timm's BEiT block is exactly the UMT block: fused bias-free qkv Linear, q_bias and v_bias
        # parameters, k_bias a zero non-persistent buffer, SDPA, DropPath, mlp.fc1/fc2.
        self.blocks = nn.ModuleList(
            Block(
                cfg.width,
                cfg.num_heads,
                qkv_bias=True,
                mlp_ratio=cfg.mlp_ratio,
                drop_path=drop_path[i],
                norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
            )
            for i in range(n_blocks)
        )
        self.vision_layernorm = (
            nn.LayerNorm(cfg.width, eps=cfg.ln_eps) if cfg.add_ln else nn.Identity()
        )
        self.apply(_init_weights)

    def forward(self, frames: Tensor) -> VisionOutput:
        """frames [b, f, 3, H, W] -> patches [b, t*p, d_v], frames [b, t, d_v]."""
        cfg = self.cfg
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"vision: expected frames [b, f, 3, H, W], got {tuple(frames.shape)}")
        b, f, _, h, w = frames.shape
        if (h, w) != (cfg.img_size, cfg.img_size):
            raise ValueError(f"vision: frames are {h}x{w}, model.vision.img_size is {cfg.img_size}")
        if f == 1 and cfg.tubelet > 1:  # an image fills one tubelet
            frames = frames.expand(-1, cfg.tubelet, -1, -1, -1)
        elif f % cfg.tubelet:
            raise ValueError(f"vision: {f} frames is not a multiple of tubelet {cfg.tubelet}")
        weight = self.patch_embed.proj.weight
        x = self.patch_embed(frames.transpose(1, 2).to(weight.dtype))  # [b, t, p, d]
        t, p = x.shape[1], x.shape[2]
        pos = position_embedding(t, cfg.pos_frames, p, cfg.width, x.device)
        x = x.flatten(1, 2) + pos.to(x.dtype)  # [b, t*p, d]
        ckpt = cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        x = self.vision_layernorm(x)
        return VisionOutput(patches=x, frames=x.view(b, t, p, -1).mean(2))

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"vision": every parameter}."""
        return {"vision": list(self.parameters())}


def _init_weights(m: nn.Module) -> None:
    """Official UMT init: xavier-uniform Linear weights, zero biases; norms at 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _vision_key(key: str) -> str | None:
    """Official checkpoint name -> ours, or None for keys of other parts."""
    if key.startswith(OFFICIAL_PREFIX):
        return key[len(OFFICIAL_PREFIX) :]
    if key.startswith(OFFICIAL_LN_PREFIX):
        return key
    return None


def read_safetensors(
    path: str | Path, keep: Callable[[str], bool] = lambda key: True
) -> dict[str, Tensor]:
    """Tensors whose name passes `keep` from a .safetensors file or a sharded
    `.safetensors.index.json` (only the shards holding kept names are opened)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if keep(key):
                shards.setdefault(shard, []).append(key)
    else:
        shards = {path.name: None}
    out: dict[str, Tensor] = {}
    for shard, keys in shards.items():
        with safe_open(str(path.parent / shard), framework="pt") as fh:
            for key in keys if keys is not None else fh.keys():
                if keep(key):
                    out[key] = fh.get_tensor(key)
    return out


def load_vision_checkpoint(encoder: VisionEncoder, path: str | Path) -> None:
    """Load encoder weights (our names, or the official `vision_encoder.encoder.*` +
    `vision_layernorm.*` names of a whole-model checkpoint) with strict key checking."""
    state = read_safetensors(path)
    if any(k.startswith(OFFICIAL_PREFIX) for k in state):
        state = {new: v for k, v in state.items() if (new := _vision_key(k)) is not None}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: vision checkpoint keys do not match the encoder; "
            f"missing {result.missing_keys[:8]} ({len(result.missing_keys)}), "
            f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
        )
    log.info("vision encoder: loaded %d tensors from %s", len(state), path)


def build_vision(cfg: VisionConfig) -> VisionEncoder:
    """The encoder of `cfg`, with `cfg.checkpoint` loaded when set (skipped on the meta device)."""
    encoder = VisionEncoder(cfg)
    if cfg.checkpoint is not None and not encoder.patch_embed.proj.weight.is_meta:
        load_vision_checkpoint(encoder, cfg.checkpoint)
    return encoder


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
