"""The shapes of the 2,594 tensors of the full-size VideoChat-TPO release, from the names of its
index (`shared/reference/videochat-tpo.safetensors.index.json`) and the release's sizes, as
the measured weight map lists them: ViT-L 1024 (23 blocks), bert-base Q-Former (30,523 rows,
cross-attention key/value from 1024), Mistral-7B (32,007 rows, LoRA r 16), the MLPs of the
heads. SAM2's come from sam2's own v2.0 Hiera-L config built on the meta device (the official
vendored SAM2 has the same names and shapes); CG-DETR's (the same 285 names as the reduced
reference) scale the reduced shapes to the release's sizes: hidden 32 -> 256 (attention
in-projections 96 -> 768), ffn 64 -> 1024, text features 64 -> 4096, clip features 34 -> 770."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

V, Q, L, FFN, KV, R, VOCAB = 1024, 768, 4096, 14336, 1024, 16, 32007
_LINEAR = {  # LLM projections: (out, in)
    "q_proj": (L, L),
    "k_proj": (KV, L),
    "v_proj": (KV, L),
    "o_proj": (L, L),
    "gate_proj": (FFN, L),
    "up_proj": (FFN, L),
    "down_proj": (L, FFN),
    "lm_head": (VOCAB, L),
}
_FIXED = {
    "vision_encoder.encoder.patch_embed.proj.weight": (V, 3, 1, 16, 16),
    "vision_encoder.encoder.patch_embed.proj.bias": (V,),
    "vision_layernorm.weight": (V,),
    "vision_layernorm.bias": (V,),
    "qformer.bert.embeddings.word_embeddings.weight": (30523, Q),
    "qformer.bert.embeddings.position_embeddings.weight": (512, Q),
    "qformer.bert.embeddings.LayerNorm.weight": (Q,),
    "qformer.bert.embeddings.LayerNorm.bias": (Q,),
    "qformer.bert.embeddings.position_ids": (1, 512),
    "query_tokens": (1, 32, Q),
    "extra_query_tokens": (1, 64, Q),
    "project_up.weight": (L, Q),
    "project_up.bias": (L,),
    "project_down.weight": (Q, L),
    "project_down.bias": (Q,),
    "merge_proj.weight": (L, 3072),
    "merge_proj.bias": (L,),
    "lm.base_model.model.model.embed_tokens.weight": (VOCAB, L),
    "lm.base_model.model.model.norm.weight": (L,),
    "temporal_token": (1, 1, L),
    "box_token": (1, 1, L),
    "track_token": (1, 1, L),
    "loc_encoder.0.weight": (2048, 4),
    "loc_encoder.0.bias": (2048,),
    "loc_encoder.2.weight": (L, 2048),
    "loc_encoder.2.bias": (L,),
    "loc_decoder.0.weight": (2048, L),
    "loc_decoder.0.bias": (2048,),
    "loc_decoder.2.weight": (4, 2048),
    "loc_decoder.2.bias": (4,),
}
_VIT_BLOCK = {
    "norm1.weight": (V,),
    "norm1.bias": (V,),
    "norm2.weight": (V,),
    "norm2.bias": (V,),
    "attn.qkv.weight": (3 * V, V),
    "attn.q_bias": (V,),
    "attn.v_bias": (V,),
    "attn.proj.weight": (V, V),
    "attn.proj.bias": (V,),
    "mlp.fc1.weight": (4 * V, V),
    "mlp.fc1.bias": (4 * V,),
    "mlp.fc2.weight": (V, 4 * V),
    "mlp.fc2.bias": (V,),
}
_MLP_OUT = {"track_embed": 768, "track_embed_decode2": 4, "temporal_embed": 2, "action_embed": 1}


def _qformer(rest: str) -> tuple[int, ...]:
    part, _, leaf = rest.rpartition(".")
    if "LayerNorm" in part:
        return (Q,)
    if part.startswith("crossattention.self.") and part.endswith(("key", "value")):
        return (Q, V) if leaf == "weight" else (Q,)
    if part.startswith(("intermediate", "intermediate_query")):
        return (3072, Q) if leaf == "weight" else (3072,)
    if part in ("output.dense", "output_query.dense"):
        return (Q, 3072) if leaf == "weight" else (Q,)
    return (Q, Q) if leaf == "weight" else (Q,)


def _cgdetr(name: str, reduced: tuple[int, ...]) -> tuple[int, ...]:
    text = "txt_proj" in name  # input_txt_proj.*, txt_proj_linear.*: 64 is the text width
    sizes = {32: 256, 96: 768, 34: 770, 64: L if text else 1024}
    return tuple(sizes.get(d, d) for d in reduced)


def _llm(name: str) -> tuple[int, ...]:
    if name.endswith("layernorm.weight"):
        return (L,)
    proj = next(p for p in _LINEAR if f".{p}." in name)
    out, inp = _LINEAR[proj]
    if ".lora_A." in name:
        return (R, inp)
    if ".lora_B." in name:
        return (out, R)
    return (out, inp)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build on the meta device; `torch.linspace` stays on the CPU (Hiera reads its
    drop-path rates with `.item()`, which a meta tensor cannot give)."""
    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):
        kwargs.setdefault("device", "cpu")
        return linspace(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, torch.device("meta"):
        mp.setattr(torch, "linspace", cpu_linspace)
        yield


def sam2_shapes() -> dict[str, tuple[int, ...]]:
    """`sam.` + every SAM2 v2.0 Hiera-L tensor, built on the meta device."""
    import sam2
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    folder = Path(sam2.__file__).parent / "configs" / "sam2"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base="1.2"):
        cfg = compose(config_name="sam2_hiera_l.yaml")
    GlobalHydra.instance().clear()
    with meta_device():
        model = instantiate(cfg.model, _recursive_=True)
    return {f"sam.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def release_specs(
    names: list[str], reduced: dict[str, tuple[int, ...]]
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape) of the release: bf16 throughout, `position_ids` int64."""
    sam = sam2_shapes()
    out = {}
    for name in names:
        if name in _FIXED:
            shape = _FIXED[name]
        elif m := re.match(r"vision_encoder\.encoder\.blocks\.\d+\.(.+)", name):
            shape = _VIT_BLOCK[m.group(1)]
        elif m := re.match(r"qformer\.bert\.encoder\.layer\.\d+\.(.+)", name):
            shape = _qformer(m.group(1))
        elif name.startswith("lm."):
            shape = _llm(name)
        elif m := re.match(
            r"(track_embed|track_embed_decode2|temporal_embed|action_embed)"
            r"\.layers\.(\d)\.(weight|bias)",
            name,
        ):
            width = L if m.group(2) == "0" else _MLP_OUT[m.group(1)]
            shape = (width, L) if m.group(3) == "weight" else (width,)
        elif name.startswith("sam."):
            shape = sam[name]
        elif name.startswith(("cg_model.", "cg_criterion.")):
            shape = _cgdetr(name, reduced[name])
        else:
            raise KeyError(f"{name}: no release shape rule")
        dtype = torch.int64 if name.endswith("position_ids") else torch.bfloat16
        out[name] = (dtype, tuple(shape))
    return out
