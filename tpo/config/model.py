"""Config schemas of the model parts: vision encoder, connector, LLM, task tokens.

Defaults are the full-size values of the official VideoChat-TPO release.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    return_index: int = -2  # features after this block; -2 runs 23 of 24 blocks as the official
    add_ln: bool = True  # the extra LayerNorm after the returned block
    ln_eps: float = 1e-12
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    checkpoint: str | None = None  # local safetensors of a pretrained encoder

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"vision.img_size {self.img_size} not a multiple of patch_size")
        if not -self.depth <= self.return_index < self.depth:
            raise ValueError(f"vision.return_index {self.return_index} outside depth {self.depth}")


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

    path: str | None = None
    arch: dict = field(default_factory=dict)  # e.g. {model_type: mistral, hidden_size: 64, ...}
    tokenizer: str = "mistral-common"  # "mistral-common" | a local tokenizer folder
    template: str = "mistral"  # prompt template: "mistral" ([INST] ...) | "chatml" (<|im_start|>)
    system_msg: str = ""  # the {msg} slot of the template
    attn_implementation: str = "sdpa"  # transformers attention backend ("eager", "sdpa", ...)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_text_len: int = 512

    def __post_init__(self) -> None:
        if self.path is None and not self.arch:
            raise ValueError("llm: give either a local `path` or an `arch` mapping")
        if self.path is not None and self.arch:
            raise ValueError("llm: give a local `path` or an `arch` mapping, not both")
        if self.arch and "model_type" not in self.arch:
            raise ValueError("llm.arch: needs a `model_type` key (e.g. mistral, llama)")
        if self.template not in ("mistral", "chatml"):
            raise ValueError(f"llm.template must be 'mistral' or 'chatml', got {self.template!r}")


@dataclass
class TaskTokenConfig:
    """Learned content-token embeddings and the <track_box> box encoder."""

    box_hidden: int = 2048  # loc encoder MLP 4 -> box_hidden -> d_llm

    def __post_init__(self) -> None:
        if self.box_hidden <= 0:
            raise ValueError(f"model.tokens.box_hidden must be positive, got {self.box_hidden}")
