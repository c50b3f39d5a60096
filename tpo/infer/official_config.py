"""The tpo model config of an official VideoChat-TPO checkpoint: from its `config.json`, its
tensors' shapes and optional side configs; what none of them spells out is the release's.

Release defaults: Mistral-7B-Instruct v0.3's architecture resized to the tensors' 32,007 rows,
a bert-base Q-Former (+ the `[DEC]` row), SAM2.0 Hiera-L (`sam2_hiera_l.yaml`), CG-DETR's
release config (sizes read off its tensors; the rest from the release or a side file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from tpo.heads import cgdetr_layout

Shapes = Mapping[str, tuple[int, ...]]

# Mistral-7B-Instruct-v0.3's config.json (the official `pretrained_llm_path`)
RELEASE_LLM: dict[str, Any] = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# bert-base-uncased as the official build_qformer configures it
RELEASE_QFORMER: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "cross_attention_freq": 2,
    "layer_norm_eps": 1e-12,
}
# CG-DETR's release config (its `CGDETRConfig` / `cg_criterion` as built); a side file
# (`--cgdetr-config`: these names, or run.json's `cg_detr_config_as_built`) overrides it
RELEASE_CGDETR: dict[str, Any] = {
    "hidden_dim": 256,
    "nheads": 8,
    "dim_feedforward": 1024,
    "enc_layers": 3,
    "dec_layers": 3,
    "t2v_layers": 2,
    "moment_layers": 1,
    "dummy_layers": 2,
    "sent_layers": 1,
    "num_queries": 10,
    "num_dummies": 45,
    "total_prompts": 10,
    "t_feat_dim": 4096,
    "v_feat_dim": 770,
    "max_q_l": 100,
    "num_prompts": 1,
    "n_input_proj": 2,
    "input_dropout": 0.5,
    "dropout": 0.1,
    "use_txt_pos": False,
    "ctx_mode": "video_tef",
    "clip_length": 1,
    "span_loss_coef": 10,
    "giou_loss_coef": 1,
    "label_loss_coef": 4,
    "eos_coef": 0.1,
    "lw_saliency": 4,
    "saliency_margin": 0.2,
    "lw_wattn": 1.0,
    "lw_ms_align": 1.0,
    "lw_distill": 1.0,
    "aux_loss": True,
}
RELEASE_SAM2 = "configs/sam2/sam2_hiera_l.yaml"  # inside the sam2 package (v2.0 Hiera-L)
# the HF config fields that describe the file, not the architecture
_NOT_ARCH = {"architectures", "torch_dtype", "transformers_version", "_name_or_path", "use_cache"}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The official inference modes, by config key. A key is written only when the config schema
# has the field; until then it is listed in the report as not switched on. THE ONE PLACE to
# change when the modes land under other names.
OFFICIAL_MODES: dict[str, str] = {
    "model.llm.prompt_format": "videochat-tpo",
    "model.llm.head_query": "official",
    "model.heads.region.output": "raw",
    "model.heads.mask.propagation": "embedding",
    "model.heads.mask.track": "video",
    "model.vision.resize": "float",
}


def _shape(shapes: Shapes, name: str, where: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(f"{where}: the checkpoint lacks {name}, which the layout needs")
    return tuple(shapes[name])


def _count(shapes: Shapes, pattern: str) -> int:
    found = {m.group(1) for k in shapes if (m := re.match(pattern, k))}
    return len(found)


def _check(where: str, key: str, given: Any, built: Any) -> None:
    if given is not None and given != built:
        raise ValueError(f"{where}: {key} is {given}, but the checkpoint's tensors give {built}")


def vision_config(official: Mapping[str, Any], shapes: Shapes, where: str) -> dict[str, Any]:
    """model.vision from config.json's `vision_encoder` and the block count."""
    venc = official.get("model_config", {}).get("vision_encoder", {})
    width = _shape(shapes, "vision_encoder.encoder.patch_embed.proj.weight", where)[0]
    _check(where, "vision_encoder.encoder_embed_dim", venc.get("encoder_embed_dim"), width)
    blocks = _count(shapes, r"vision_encoder\.encoder\.blocks\.(\d+)\.")
    return_index = int(venc.get("return_index", -2))
    depth = int(venc.get("encoder_depth", blocks - return_index - 1))
    if depth + return_index + 1 != blocks:
        raise ValueError(
            f"{where}: vision_encoder.encoder_depth {depth} with return_index {return_index} "
            f"builds {depth + return_index + 1} blocks, the checkpoint holds {blocks}"
        )
    return {
        "img_size": int(venc.get("img_size", 224)),
        "patch_size": int(venc.get("patch_size", 16)),
        "width": width,
        "depth": depth,
        "num_heads": int(venc.get("encoder_num_heads", 16)),
        "tubelet": int(venc.get("tubelet_size", 1)),
        "pos_frames": 4,  # the official table is built for 4 frames, interpolated in time
        "return_index": return_index,
        "add_ln": bool(venc.get("vit_add_ln", True)),
        "ln_eps": 1e-12,
    }


def connector_config(
    official: Mapping[str, Any], shapes: Shapes, side: Mapping[str, Any] | None, where: str
) -> dict[str, Any]:
    """model.connector from the Q-Former tensors, a BertConfig side file, else bert-base."""
    bridge = official.get("model_config", {}).get("bridge", {})
    q = {**RELEASE_QFORMER, **(side or {})}
    rows, hidden = _shape(shapes, "qformer.bert.embeddings.word_embeddings.weight", where)
    layers = _count(shapes, r"qformer\.bert\.encoder\.layer\.(\d+)\.")
    ffn = _shape(shapes, "qformer.bert.encoder.layer.0.intermediate_query.dense.weight", where)[0]
    if side is not None:
        _check(where, "qformer config vocab_size", side.get("vocab_size"), rows)
        _check(where, "qformer config hidden_size", side.get("hidden_size"), hidden)
        _check(where, "qformer config num_hidden_layers", side.get("num_hidden_layers"), layers)
        _check(where, "qformer config intermediate_size", side.get("intermediate_size"), ffn)
    return {
        "hidden": hidden,
        "num_layers": layers,
        "num_heads": int(q["num_attention_heads"]),
        "intermediate": ffn,
        "cross_attention_freq": int(q["cross_attention_freq"]),
        "num_query": _shape(shapes, "query_tokens", where)[1],
        "extra_query": _shape(shapes, "extra_query_tokens", where)[1],
        "vocab_size": rows,  # the built rows, [DEC] included
        "max_position": _shape(shapes, "qformer.bert.embeddings.position_embeddings.weight", where)[
            0
        ],
        "dropout": float(bridge.get("qformer_hidden_dropout_prob", 0.1)),
        "attn_dropout": float(bridge.get("qformer_attention_probs_dropout_prob", 0.1)),
    }


def llm_config(
    official: Mapping[str, Any], shapes: Shapes, side: Mapping[str, Any] | None, where: str
) -> dict[str, Any]:
    """model.llm (arch, LoRA) from the LLM tensors, a MistralConfig side file, else the
    release's Mistral-7B v0.3; the vocabulary is the tensors' row count."""
    llm = official.get("model_config", {}).get("llm", {})
    peft = any(k.startswith("lm.base_model.model.") for k in shapes)
    root = "lm.base_model.model." if peft else "lm."
    embed = f"{root}model.embed_tokens.weight"
    rows, width = _shape(shapes, embed, where)
    arch = {k: v for k, v in {**RELEASE_LLM, **(side or {})}.items() if k not in _NOT_ARCH}
    arch.setdefault("model_type", "mistral")
    if side is not None:
        _check(where, "llm config hidden_size", side.get("hidden_size"), width)
    arch["hidden_size"] = width
    arch["vocab_size"] = rows  # the official resizes v0.3's 32,768 rows to the tokenizer's
    arch["num_hidden_layers"] = _count(shapes, rf"{re.escape(root)}model\.layers\.(\d+)\.")
    if side is None:  # widths a side file would give: read them off the tensors
        base = ".base_layer" if peft else ""
        layer = f"{root}model.layers.0."
        arch["intermediate_size"] = _shape(shapes, f"{layer}mlp.gate_proj{base}.weight", where)[0]
        head_dim = width // int(arch["num_attention_heads"])
        kv_rows = _shape(shapes, f"{layer}self_attn.k_proj{base}.weight", where)[0]
        arch["num_key_value_heads"] = kv_rows // head_dim
    targets = [t for t in (*LORA_TARGETS, "lm_head") if any(f".{t}.lora_A." in k for k in shapes)]
    lora_a = next((k for k in shapes if ".lora_A." in k), None)
    lora = {
        "enabled": peft,
        "r": int(shapes[lora_a][0]) if lora_a else int(llm.get("lora_r", 16)),
        "alpha": int(llm.get("lora_alpha", 32)),
        "dropout": float(llm.get("lora_dropout", 0.1)),
        "targets": targets or list(LORA_TARGETS),
    }
    return {"path": None, "arch": arch, "template": "mistral", "lora": lora}


def cgdetr_side_fields(side: Mapping[str, Any] | None) -> dict[str, Any]:
    """A CG-DETR side file's fields (its `cg_detr_config_as_built` when it is a run.json)."""
    side = dict(side or {})
    return dict(side.get("cg_detr_config_as_built", side))


def cgdetr_fields(side: Mapping[str, Any] | None) -> dict[str, Any]:
    """The release's CG-DETR fields updated by a side file's."""
    return {**RELEASE_CGDETR, **cgdetr_side_fields(side)}


def cgdetr_config(shapes: Shapes, side: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """model.heads.temporal (kind cgdetr) from the `cg_model.*` tensors and the release's
    fields (`side` overriding them); a side size the tensors contradict is an error. Features
    are per-call or npz files (folders unset): 1 per `clip_length` s of the width the
    input projection takes (less the 2-d TEF); queries of the width of its text projection."""
    c = cgdetr_fields(side)
    p = cgdetr_layout.OFFICIAL_PREFIX
    hidden = _shape(shapes, f"{p}class_embed.weight", where)[1]
    v_dim = _shape(shapes, f"{p}input_vid_proj.0.net.1.weight", where)[1]
    t_dim = _shape(shapes, f"{p}input_txt_proj.0.net.1.weight", where)[1]
    built = {
        "hidden_dim": hidden,
        "dim_feedforward": _shape(shapes, f"{p}transformer.encoder.layers.0.linear1.weight", where)[
            0
        ],
        "v_feat_dim": v_dim,
        "t_feat_dim": t_dim,
        "num_queries": _shape(shapes, f"{p}query_embed.weight", where)[0],
        "num_dummies": _shape(shapes, f"{p}dummy_rep_token", where)[0],
        "total_prompts": _shape(shapes, f"{p}global_rep_token", where)[0],
        "max_q_l": _shape(shapes, f"{p}txt_position_embed.position_embeddings.weight", where)[0],
    }
    layers = {
        "enc_layers": r"transformer\.encoder\.layers\.(\d+)\.",
        "dec_layers": r"transformer\.decoder\.layers\.(\d+)\.",
        "t2v_layers": r"transformer\.t2v_encoder\.layers\.(\d+)\.",
        "moment_layers": r"transformer\.mcls_encoder\.layers\.(\d+)\.",
        "dummy_layers": r"txtproj_encoder\.layers\.(\d+)\.",
        "sent_layers": r"scls_encoder\.layers\.(\d+)\.",
        "n_input_proj": r"input_vid_proj\.(\d+)\.",
    }
    built.update({k: _count(shapes, re.escape(p) + v) for k, v in layers.items()})
    given = cgdetr_side_fields(side)
    for key, value in built.items():
        _check(where, f"cgdetr config {key}", given.get(key), value)
    tef = "tef" in str(c["ctx_mode"])
    clip = float(c["clip_length"])
    return {
        "kind": "cgdetr",
        "cgdetr": {
            "hidden": hidden,
            "num_heads": int(c["nheads"]),
            "ffn": built["dim_feedforward"],
            **{k: built[k] for k in layers if k != "n_input_proj"},
            "num_queries": built["num_queries"],
            "num_dummies": built["num_dummies"],
            "total_prompts": built["total_prompts"],
            "num_prompts": int(c["num_prompts"]),
            "max_q_l": built["max_q_l"],
            "n_input_proj": built["n_input_proj"],
            "input_dropout": float(c["input_dropout"]),
            "dropout": float(c["dropout"]),
            "use_txt_pos": bool(c["use_txt_pos"]),
            "use_tef": tef,
            "v_feat_dim": v_dim,
            "t_feat_dim": t_dim,
            "video_features": "npz",
            "video_feature_dir": None,
            "video_feature_fps": 1.0 / clip,
            "video_feature_dim": v_dim - (2 if tef else 0),
            "query_features": "npz",
            "query_feature_dir": None,
            "span_l1": float(c["span_loss_coef"]),
            "span_giou": float(c["giou_loss_coef"]),
            "fg_ce": float(c["label_loss_coef"]),
            "eos_coef": float(c["eos_coef"]),
            "saliency": float(c["lw_saliency"]),
            "saliency_margin": float(c["saliency_margin"]),
            "wattn": float(c["lw_wattn"]),
            "ms_align": float(c["lw_ms_align"]),
            "distill": float(c["lw_distill"]),
            "orthogonal": float(c["lw_distill"]),  # the release weights it by lw_distill
            "aux_loss": bool(c["aux_loss"]),
            "clip_length": clip,
        },
    }


def heads_config(
    shapes: Shapes, sam2_image_size: int, where: str, cgdetr_side: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """model.heads: CG-DETR (when the checkpoint holds `cg_model.*`), the region MLP and the
    SAM2 mask head, from their tensors."""
    region_hidden = _shape(shapes, "loc_decoder.0.weight", where)[0]
    prompt_hidden = _shape(shapes, "track_embed.layers.0.weight", where)[0]
    prompt_out = _shape(shapes, "track_embed.layers.1.weight", where)[0]
    if prompt_out % 256:
        raise ValueError(f"{where}: track_embed.layers.1 gives {prompt_out}, not k x 256")
    has_cgdetr = any(k.startswith(cgdetr_layout.OFFICIAL_PREFIX) for k in shapes)
    return {
        "temporal": cgdetr_config(shapes, cgdetr_side, where) if has_cgdetr else None,
        "region": {"hidden": region_hidden},
        "mask": {
            "sam2_config": "./sam2.yaml",
            "checkpoint": None,
            "image_size": sam2_image_size,
            "prompt_tokens": prompt_out // 256,
            "prompt_hidden": prompt_hidden,
        },
    }


def model_config(
    official: Mapping[str, Any],
    shapes: Shapes,
    *,
    llm_side: Mapping[str, Any] | None,
    qformer_side: Mapping[str, Any] | None,
    sam2_image_size: int,
    where: str,
    cgdetr_side: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `model` mapping of the converted config (`llm.tokenizer` is set by the writer)."""
    return {
        "vision": vision_config(official, shapes, where),
        "connector": connector_config(official, shapes, qformer_side, where),
        "llm": llm_config(official, shapes, llm_side, where),
        "tokens": {"box_hidden": _shape(shapes, "loc_encoder.0.weight", where)[0]},
        "heads": heads_config(shapes, sam2_image_size, where, cgdetr_side),
    }


def sam2_image_size(yaml_file: Path) -> int:
    """`model.image_size` of a SAM2 Hydra YAML (1024 when it does not say)."""
    node = OmegaConf.load(yaml_file)
    size = OmegaConf.select(node, "model.image_size", default=1024)
    return int(size)
