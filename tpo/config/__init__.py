"""Typed config schemas and the YAML loader."""

from tpo.config.heads import HeadsConfig, MaskHeadConfig, RegionHeadConfig, TemporalHeadConfig
from tpo.config.load import (
    ConfigError,
    load_config,
    load_saved_config,
    merge_into,
    to_dict,
    to_yaml,
)
from tpo.config.model import ConnectorConfig, LLMConfig, LoRAConfig, TaskTokenConfig, VisionConfig
from tpo.config.schema import DataConfig, ModelConfig, TPOConfig, TrainConfig

__all__ = [
    "ConfigError",
    "ConnectorConfig",
    "DataConfig",
    "HeadsConfig",
    "LLMConfig",
    "LoRAConfig",
    "MaskHeadConfig",
    "ModelConfig",
    "RegionHeadConfig",
    "TPOConfig",
    "TaskTokenConfig",
    "TemporalHeadConfig",
    "TrainConfig",
    "VisionConfig",
    "load_config",
    "load_saved_config",
    "merge_into",
    "to_dict",
    "to_yaml",
]
