"""Stage 1, task assignment: LoRA and task tokens learn to answer and emit the right task pair."""

from tpo.stages.base import Stage

STAGE1 = Stage(
    number=1,
    name="task_assignment",
    trainable=("lora", "task_tokens"),
    lm_weight=1.0,
    head_losses=False,
    init_from=None,
    # the whole LLM, e.g. a small random one that LoRA cannot adapt; the connector, when it
    # starts random and must first learn to see (train.align_weight)
    optional_groups=("llm", "connector"),
)
