"""Stage 3, joint co-training: connector, LoRA, task tokens and heads on task + conversation data."""

from tpo.stages.base import Stage

STAGE3 = Stage(
    number=3,
    name="cotraining",
    trainable=(
        "connector",
        "lora",
        "task_tokens",
        "temporal_head",
        "region_head",
        "mask_head",
    ),
    optional_groups=("vision", "llm"),
    lm_weight=1.0,
    head_losses=True,
    init_from="stage2",
)
