"""Config schemas of the task heads and their criteria (loss weights live here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TemporalHeadConfig:
    """DETR-style moment decoder over per-frame vision features + saliency."""

    hidden: int = 256
    num_queries: int = 10
    enc_layers: int = 2
    dec_layers: int = 3
    num_heads: int = 8
    dropout: float = 0.1
    feat_fps: float = 1.0  # head features per second of video, independent of the LLM's frames
    max_feats: int = 75  # cap on the number of head feature frames
    feat_source: str = "vision"  # "vision" (our encoder, cached) | "npz" (precomputed files)
    feat_dim: int | None = None  # width of npz features (None: the vision width)
    span_l1: float = 10.0
    span_giou: float = 1.0
    fg_ce: float = 4.0
    eos_coef: float = 0.1
    saliency: float = 4.0
    saliency_margin: float = 0.2
    aux_loss: bool = True
    nms_iou: float | None = None  # None: no NMS in post-processing


@dataclass
class RegionHeadConfig:
    """MLP from the <boxes> query to a normalised xyxy box (optional patch cross-attention)."""

    hidden: int = 2048
    refine: bool = False
    l1: float = 2.0
    giou: float = 0.2


@dataclass
class MaskHeadConfig:
    """SAM2 mask head prompted by the <tracking> query."""

    sam2_config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"
    checkpoint: str | None = None  # local SAM2 checkpoint; None: random weights
    image_size: int = 1024
    prompt_tokens: int = 3  # sparse prompt [b, prompt_tokens, 256], like a box prompt
    dense_prompt: bool = False
    train_decoder: bool = True
    bce: float = 2.0
    dice: float = 0.5
    box_embed_l1: float = 0.0  # the official L1 to SAM2's prompt embedding of the GT box


@dataclass
class HeadsConfig:
    """Which heads exist; a head left out (null) is not built."""

    temporal: TemporalHeadConfig | None = field(default_factory=TemporalHeadConfig)
    region: RegionHeadConfig | None = field(default_factory=RegionHeadConfig)
    mask: MaskHeadConfig | None = field(default_factory=MaskHeadConfig)
