"""Config schemas of the model parts: vision encoder, connector, LLM, task tokens.

Defaults are the full-size values of the official VideoChat-TPO release.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMPT_FORMATS = ("tpo", "videochat-tpo")
HEAD_QUERIES = ("tpo", "official")


@dataclass
class VisionConfig:
    """UMT-style video ViT (patch 16, tubelet, sin-cos position embedding)."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    tubelet: int = 1
    pos_frames: int = 4  # sin-cos embedding built for this many (temporal) frames, interpolated
    return_index: int = -2  # features after this block; -2: builds and runs 23 of 24 (official)
    add_ln: bool = True  # the extra LayerNorm after the returned block
    ln_eps: float = 1e-12
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    checkpoint: str | None = None  # local safetensors of a pretrained encoder
    # frame resize kernel (tpo.data.video.RESIZE_MODES): "uint8" (torch's fast uint8 bicubic) or
    # "float" (bicubic on floats, then rounded: torchvision's Resize, as the release)
    resize: str = "uint8"

    def __post_init__(self) -> None:
        if self.resize not in ("uint8", "float"):
            raise ValueError(f"vision.resize must be 'uint8' or 'float', got {self.resize!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"vision.img_size {self.img_size} not a multiple of patch_size")
        if not -self.depth <= self.return_index < self.depth:
            raise ValueError(f"vision.return_index {self.return_index} outside depth {self.depth}")
        if self.width % self.num_heads:
            raise ValueError(f"vision.width {self.width} not a multiple of num_heads")
        if self.tubelet < 1 or self.pos_frames < 1:
            raise ValueError("vision.tubelet and vision.pos_frames must be >= 1")


@dataclass
class ConnectorConfig:
    """BLIP-2 / InstructBLIP Q-Former with 32 + 64 query tokens projected to the LLM width."""

    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate: int = 3072
    cross_attention_freq: int = 2
    num_query: int = 32
    extra_query: int = 64
    vocab_size: int = 30522
    max_position: int = 512
    dropout: float = 0.1
    attn_dropout: float = 0.1
    bert_init: str | None = None  # local BERT folder to initialise the Q-Former from
    # std of the random init (weights and queries). BLIP-2's 0.02 suits width 768; a narrow
    # Q-Former needs about 1/sqrt(hidden), else two 0.02 projections in a row shrink the
    # cross-attention read of the patches ~40x and every video gets the same visual tokens
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden % self.num_heads:
            raise ValueError(f"connector.hidden {self.hidden} not a multiple of num_heads")
        if self.init_std <= 0:
            raise ValueError(f"connector.init_std {self.init_std} must be > 0")
        if self.num_query < 1 or self.extra_query < 0 or self.cross_attention_freq < 1:
            raise ValueError(
                "connector: num_query and cross_attention_freq must be >= 1, extra_query >= 0"
            )


@dataclass
class LoRAConfig:
    """PEFT LoRA on the LLM."""

    enabled: bool = True  # off: no adapters, the base LLM is the "llm" group
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    targets: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
        ]
    )

    def __post_init__(self) -> None:
        if self.enabled and (self.r <= 0 or not self.targets):
            raise ValueError("llm.lora: r must be positive and targets non-empty when enabled")


@dataclass
class LLMConfig:
    """Causal LM: from a local HF folder (`path`) or built from `arch` (HF config kwargs)."""

    path: str | None = None  # local HF folder; when set it wins over `arch`
    # HF config kwargs, e.g. {model_type: mistral, hidden_size: 64, ...}. Typed Any (a mapping or
    # None) because the struct-mode loader would refuse the keys of a `dict` field.
    arch: Any = None
    tokenizer: str = "mistral-common"  # "mistral-common" | a local tokenizer folder
    template: str = "mistral"  # prompt template: "mistral" ([INST] ...) | "chatml" (<|im_start|>)
    system_msg: str = ""  # the {msg} slot of the template
    # prompt_format: "tpo" (one tokenisation, one BOS) | "videochat-tpo" (the release's
    # process_qa: each segment tokenised with its own BOS, the timestamp message; see prompt.py)
    prompt_format: str = "tpo"
    # head_query: "tpo" (feed begin then content; the content token's hidden) | "official" (the
    # release's loop: the task vector fed in place of the content token; see generate_official)
    head_query: str = "tpo"
    attn_implementation: str = "sdpa"  # transformers attention backend ("eager", "sdpa", ...)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_text_len: int = 512

    def __post_init__(self) -> None:
        if self.arch is not None and not isinstance(self.arch, dict):
            raise ValueError(f"llm.arch must be a mapping of HF config kwargs, got {self.arch!r}")
        if self.path is None and not self.arch:
            raise ValueError("llm: give either a local `path` or an `arch` mapping")
        if self.arch and "model_type" not in self.arch:
            raise ValueError("llm.arch: needs a `model_type` key (e.g. mistral, llama)")
        if self.template not in ("mistral", "chatml"):
            raise ValueError(f"llm.template must be 'mistral' or 'chatml', got {self.template!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"llm.prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}"
            )
        if self.prompt_format == "videochat-tpo" and self.template != "mistral":
            raise ValueError("llm.prompt_format 'videochat-tpo' needs llm.template 'mistral'")
        if self.head_query not in HEAD_QUERIES:
            raise ValueError(
                f"llm.head_query must be one of {HEAD_QUERIES}, got {self.head_query!r}"
            )


@dataclass
class TaskTokenConfig:
    """Learned content-token embeddings and the <track_box> box encoder."""

    box_hidden: int = 2048  # loc encoder MLP 4 -> box_hidden -> d_llm

    def __post_init__(self) -> None:
        if self.box_hidden <= 0:
            raise ValueError(f"model.tokens.box_hidden must be positive, got {self.box_hidden}")
