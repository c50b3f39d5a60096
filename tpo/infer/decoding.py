"""Decoding strategies: objects the predictor hands the prompts to, each returning the answers
as one `GenerationOutput` (+ per-prompt records where the strategy keeps any).

A strategy is any callable `(mllm, frames, input_ids, attention_mask, *, max_new_tokens,
pooled) -> Decoded`; `pooled` is the head index whose queries a multi-response strategy may
pool (a head declaring `poolable`, None: none). `Greedy` and `Sampling` are here; the POPEN
preference ensemble is `tpo.infer.ensemble.PreferenceEnsemble`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tpo.model.generate import GenerationOutput


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run the block under `torch.manual_seed(seed)` without touching the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class Decoded:
    """A strategy's answers (`gen`, one row per prompt) and its per-prompt `records` (None:
    the strategy keeps none; else one `EnsembleRecord`-like object per prompt)."""

    gen: GenerationOutput
    records: list[Any] | None = None


class Decoding(Protocol):
    """What the predictor calls to answer a batch of prompts."""

    def __call__(
        self,
        mllm,
        frames: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        pooled: int | None = None,
    ) -> Decoded: ...


@dataclass(frozen=True)
class Greedy:
    """The most probable token at each step (HF greedy search with the KV cache)."""

    def __call__(
        self, mllm, frames, input_ids, attention_mask, *, max_new_tokens: int, pooled=None
    ) -> Decoded:
        """Greedy answers of the prompts."""
        return Decoded(
            mllm.generate(frames, input_ids, attention_mask, max_new_tokens=max_new_tokens)
        )


@dataclass(frozen=True)
class Sampling:
    """Ancestral sampling at `temperature` with `top_k` / `top_p` (0 / 1.0: off), under `seed`
    (None: the caller's RNG; a seed leaves the caller's RNG state untouched)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"Sampling: temperature must be > 0, got {self.temperature}")

    def __call__(
        self, mllm, frames, input_ids, attention_mask, *, max_new_tokens: int, pooled=None
    ) -> Decoded:
        """One sampled answer per prompt."""
        with seeded(self.seed, input_ids.device):
            gen = mllm.generate(
                frames, input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=True,
                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            )  # fmt: skip
        return Decoded(gen)
