"""Stage 2, head training: heads, task tokens and the connector projection; the LLM is frozen."""

from tpo.stages.base import Stage

STAGE2 = Stage(
    number=2,
    name="head_training",
    trainable=("temporal_head", "region_head", "mask_head", "task_tokens", "connector_proj"),
    lr_scale={"temporal_head": 1.0, "region_head": 1.0, "mask_head": 1.0},
    lm_weight=0.0,
    head_losses=True,
    init_from="stage1",
    # the whole LLM, when it is a small one trained from scratch: its hidden states carry the
    # asked object into the task token only once it learns to (the toy world's tiny model)
    optional_groups=("llm",),
)
