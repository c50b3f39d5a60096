"""The model builder the engine is given for real runs (the data stream: `tpo.train.data`)."""

from __future__ import annotations

from tpo.config.schema import TPOConfig
from tpo.heads.build import build_criterion, build_model
from tpo.model.alignment import VideoTextAlignment
from tpo.model.tpo_model import TPOTrainModel
from tpo.stages.base import Stage


def build_train_model(cfg: TPOConfig, stage: Stage) -> TPOTrainModel:
    """`build_model(cfg.model)` + the criterion and the loss switches of `stage`."""
    model = build_model(cfg.model)
    heads = dict(model.heads)
    criterion = build_criterion(heads, cfg.model, lm_weight=stage.lm_weight)
    alignment = None
    if cfg.train.align_weight > 0:
        alignment = VideoTextAlignment(model.mllm.task_tokens.ids.all, cfg.train.align_temperature)
    return TPOTrainModel(
        model.mllm,
        heads,
        criterion,
        temporal_features=model.temporal_features,
        lm_weight=stage.lm_weight,
        head_losses=stage.head_losses,
        alignment=alignment,
        align_weight=cfg.train.align_weight,
    )
