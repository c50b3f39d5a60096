"""The release's CG-DETR tensor names (`cg_model.*`, 285) and their names in `CGDETRNet`.

One table serves both directions (`tpo convert` and `tpo export --format videochat-tpo`).
Placeholders: `{i}` a layer number (equal on both sides), `{m}` a layer of a release MLP
(`layers.{m}`), which is entry 3m of torchvision's `MLP` (Linear, ReLU, Dropout per layer),
`{p}` the parameter name. `cg_criterion.empty_weight` ([1, eos_coef]) is no tensor in tpo: the
converter checks it and sets `heads.temporal.cgdetr.eos_coef` from it.
"""

from __future__ import annotations

import re

OFFICIAL_PREFIX = "cg_model."
CRITERION_WEIGHT = "cg_criterion.empty_weight"

_ENCODER = (
    ("self_attn.in_proj_{p}", "self_attn.in_proj_{p}"),
    ("self_attn.out_proj.{p}", "self_attn.out_proj.{p}"),
    ("norm1.{p}", "norm.{p}"),
    ("linear1.{p}", "ffn.linear1.{p}"),
    ("activation.{p}", "ffn.activation.{p}"),
    ("linear2.{p}", "ffn.linear2.{p}"),
    ("norm2.{p}", "ffn.norm.{p}"),
)
_T2V = (
    ("self_attn.out_proj.{p}", "out_proj.{p}"),
    ("norm1.{p}", "norm1.{p}"),
    ("linear1.{p}", "linear1.{p}"),
    ("activation.{p}", "activation.{p}"),
    ("linear2.{p}", "linear2.{p}"),
    ("norm2.{p}", "norm2.{p}"),
)
_DECODER_LAYER = (
    ("sa_qcontent_proj.{p}", "sa_q.{p}"),
    ("sa_qpos_proj.{p}", "sa_q_pos.{p}"),
    ("sa_kcontent_proj.{p}", "sa_k.{p}"),
    ("sa_kpos_proj.{p}", "sa_k_pos.{p}"),
    ("sa_v_proj.{p}", "sa_v.{p}"),
    ("self_attn.out_proj.{p}", "sa_out.{p}"),
    ("norm1.{p}", "sa_norm.{p}"),
    ("ca_qcontent_proj.{p}", "ca_q.{p}"),
    ("ca_qpos_proj.{p}", "ca_q_pos.{p}"),
    ("ca_kcontent_proj.{p}", "ca_k.{p}"),
    ("ca_kpos_proj.{p}", "ca_k_pos.{p}"),
    ("ca_v_proj.{p}", "ca_v.{p}"),
    ("ca_qpos_sine_proj.{p}", "ca_q_sine.{p}"),
    ("cross_attn.out_proj.{p}", "ca_out.{p}"),
    ("norm2.{p}", "ca_norm.{p}"),
    ("linear1.{p}", "ffn.linear1.{p}"),
    ("activation.{p}", "ffn.activation.{p}"),
    ("linear2.{p}", "ffn.linear2.{p}"),
    ("norm3.{p}", "ffn.norm.{p}"),
)


def _nested(official: str, tpo: str, inner) -> list[tuple[str, str]]:
    return [(official + a, tpo + b) for a, b in inner]


RULES: tuple[tuple[str, str], ...] = (
    ("input_txt_proj.{i}.LayerNorm.{p}", "txt_proj.{i}.norm.{p}"),
    ("input_txt_proj.{i}.net.1.{p}", "txt_proj.{i}.linear.{p}"),
    ("input_vid_proj.{i}.LayerNorm.{p}", "vid_proj.{i}.norm.{p}"),
    ("input_vid_proj.{i}.net.1.{p}", "vid_proj.{i}.linear.{p}"),
    ("txt_proj_linear.LayerNorm.{p}", "spare_txt_proj.0.norm.{p}"),
    ("txt_proj_linear.net.1.{p}", "spare_txt_proj.0.linear.{p}"),
    ("txt_position_embed.position_embeddings.{p}", "txt_pos.table.{p}"),
    ("txt_position_embed.LayerNorm.{p}", "txt_pos.norm.{p}"),
    ("token_type_embeddings.{p}", "type_embed.{p}"),
    ("query_embed.{p}", "query_anchors.{p}"),
    ("dummy_rep_token", "dummy_tokens"),
    ("dummy_rep_pos", "dummy_pos"),
    ("global_rep_token", "prompt_bank"),
    ("global_rep_pos", "global_pos"),
    ("moment_rep_token", "moment_token"),
    ("moment_rep_pos", "moment_pos"),
    ("sent_rep_token", "sentence_token"),
    ("sent_rep_pos", "sentence_pos"),
    ("span_embed.layers.{m}.{p}", "span_embed.{m}.{p}"),
    ("class_embed.{p}", "class_embed.{p}"),
    ("saliency_proj1.{p}", "saliency_clip.{p}"),
    ("saliency_proj2.{p}", "saliency_global.{p}"),
    *_nested("txtproj_encoder.layers.{i}.", "dummy_encoder.layers.{i}.", _ENCODER),
    *_nested("scls_encoder.layers.{i}.", "sentence_encoder.layers.{i}.", _ENCODER),
    *_nested("transformer.mcls_encoder.layers.{i}.", "moment_encoder.layers.{i}.", _ENCODER),
    *_nested("transformer.encoder.layers.{i}.", "encoder.layers.{i}.", _ENCODER),
    *_nested("transformer.t2v_encoder.layers.{i}.", "t2v.{i}.", _T2V),
    *_nested("transformer.decoder.layers.{i}.", "decoder.layers.{i}.", _DECODER_LAYER),
    ("transformer.decoder.norm.{p}", "decoder.norm.{p}"),
    ("transformer.decoder.query_scale.layers.{m}.{p}", "decoder.query_scale.{m}.{p}"),
    ("transformer.decoder.ref_point_head.layers.{m}.{p}", "decoder.ref_point_head.{m}.{p}"),
    ("transformer.decoder.ref_anchor_head.layers.{m}.{p}", "decoder.ref_anchor_head.{m}.{p}"),
    ("transformer.decoder.bbox_embed.layers.{m}.{p}", "decoder.refine.{m}.{p}"),
)

_GROUPS = {"i": r"(?P<i>\d+)", "m": r"(?P<m>\d+)", "p": r"(?P<p>[a-z_]+)"}


def _regex(pattern: str) -> re.Pattern[str]:
    out = re.escape(pattern)
    for key, group in _GROUPS.items():
        out = out.replace(re.escape("{" + key + "}"), group)
    return re.compile(out + "$")


_TO_TPO = [(_regex(a), b) for a, b in RULES]
_TO_OFFICIAL = [(_regex(b), a) for a, b in RULES]


def _apply(rules, name: str, mlp_scale) -> str | None:
    for regex, template in rules:
        found = regex.match(name)
        if found:
            parts = found.groupdict()
            if "m" in parts:
                parts["m"] = str(mlp_scale(int(parts["m"])))
            return template.format(**parts)
    return None


def cgdetr_to_tpo(name: str) -> str:
    """`CGDETRNet` parameter name of release tensor `name` (`cg_model.` stripped or not);
    KeyError naming it when the release's CG-DETR has no such tensor."""
    short = name.removeprefix(OFFICIAL_PREFIX)
    out = _apply(_TO_TPO, short, lambda m: 3 * m)
    if out is None:
        raise KeyError(f"{name}: not a tensor of the release's CG-DETR (cg_model.*)")
    return out


def cgdetr_to_official(name: str) -> str:
    """Release name (`cg_model.` included) of `CGDETRNet` parameter `name`; KeyError when the
    release has no place for it."""
    out = _apply(_TO_OFFICIAL, name, lambda m: m // 3 if m % 3 == 0 else -1)
    if out is None or ".-1." in out:
        raise KeyError(f"{name}: the release's CG-DETR has no place for this tensor")
    return OFFICIAL_PREFIX + out
