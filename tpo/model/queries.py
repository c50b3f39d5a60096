"""Head queries: the content tokens' last-layer hidden states, with the head and sample of each.

Shared by the training forward (`MLLMOutput`) and generation (`GenerationOutput`).
"""

from __future__ import annotations

import torch


class TaskQueries:
    """Mixin for outputs holding head queries: task_hidden [n, d], task_head [n], task_sample [n]."""

    task_hidden: torch.Tensor
    task_head: torch.Tensor
    task_sample: torch.Tensor

    def per_sample(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each sample i: (hidden [k_i, d], head [k_i]) in sequence order."""
        return [
            (self.task_hidden[self.task_sample == i], self.task_head[self.task_sample == i])
            for i in range(batch_size)
        ]

    def for_head(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries of head `index` (`TaskTokens.index(name)`): (hidden [m, d], sample [m])."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"for_head: expected a head index (TaskTokens.index), got {index!r}")
        sel = self.task_head == index
        return self.task_hidden[sel], self.task_sample[sel]
