"""The causal LM: transformers model + the task tokens in its vocabulary + PEFT LoRA.

New vocabulary rows (input embeddings and lm_head) start at the mean of the old rows. With
LoRA on, PEFT's `trainable_token_indices` makes the input rows of the 7 task tokens trainable
(group "task_tokens"; peft 0.21 accepts it for the input embedding only, not for a LoRA-wrapped
lm_head). The lm_head rows of the new tokens learn through the LoRA adapter on lm_head (its B
rows are per output token), or, when lm_head is tied to the input embeddings (SmolLM2), through
the same trainable rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tpo.config.model import LLMConfig
from tpo.model.tokens import TaskPair, TaskTokenIds


class LanguageModel(nn.Module):
    """An HF causal LM (optionally PEFT-wrapped) with the task-token ids of its tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        token_ids: TaskTokenIds,
        width: int,
        mean_embedding: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.token_ids = token_ids
        self.width = width  # d_llm
        self.mean_embedding = mean_embedding  # [d_llm] mean of the base input rows (not saved)

    @property
    def is_peft(self) -> bool:
        """Whether LoRA adapters are on."""
        # function-level: peft is heavy to import; only when LoRA is built or read
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def input_embeddings(self) -> nn.Module:
        """The (possibly PEFT-wrapped) input embedding layer."""
        return self.model.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [b, s] -> input embeddings [b, s, d] (task-token hooks apply)."""
        return self.input_embeddings()(input_ids)

    def forward(self, **kwargs):
        """The HF causal-LM forward (inputs_embeds, attention_mask, position_ids, labels, ...)."""
        return self.model(**kwargs)

    def generate(self, **kwargs):
        """HF `generate` on the wrapped model."""
        return self.model.generate(**kwargs)

    def merge_adapters(self) -> bool:
        """Fold the LoRA adapters into the base weights (PEFT `merge_adapter`) so each step runs
        one matmul per layer instead of three: for inference only, since the base weights then
        hold the merged values (the adapters stay; `disable_adapter()` unmerges). Skipped (False)
        without LoRA or with tied input/output embeddings, where merging lm_head's adapter would
        also change the input rows."""
        if not self.is_peft or getattr(self.model.config, "tie_word_embeddings", False):
            return False
        self.model.merge_adapter()
        return True

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """ "lora" (adapter weights), "task_tokens" (new input rows), "llm" (all base weights)."""
        # function-level: peft is heavy to import; only when LoRA is built or read
        from peft.tuners.lora import LoraLayer
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        lora: list[nn.Parameter] = []
        tokens: list[nn.Parameter] = []
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                for name in LoraLayer.adapter_layer_names:
                    lora.extend(getattr(module, name).parameters())
            elif isinstance(module, TrainableTokensLayer):
                tokens.extend(module.trainable_tokens_delta.parameters())
        taken = {id(p) for p in lora + tokens}
        base = [p for p in self.model.parameters() if id(p) not in taken]
        return {"lora": lora, "task_tokens": tokens, "llm": base}


def _mean_init_rows(model: nn.Module, first_new: int, new_ids: list[int]) -> None:
    """Set the rows `new_ids` of the input and output embeddings to the mean of rows < first_new."""
    with torch.no_grad():
        layers = [model.get_input_embeddings(), model.get_output_embeddings()]
        seen: set[int] = set()
        for layer in layers:
            if layer is None or id(layer.weight) in seen:  # tied weights: set once
                continue
            seen.add(id(layer.weight))
            weight = layer.weight
            weight[new_ids] = weight[:first_new].float().mean(0).to(weight.dtype)


def build_base_model(
    cfg: LLMConfig, vocab_size: int, dtype: torch.dtype | None = None, meta: bool = False
) -> nn.Module:
    """The transformers causal LM from a local folder or an `arch` config (never the hub)."""
    # function-level: transformers is heavy to import; only when an LLM or tokenizer is built
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict = {"attn_implementation": cfg.attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if cfg.path is not None:
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"llm.path: '{cfg.path}' is not a local model folder with config.json "
                "(for build/assets/smollm2 run `make assets`)"
            )
        if not meta:
            return AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, **kwargs
            )
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        arch = dict(cfg.arch)
        model_type = arch.pop("model_type")
        arch.setdefault("vocab_size", vocab_size)
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"llm.arch: cannot build a '{model_type}' config: {err}") from err
    with torch.device("meta") if meta else contextlib.nullcontext():
        return AutoModelForCausalLM.from_config(config, **kwargs)


def build_llm(
    cfg: LLMConfig,
    tokenizer,
    dtype: torch.dtype | None = None,
    meta: bool = False,
    pairs: Sequence[TaskPair] = (),
) -> LanguageModel:
    """Base model + task tokens (mean-initialised rows) + LoRA from `cfg.lora`.

    The tokenizer must already hold the task tokens (tpo.model.tokens.load_tokenizer); `pairs`
    are the heads' task pairs, in head-index order (none: an LLM without heads).
    """
    ids = TaskTokenIds.from_tokenizer(tokenizer, pairs)
    first_new = min(ids.all)
    model = build_base_model(cfg, vocab_size=first_new, dtype=dtype, meta=meta)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < first_new:
        raise ValueError(
            f"llm: the model has {rows} embedding rows but the tokenizer's base vocab has "
            f"{first_new}; llm.tokenizer does not fit the model"
        )
    if rows < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    width = model.get_input_embeddings().weight.shape[1]
    mean = None
    if not meta:
        _mean_init_rows(model, first_new, list(ids.all))
        mean = model.get_input_embeddings().weight[first_new].detach().clone()
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if cfg.lora.enabled:
        # function-level: peft is heavy to import; only when LoRA is built or read
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.targets),
            trainable_token_indices=list(ids.all),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return LanguageModel(model, ids, width, mean)
