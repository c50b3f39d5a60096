"""The tensor names of the official VideoChat-TPO checkpoint and their tpo names.

The one table both directions use: `tpo convert videochat-tpo` (official -> tpo) and
`tpo export --format videochat-tpo` (tpo -> official). Facts from the measured weight map
(2,594 release tensors, 2,291 with a home in tpo by renaming):

    vision_encoder.encoder.*           -> mllm.vision.*
    vision_layernorm.*                 -> mllm.vision.vision_layernorm.*
    qformer.bert.*                     -> mllm.connector.qformer.*  (`.self.` -> `.attention.`
                                          in attention / crossattention, embeddings.LayerNorm
                                          -> embeddings.layernorm)
    query_tokens, extra_query_tokens, project_up.*  -> mllm.connector.*
    lm.*                               -> mllm.llm.model.*  (embed_tokens: see EMBED)
    temporal_token, box_token, track_token -> a row of mllm.task_tokens.content (the row of
                                          the head whose content token is <temp>, <boxes>,
                                          <tracking>: CONTENT_VECTORS)
    loc_encoder.*                      -> mllm.task_tokens.box_encoder.*
    loc_decoder.*                      -> heads.region.mlp.*
    track_embed.layers.{0,1}.*         -> heads.mask.prompt_mlp.{0,2}.*
    sam.*                              -> heads.mask.backend.sam.*  (SAM2 v2.0 names)
    cg_model.*                         -> heads.temporal.net.*  (CG-DETR: `tpo.heads.cgdetr_layout`)
    cg_criterion.empty_weight          -> no tensor: [1, eos_coef], the config's
                                          heads.temporal.cgdetr.eos_coef (CRITERION_WEIGHT)

The tensors without a home (`KEPT_PREFIXES`, `KEPT_NAMES`: the unused MLPs, the Q-Former's
`position_ids` buffer) are kept as they are beside a converted model.
"""

from __future__ import annotations

from tpo.heads import cgdetr_layout

# the files of a converted folder that hold the official layout (tpo.infer.convert)
UNMAPPED_FILE = "unmapped.safetensors"  # the official tensors without a home, as they were
OFFICIAL_FILE = "official.json"  # every official name, dtype, shape, shard; config.json
TOKENIZER_DIR = "tokenizer"  # the release's tokenizer files
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
)
INDEX_FILE = "model.safetensors.index.json"  # a sharded official checkpoint's index

# official prefix -> tpo prefix, tried in order (the first that matches wins)
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("vision_encoder.encoder.", "mllm.vision."),
    ("vision_layernorm.", "mllm.vision.vision_layernorm."),
    ("qformer.bert.", "mllm.connector.qformer."),
    ("query_tokens", "mllm.connector.query_tokens"),
    ("extra_query_tokens", "mllm.connector.extra_query_tokens"),
    ("project_up.", "mllm.connector.project_up."),
    ("lm.", "mllm.llm.model."),
    ("loc_encoder.", "mllm.task_tokens.box_encoder."),
    ("loc_decoder.", "heads.region.mlp."),
    ("track_embed.layers.0.", "heads.mask.prompt_mlp.0."),
    ("track_embed.layers.1.", "heads.mask.prompt_mlp.2."),
    ("sam.", "heads.mask.backend.sam."),
)
# renames inside the Q-Former (official infix -> tpo infix)
_QFORMER_INFIXES: tuple[tuple[str, str], ...] = (
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
    ("embeddings.LayerNorm.", "embeddings.layernorm."),
)
CGDETR_PREFIX = "heads.temporal.net."  # where cg_model.* lives in tpo
CRITERION_WEIGHT = cgdetr_layout.CRITERION_WEIGHT  # [1, eos_coef]: config, not a tensor
KEPT_PREFIXES: tuple[str, ...] = (
    "project_down.",
    "merge_proj.",
    "track_embed_decode2.",
    "temporal_embed.",
    "action_embed.",
)
KEPT_NAMES: frozenset[str] = frozenset({"qformer.bert.embeddings.position_ids"})
# the official task vectors [1, 1, d_llm] -> the content token whose row they fill
CONTENT_VECTORS: dict[str, str] = {
    "temporal_token": "<temp>",
    "box_token": "<boxes>",
    "track_token": "<tracking>",
}
CONTENT = "mllm.task_tokens.content"
# the official input embedding; with LoRA on (PEFT trainable tokens) tpo stores it as the
# base layer plus a delta holding the task tokens' rows (PEFT copies the delta over them)
EMBED = "lm.base_model.model.model.embed_tokens.weight"
EMBED_BASE = "mllm.llm.model.base_model.model.model.embed_tokens.token_adapter.base_layer.weight"
EMBED_DELTA = (
    "mllm.llm.model.base_model.model.model.embed_tokens.token_adapter."
    "trainable_tokens_delta.default"
)


def is_kept(name: str) -> bool:
    """Whether official tensor `name` has no home in tpo (kept beside the model as it is)."""
    return name in KEPT_NAMES or name.startswith(KEPT_PREFIXES)


def to_tpo(name: str) -> str:
    """The tpo name of official tensor `name` (one renamed 1:1; not for the task vectors, the
    embedding or a kept tensor); KeyError naming it when the layout has no such tensor."""
    if name.startswith(cgdetr_layout.OFFICIAL_PREFIX):
        return CGDETR_PREFIX + cgdetr_layout.cgdetr_to_tpo(name)
    for official, tpo in _PREFIXES:
        if name.startswith(official):
            out = tpo + name[len(official) :]
            if official == "qformer.bert.":
                for a, b in _QFORMER_INFIXES:
                    out = out.replace(a, b)
            return out
    raise KeyError(f"{name}: not a tensor of the official VideoChat-TPO layout")


def to_official(name: str) -> str:
    """The official name of tpo tensor `name` (the inverse of `to_tpo`); KeyError when the
    official layout has no place for it."""
    if name.startswith(CGDETR_PREFIX):
        return cgdetr_layout.cgdetr_to_official(name.removeprefix(CGDETR_PREFIX))
    # longest tpo prefix first: mllm.vision.vision_layernorm. before mllm.vision.
    for official, tpo in sorted(_PREFIXES, key=lambda p: -len(p[1])):
        if name.startswith(tpo):
            out = official + name[len(tpo) :]
            if official == "qformer.bert.":
                for a, b in _QFORMER_INFIXES:
                    out = out.replace(b, a)
            return out
    raise KeyError(f"{name}: the official VideoChat-TPO layout has no place for this tensor")
