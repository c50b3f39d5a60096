"""Builders: heads and the multi-task criterion from `HeadsConfig`.

The mask head lives in `tpo.heads.mask` and imports sam2; it is imported only when a mask head
is configured, so configs without one never import sam2.
"""

from __future__ import annotations

from torch import nn

from tpo.config.heads import HeadsConfig
from tpo.heads.criterion import MultiTaskCriterion
from tpo.heads.region import RegionHead, build_region_criterion
from tpo.heads.temporal import TemporalHead
from tpo.heads.temporal_criterion import build_temporal_criterion


def build_heads(cfg: HeadsConfig, d_llm: int, d_vision: int) -> dict[str, nn.Module]:
    """The configured heads by name ("temporal", "region", "mask"); a null config is left out.

    The temporal head reads features of width `cfg.temporal.feat_dim` (npz) or `d_vision`.
    """
    heads: dict[str, nn.Module] = {}
    if cfg.temporal is not None:
        d_feat = cfg.temporal.feat_dim or d_vision
        heads["temporal"] = TemporalHead(cfg.temporal, d_llm=d_llm, d_feat=d_feat)
    if cfg.region is not None:
        heads["region"] = RegionHead(cfg.region, d_llm=d_llm, d_vision=d_vision)
    if cfg.mask is not None:
        from tpo.heads.mask import build_mask_head  # imports sam2

        heads["mask"] = build_mask_head(cfg.mask, d_llm)
    return heads


def build_criterion(cfg: HeadsConfig) -> MultiTaskCriterion:
    """Multi-task criterion over the configured heads' criteria, with the config's weights."""
    criteria: dict[str, nn.Module] = {}
    if cfg.temporal is not None:
        criteria["temporal"] = build_temporal_criterion(cfg.temporal)
    if cfg.region is not None:
        criteria["region"] = build_region_criterion(cfg.region)
    if cfg.mask is not None:
        from tpo.heads.mask import build_mask_criterion  # imports sam2

        criteria["mask"] = build_mask_criterion(cfg.mask)
    return MultiTaskCriterion(criteria, weight=cfg.task_weights)
