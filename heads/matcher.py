"""Hungarian matching between predicted and ground-truth spans (DETR-style, no gradient)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from tpo.heads.span_ops import generalized_temporal_iou, span_cw_to_xx


class HungarianMatcher(nn.Module):
    """One-to-one assignment of the `q` predicted spans of each sample to its `k` targets.

    cost = cost_span * L1(cw) - cost_giou * GIoU(xx) - cost_class * p(foreground); the cost
    matrix is computed once for the whole batch and solved per sample with scipy's
    `linear_sum_assignment`. Class index 0 is foreground (as moment-DETR).
    """

    def __init__(self, cost_span: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0):
        super().__init__()
        if cost_span == cost_giou == cost_class == 0:
            raise ValueError("HungarianMatcher: all costs are 0, the assignment would be arbitrary")
        self.cost_span = cost_span
        self.cost_giou = cost_giou
        self.cost_class = cost_class

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_spans: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match `pred_logits [b, q, 2]`, `pred_spans [b, q, 2]` (cw) to `targets[i]["spans"]`.

        Returns one `(pred_idx [k_i], tgt_idx [k_i])` int64 pair per sample; k_i = min(q, n_i),
        empty for a sample without targets.
        """
        b, q = pred_spans.shape[:2]
        if len(targets) != b:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {b}")
        sizes = [len(t["spans"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(b)]

        prob = pred_logits.flatten(0, 1).float().softmax(-1)  # [b*q, 2]
        spans = pred_spans.flatten(0, 1).float()  # [b*q, 2]
        tgt = torch.cat([t["spans"] for t in targets]).to(spans)  # [sum k, 2]

        cost_span = torch.cdist(spans, tgt, p=1)  # [b*q, sum k]
        cost_giou = -generalized_temporal_iou(span_cw_to_xx(spans), span_cw_to_xx(tgt))
        cost_class = -prob[:, :1]  # [b*q, 1], broadcast over targets
        cost = (
            self.cost_span * cost_span + self.cost_giou * cost_giou + self.cost_class * cost_class
        )
        cost = cost.view(b, q, -1).cpu()  # [b, q, sum k]

        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(c[i].numpy())  # rows sorted increasing
            as_long = (
                torch.as_tensor(rows, dtype=torch.int64),
                torch.as_tensor(cols, dtype=torch.int64),
            )
            indices.append(as_long)
        return indices


SET_LOSSES = ("loss_span", "loss_giou", "loss_label")  # the matched-set terms, per decoder layer


def set_weight_dict(
    weights: dict[str, float], known: set[str] | tuple[str, ...], aux_layers: int, owner: str
) -> dict[str, float]:
    """The non-zero `weights` plus `{name}_{i}` copies of the set terms for the `aux_layers`
    auxiliary decoder outputs; a name not in `known` is an error naming `owner`."""
    unknown = set(weights) - set(known)
    if unknown:
        raise ValueError(f"{owner}: unknown loss weights {sorted(unknown)}")
    out = {k: float(w) for k, w in weights.items() if w != 0}
    for i in range(aux_layers):
        out.update({f"{k}_{i}": out[k] for k in SET_LOSSES if k in out})
    return out
