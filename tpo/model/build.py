"""Builders: config dataclasses -> the MLLM parts -> MLLM (the whole model with its heads is
built by `tpo.heads.build.build_model`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from tpo.config.schema import ModelConfig
from tpo.model.connector import build_connector
from tpo.model.llm import build_llm
from tpo.model.mllm import MLLM
from tpo.model.prompt import PromptCollator
from tpo.model.tokens import TaskPair, build_task_tokens, load_tokenizer
from tpo.model.vision import build_vision


def build_mllm(
    cfg: ModelConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    meta: bool = False,
    *,
    pairs: Sequence[TaskPair],
) -> MLLM:
    """Vision encoder, connector, LLM (+LoRA, task tokens of the heads' `pairs`, in head-index
    order: `tpo.heads.registry.task_pairs()`) from `cfg`; `meta=True` allocates no memory (for
    counting parameters). Base LLM weights are frozen when LoRA is on."""

    tokenizer = load_tokenizer(cfg.llm, pairs)
    llm = build_llm(cfg.llm, tokenizer, dtype=dtype, meta=meta, pairs=pairs)
    with torch.device("meta") if meta else contextlib.nullcontext():
        vision = build_vision(cfg.vision)
        connector = build_connector(cfg.connector, vision.width, llm.width)
        task_tokens = build_task_tokens(cfg.tokens, llm.token_ids, llm.width, llm.mean_embedding)
    model = MLLM(vision, connector, llm, task_tokens, tokenizer, head_query=cfg.llm.head_query)
    if dtype is not None:
        model.to(dtype)
    if device is not None and not meta:
        model.to(device)
    return model


def build_collator(cfg: ModelConfig, model: MLLM) -> PromptCollator:
    """The text collator matching the model's tokenizer, template, prompt format and
    visual-token count."""
    return PromptCollator(
        model.tokenizer,
        num_visual_tokens=model.num_visual_tokens,
        max_len=cfg.llm.max_text_len,
        template=cfg.llm.template,
        system_msg=cfg.llm.system_msg,
        prompt_format=cfg.llm.prompt_format,
    )
