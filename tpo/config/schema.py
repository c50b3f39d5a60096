"""The top-level config: model + data + train. One YAML per stage, built on shared bases."""

from __future__ import annotations

from dataclasses import dataclass, field

from tpo.config.heads import HeadsConfig
from tpo.config.model import ConnectorConfig, LLMConfig, TaskTokenConfig, VisionConfig
from tpo.config.popen import PopenConfig


@dataclass
class ModelConfig:
    """The whole MLLM: parts and heads."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=lambda: LLMConfig(path="mistral-7b-instruct"))
    tokens: TaskTokenConfig = field(default_factory=TaskTokenConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    init_seed: int = 0  # seeds the random init of everything not loaded from a local path
    # an inference folder (`tpo export`, `tpo convert`) whose model.safetensors every build loads
    # over the init: the base a model fine-tuned from it (`train.init_from`) is rebuilt from
    base_weights: str | None = None


@dataclass
class DataConfig:
    """What the stage reads and how videos are sampled."""

    manifest: str = "data_manifests/toyworld_stage1.yaml"
    num_frames: int = 16  # frames the LLM sees (resized to model.vision.img_size)
    train_sampling: str = "rand"  # "rand" | "middle" (see tpo.data.video)
    num_workers: int = 0  # DataLoader worker processes decoding batches (0: the main process)
    prefetch_factor: int = 2  # micro-batches each worker prepares ahead

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.prefetch_factor < 1:
            raise ValueError("data.num_workers must be >= 0 and data.prefetch_factor >= 1")
        if self.train_sampling not in ("rand", "middle"):
            raise ValueError(
                f"data.train_sampling must be 'rand' or 'middle', got {self.train_sampling!r}"
            )


@dataclass
class TrainConfig:
    """Optimisation of one stage (DeepSpeed JSON fields are filled from here at launch)."""

    stage: int = 1
    output_dir: str = "outputs/stage1"
    init_from: str | None = None  # checkpoint to start from (default: the previous stage's)
    deepspeed: str = "configs/deepspeed/zero2.json"
    seed: int = 0
    max_steps: int = 100
    micro_batch: int = 2  # per process (per GPU)
    grad_accum: int = 1  # ignored when global_batch is set
    global_batch: int | None = None  # micro_batch x grad_accum x world size
    extra_groups: list[str] = field(default_factory=list)  # optional groups of the stage to train
    lr: float = 2e-5
    lr_groups: dict = field(default_factory=dict)  # trainable group name -> lr
    weight_decay: float = 0.02
    adam_eps: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.05
    clip_grad: float = 1.0
    # video-text contrastive alignment of the visual tokens (tpo.model.alignment): 0 for models
    # that start from aligned VideoChat2 weights, > 0 when the vision side starts random
    align_weight: float = 0.0
    align_temperature: float = 0.07
    bf16: bool = True
    log_every: int = 1
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # step checkpoints kept besides `final`
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"train.stage must be 1, 2 or 3, got {self.stage}")
        if self.max_steps < 1 or self.micro_batch < 1 or self.grad_accum < 1:
            raise ValueError("train.max_steps, train.micro_batch and train.grad_accum must be >= 1")
        if self.save_every < 0 or self.keep_checkpoints < 1:
            raise ValueError(
                "train.save_every must be >= 0 (0: only the final checkpoint) and "
                f"train.keep_checkpoints >= 1, got {self.save_every} and {self.keep_checkpoints}"
            )
        if self.align_weight < 0 or self.align_temperature <= 0:
            raise ValueError("train.align_weight must be >= 0 and train.align_temperature > 0")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                "train.min_lr_ratio must be in [0, 1] and train.warmup_ratio in [0, 1)"
            )


@dataclass
class TPOConfig:
    """Everything one run needs; stored resolved beside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    popen: PopenConfig = field(default_factory=PopenConfig)  # optional preference objective
