"""Builders: the model (MLLM + registered heads) from `ModelConfig`, and, beside it for
training only, the multi-task criterion of those heads.

`build_model(cfg)` serves training and inference alike; the training builder
(`tpo.train.builders.build_train_model`) adds the criterion and the stage's switches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpo.config.schema import ModelConfig
from tpo.heads import registry
from tpo.heads.criterion import MultiTaskCriterion
from tpo.model.build import build_mllm
from tpo.model.folder import MODEL_FILE
from tpo.model.task_head import TaskHead
from tpo.model.tpo_model import TPOModel
from tpo.model.weights import load_all


def build_heads(cfg: ModelConfig, d_llm: int, d_vision: int) -> dict[str, TaskHead]:
    """The configured heads by name, in registry order (a head whose config is null is left
    out); widths of the LLM and of the vision encoder."""
    built = {}
    for cls in registry.heads():
        head = cls.from_config(cfg, d_llm, d_vision)
        if head is not None:
            built[cls.name] = head
    return built


def build_criterion(
    heads: dict[str, TaskHead], cfg: ModelConfig, lm_weight: float = 1.0
) -> MultiTaskCriterion:
    """Multi-task criterion over the heads' own criteria, with `heads.task_weights`."""
    return MultiTaskCriterion(
        {name: head.criterion() for name, head in heads.items()},
        weight=cfg.heads.task_weights,
        lm_weight=lm_weight,
        names=registry.names(),
    )


def build_model(cfg: ModelConfig) -> TPOModel:
    """MLLM + registered heads (+ the per-frame feature source a head asks for) from `cfg`;
    the random init is seeded by `cfg.init_seed`, then `cfg.base_weights` (an inference
    folder) loaded over it. The same model trains and answers."""
    torch.manual_seed(cfg.init_seed)
    mllm = build_mllm(cfg, pairs=registry.task_pairs())
    heads = build_heads(cfg, mllm.llm.width, mllm.vision.width)
    for head in heads.values():
        head.bind(mllm)
    features = next(
        (f for h in heads.values() if (f := h.frame_feature_source(cfg, mllm)) is not None), None
    )
    model = TPOModel(mllm, heads, temporal_features=features)
    if cfg.base_weights is not None:
        folder = Path(cfg.base_weights)
        load_all(model, folder / MODEL_FILE, folder / "config.yaml")
    return model
