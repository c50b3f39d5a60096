"""Config schemas of the task heads and their criteria (loss weights live here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class CGDETRConfig:
    """CG-DETR (the release's temporal head) on external video and query features.

    Sizes default to the release's `CGDETRConfig`; `v_feat_dim` / `t_feat_dim` None: the video
    source's width (+2 with `use_tef`) and the LLM's width (the `<temp>` query joins the text).
    Loss weights are the release's `cg_criterion` (`span_loss_coef` 10, `giou_loss_coef` 1,
    `label_loss_coef` 4, `eos_coef` 0.1, `lw_saliency` 4, `lw_wattn` 1, `lw_ms_align` 1,
    `lw_distill` 1, the orthogonal-dummy term weighted by `lw_distill` too).
    """

    hidden: int = 256
    num_heads: int = 8
    ffn: int = 1024
    enc_layers: int = 3
    dec_layers: int = 3
    t2v_layers: int = 2
    moment_layers: int = 1
    dummy_layers: int = 2
    sent_layers: int = 1
    num_queries: int = 10
    num_dummies: int = 45
    total_prompts: int = 10
    num_prompts: int = 1
    max_q_l: int = 100  # query features kept (the release cuts the text to its first 100)
    n_input_proj: int = 2
    input_dropout: float = 0.5
    dropout: float = 0.1
    use_txt_pos: bool = False
    use_tef: bool = True  # append the 2-d temporal endpoint feature [i/t, (i+1)/t] to each clip
    v_feat_dim: int | None = None
    t_feat_dim: int | None = None
    # video features: "vision" (tpo's own encoder at `temporal.feat_fps`) or "npz":
    # `{video_feature_dir}/{video_id}.npz` holding `features` [t, video_feature_dim] at
    # `video_feature_fps` per second (the layout moment-retrieval datasets ship); no dir:
    # every question brings its features (`ask(video_features=...)`)
    video_features: str = "vision"
    video_feature_dir: str | None = None
    video_feature_fps: float = 1.0
    video_feature_dim: int | None = None
    # query features: "llm" (the LLM's token embeddings of the question) or "npz":
    # `{query_feature_dir}/qid{qid}.npz` holding `last_hidden_state` [l, t_feat_dim]; no dir:
    # every question brings its features (`ask(query_features=...)`)
    query_features: str = "llm"
    query_feature_dir: str | None = None
    span_l1: float = 10.0
    span_giou: float = 1.0
    fg_ce: float = 4.0
    eos_coef: float = 0.1
    saliency: float = 4.0
    saliency_margin: float = 0.2
    wattn: float = 1.0
    ms_align: float = 1.0
    distill: float = 1.0
    orthogonal: float = 1.0
    aux_loss: bool = True
    clip_length: float | None = None  # post-processing rounds windows to it (None: 1 / fps)

    def __post_init__(self) -> None:
        if self.hidden % self.num_heads:
            raise ValueError(f"cgdetr.hidden {self.hidden} not a multiple of num_heads")
        if self.video_features not in ("vision", "npz"):
            raise ValueError(
                f"cgdetr.video_features must be 'vision' or 'npz', not {self.video_features!r}"
            )
        if self.query_features not in ("llm", "npz"):
            raise ValueError(
                f"cgdetr.query_features must be 'llm' or 'npz', not {self.query_features!r}"
            )
        if self.video_features == "npz" and not self.video_feature_dim:
            raise ValueError("cgdetr.video_features 'npz' needs video_feature_dim")
        if not 1 <= self.num_prompts <= self.total_prompts:
            raise ValueError("cgdetr.num_prompts must lie in [1, total_prompts]")
        if not 1 <= self.n_input_proj <= 3:
            raise ValueError("cgdetr.n_input_proj must be 1, 2 or 3")
        if self.video_feature_fps <= 0:
            raise ValueError("cgdetr.video_feature_fps must be > 0")


@dataclass
class TemporalHeadConfig:
    """The temporal head: `kind` "detr" (tpo's moment decoder over per-frame vision features +
    saliency, the fields below) or "cgdetr" (the release's CG-DETR, configured by `cgdetr`)."""

    kind: str = "detr"
    cgdetr: CGDETRConfig = field(default_factory=CGDETRConfig)
    hidden: int = 256
    num_queries: int = 10
    enc_layers: int = 2
    dec_layers: int = 3
    num_heads: int = 8
    dropout: float = 0.1
    feat_fps: float = 1.0  # head features per second of video, independent of the LLM's frames
    max_feats: int = 75  # cap on the number of head feature frames
    feat_dim: int | None = None  # width of the head's input features (None: the vision width)
    # spatial: keep every patch of each head frame ([t, p, d]); the <temp> query attention-pools
    # each frame's patches (so a small object counts) before the moment decoder (vision only)
    spatial: bool = False
    span_l1: float = 10.0
    span_giou: float = 1.0
    fg_ce: float = 4.0
    eos_coef: float = 0.1
    saliency: float = 4.0  # weight of the margin ranking loss between clip pairs
    saliency_margin: float = 0.2
    saliency_rank: float = 4.0  # weight of the rank-contrastive saliency loss (0: off)
    saliency_tau: float = 0.5  # temperature of the rank-contrastive softmax
    aux_loss: bool = True
    # windows_from: "queries" (the decoder's spans, official) or "frames": a per-frame foreground
    # classifier (BCE weight frame_fg) whose runs above 0.5 are the first windows, then the spans
    windows_from: str = "queries"
    frame_fg: float = 4.0
    nms_iou: float | None = None  # post-processing NMS IoU of the answer's windows (None: off)

    def __post_init__(self) -> None:
        if self.kind not in ("detr", "cgdetr"):
            raise ValueError(f"temporal.kind must be 'detr' or 'cgdetr', not {self.kind!r}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"temporal.nms_iou must lie in (0, 1] or be null, got {self.nms_iou}")
        if self.hidden % self.num_heads:
            raise ValueError(f"temporal.hidden {self.hidden} not a multiple of num_heads")
        if self.windows_from not in ("queries", "frames"):
            raise ValueError(
                f"temporal.windows_from must be 'queries' or 'frames', not {self.windows_from!r}"
            )
        if self.feat_fps <= 0 or self.max_feats < 1:
            raise ValueError("temporal.feat_fps must be > 0 and temporal.max_feats >= 1")


@dataclass
class RegionHeadConfig:
    """MLP from the <boxes> query to a normalised xyxy box (optional patch cross-attention)."""

    hidden: int = 2048
    refine: bool = False  # cross-attend the query to the asked frame's patch features first
    refine_dim: int = 256  # width of that cross-attention
    refine_heads: int = 8
    # locate: the box centre is the attention-weighted mean of the asked frame's patch centres
    # (a soft-argmax, plus an offset of at most half a patch) and the MLP gives only the size;
    # position then comes from the patch grid instead of being regressed (needs refine)
    locate: bool = False
    # output: "box" (sigmoid, each coordinate pair sorted, clamped to the frame) | "raw" (the
    # release: the MLP output as normalised xyxy, neither squashed, sorted nor clamped)
    output: str = "box"
    l1: float = 2.0
    giou: float = 0.2

    def __post_init__(self) -> None:
        if self.refine and self.refine_dim % self.refine_heads:
            raise ValueError(f"region.refine_dim {self.refine_dim} not a multiple of refine_heads")
        if self.locate and not self.refine:
            raise ValueError("region.locate needs region.refine: true (it attends to patches)")
        if self.output not in ("box", "raw"):
            raise ValueError(f"region.output must be 'box' or 'raw', got {self.output!r}")
        if self.output == "raw" and self.locate:
            raise ValueError("region.output 'raw' is the plain MLP's output: it excludes locate")


@dataclass
class MaskHeadConfig:
    """SAM2 mask head prompted by the <tracking> query."""

    # a SAM2 Hydra YAML file, or a config name inside the sam2 package
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_l.yaml"
    checkpoint: str | None = None  # local SAM2 checkpoint (.pt / .safetensors); None: random
    image_size: int | None = None  # SAM's input size; None: the SAM2 config's own (1024 full)
    # propagation: "mask" (tpo decodes the prompted frame and seeds SAM2's memory with its mask)
    # or "embedding" (official: the prompt replaces a dummy box's embedding on that frame)
    propagation: str = "mask"
    # track: "sampled" (SAM2 tracks through the frames the LLM saw) or "video" (official: every
    # frame of the video, prompted on frame 0 or the asked frame)
    track: str = "sampled"
    prompt_tokens: int = 3  # sparse prompt [b, prompt_tokens, 256], like a box prompt
    prompt_hidden: int | None = None  # hidden width of the prompt MLP (None: d_llm, official)
    dense_prompt: bool = False  # also a dense prompt from the query (a per-channel bias)
    train_decoder: bool = True
    cache_frames: int = 64  # image-encoder features kept per (video, frame) in an LRU cache
    bce: float = 2.0
    dice: float = 0.5
    box_embed_l1: float = 0.0  # the official L1 to SAM2's prompt embedding of the GT box

    def __post_init__(self) -> None:
        if self.track not in ("sampled", "video"):
            raise ValueError(f"mask.track must be 'sampled' or 'video', not {self.track!r}")
        if self.propagation not in ("mask", "embedding"):
            raise ValueError(
                f"mask.propagation must be 'mask' or 'embedding', not {self.propagation!r}"
            )
        if self.image_size is not None and (self.image_size < 64 or self.image_size % 32):
            raise ValueError(
                f"mask.image_size must be a multiple of 32 >= 64, got {self.image_size}"
            )
        if self.prompt_tokens < 1 or self.cache_frames < 0:
            raise ValueError("mask.prompt_tokens must be >= 1 and mask.cache_frames >= 0")
        if self.box_embed_l1 and self.prompt_tokens != 3:
            raise ValueError(
                "mask.box_embed_l1 compares the prompt with SAM2's 3-token box embedding: "
                f"it needs prompt_tokens 3, got {self.prompt_tokens}"
            )
        if min(self.bce, self.dice, self.box_embed_l1) < 0:
            raise ValueError("mask loss weights (bce, dice, box_embed_l1) must be >= 0")


@dataclass
class HeadsConfig:
    """Which heads exist; a head left out (null) is not built."""

    temporal: TemporalHeadConfig | None = field(default_factory=TemporalHeadConfig)
    region: RegionHeadConfig | None = field(default_factory=RegionHeadConfig)
    mask: MaskHeadConfig | None = field(default_factory=MaskHeadConfig)
    # per-head multiplier of its weighted loss sum (the official scales the temporal loss by 0.05)
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"temporal": 1.0, "region": 1.0, "mask": 1.0}
    )

    def __post_init__(self) -> None:
        # names are checked against the registered heads when the criterion is built
        bad = {k: v for k, v in self.task_weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"heads.task_weights: expected finite weights >= 0, got {bad}")
