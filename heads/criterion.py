"""Multi-task criterion: routes each content token to its head's criterion and sums the losses.

Content tokens are numbered 0..n-1 over the batch; `task_head [n]` says which head each feeds
(its head index: the position of the head's name in `names`, the registry's order). Each head
is run on its own tokens in order (`token_indices`), so `head_outputs[name]` row j belongs to
token `token_indices(...)[name][j]`, and `targets[i]` is the target of token i.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tpo.heads import registry
from tpo.model.sharding import zero_through_all


def token_indices(task_head: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Positions (long `[n_h]`) of each head's content tokens in `task_head [n]`; head k is
    `names[k]` (default: the registered heads)."""
    names = registry.names() if names is None else tuple(names)
    bad = (task_head < 0) | (task_head >= len(names))
    if bad.any():
        raise ValueError(
            f"task_head ids must lie in 0..{len(names) - 1}, got {task_head[bad].tolist()}"
        )
    return {name: (task_head == k).nonzero().flatten() for k, name in enumerate(names)}


def weighted_sum(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """Sum of `weight_dict[k] * losses[k]` over the keys of `weight_dict` present in `losses`."""
    terms = [losses[k] * w for k, w in weight_dict.items() if k in losses]
    if not terms:
        raise ValueError(f"weighted_sum: none of {sorted(weight_dict)} in losses {sorted(losses)}")
    return torch.stack([t.float() for t in terms]).sum()


class MultiTaskCriterion(nn.Module):
    """LM loss + per-head criteria on the content tokens routed to each head (`names`: head
    index -> name, default the registry's).

    total = lm_weight * lm_loss + sum_h weight[h] * sum_k weight_dict_h[k] * loss_h[k].
    A criterion is any callable `(outputs, targets) -> dict[str, Tensor]` with a `weight_dict`.
    Samples without a content token contribute only their LM loss.

    With `heads` given, 0 * (sum of each head's trainable parameters) joins the total, so every
    trainable parameter gets a (zero) gradient on every step even when its head had no token in
    the batch: DeepSpeed ZeRO reduces gradients in buckets filled by backward hooks, and ranks
    whose graphs touch different parameter sets would reduce mismatched buckets or hang.
    """

    def __init__(
        self,
        criteria: Mapping[str, Callable[..., dict[str, Tensor]]],
        weight: Mapping[str, float] | None = None,
        lm_weight: float = 1.0,
        names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.names = registry.names() if names is None else tuple(names)
        unknown = set(criteria) - set(self.names)
        if unknown:
            raise ValueError(
                f"MultiTaskCriterion: unknown heads {sorted(unknown)}; known {self.names}"
            )
        for name, crit in criteria.items():
            if not isinstance(getattr(crit, "weight_dict", None), Mapping):
                raise TypeError(
                    f"MultiTaskCriterion: criterion '{name}' has no weight_dict mapping"
                )
        self.criteria = dict(criteria)
        # registered too, so .to(device) moves the criteria's buffers
        self.criterion_modules = nn.ModuleDict(
            {k: v for k, v in criteria.items() if isinstance(v, nn.Module)}
        )
        unknown_weights = set(weight or {}) - set(self.names)
        if unknown_weights:
            raise ValueError(
                f"heads.task_weights: unknown heads {sorted(unknown_weights)}; known {self.names}"
            )
        self.weight = {name: 1.0 for name in criteria} | dict(weight or {})
        self.lm_weight = lm_weight

    def forward(
        self,
        head_outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        task_head: Tensor,
        lm_loss: Tensor | None = None,
        heads: Mapping[str, nn.Module] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`(total, losses)`: losses holds `lm`, each head's unweighted `{head}/{loss}` and its
        weighted contribution `{head}/weighted`; absent heads report zeros under the same keys.

        head_outputs: head name -> that head's output on its tokens (absent if it has none);
        targets: `[n]` dicts, one per content token; task_head `[n]`; lm_loss: scalar or None.
        """
        if len(targets) != len(task_head):
            raise ValueError(
                f"MultiTaskCriterion: {len(targets)} targets for {len(task_head)} content tokens"
            )
        device = lm_loss.device if lm_loss is not None else task_head.device
        zero = torch.zeros((), device=device)
        losses: dict[str, Tensor] = {"lm": lm_loss if lm_loss is not None else zero}
        total = losses["lm"].float() * self.lm_weight
        for name, idx in token_indices(task_head, self.names).items():
            crit = self.criteria.get(name)
            if len(idx) and crit is None:
                raise ValueError(
                    f"MultiTaskCriterion: {len(idx)} '{name}' tokens but no {name} criterion"
                )
            if crit is None:
                continue
            if len(idx):
                if name not in head_outputs:
                    raise ValueError(
                        f"MultiTaskCriterion: {len(idx)} '{name}' tokens but no '{name}' outputs"
                    )
                named = crit(head_outputs[name], [targets[i] for i in idx.tolist()])
                part = weighted_sum(named, crit.weight_dict) * self.weight.get(name, 1.0)
            else:
                named = dict.fromkeys(crit.weight_dict, zero)
                part = zero
            losses.update({f"{name}/{k}": v for k, v in named.items()})
            losses[f"{name}/weighted"] = part
            total = total + part
        for head in (heads or {}).values():  # a zero gradient for heads without samples
            total = total + zero_through_all(head).to(device)
        return total, losses
