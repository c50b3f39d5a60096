"""The model builder the engine is given for real runs (the data stream: `tpo.train.data`)."""

from __future__ import annotations

import numpy as np
import torch

from tpo.config.schema import TPOConfig
from tpo.model.tpo_model import TPOModel
from tpo.stages.base import Stage


def build_train_model(cfg: TPOConfig, stage: Stage) -> TPOModel:
    """MLLM + heads + criterion for `stage`; the random init is seeded by `model.init_seed`."""
    from tpo.heads.build import build_criterion, build_heads
    from tpo.heads.temporal_features import FrameFeatureCache, vision_frame_encoder
    from tpo.model.build import build_mllm

    torch.manual_seed(cfg.model.init_seed)
    mllm = build_mllm(cfg.model)
    heads = build_heads(cfg.model.heads, mllm.llm.width, mllm.vision.width)
    criterion = build_criterion(cfg.model.heads)
    criterion.lm_weight = stage.lm_weight
    features = None
    if "temporal" in heads:
        tcfg = cfg.model.heads.temporal
        img = cfg.model.vision.img_size
        # the cache assumes a frozen encoder: a stage that trains it recomputes every time
        frozen = "vision" not in stage.groups(cfg.train.extra_groups)
        features = FrameFeatureCache(
            vision_frame_encoder(mllm.vision, patches=tcfg.spatial),
            _frame_reader(img),
            tcfg.feat_fps,
            tcfg.max_feats,
            memory_items=256 if frozen else 0,
        )
    alignment = None
    if cfg.train.align_weight > 0:
        from tpo.model.alignment import VideoTextAlignment

        alignment = VideoTextAlignment(mllm.task_tokens.ids.all, cfg.train.align_temperature)
    return TPOModel(
        mllm,
        heads,
        criterion,
        temporal_features=features,
        lm_weight=stage.lm_weight,
        head_losses=stage.head_losses,
        alignment=alignment,
        align_weight=cfg.train.align_weight,
    )


def _frame_reader(img_size: int):
    from tpo.data.video import load_video, open_source

    def read(video: str, times: torch.Tensor) -> torch.Tensor:
        src = open_source(video)
        idx = np.clip(np.round(times.numpy() * src.fps).astype(np.int64), 0, src.num_total - 1)
        return load_video(src, img_size=img_size, indices=idx).frames

    return read
