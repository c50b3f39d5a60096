"""Training: the one engine that runs any stage through DeepSpeed, checkpoints, logging."""
