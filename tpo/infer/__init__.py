"""Inference: load a model, ask grounded questions, visualise the answers."""
