"""Losses of the temporal head (DETR `SetCriterion` style): spans, foreground, saliency.

Targets, one dict per `<temp>` token:
    spans: `[k, 2]` ground-truth windows, (centre, width) normalised by the duration (k may be 0).
    saliency: `[t_i]` float scores (0 = not relevant) aligned with the head's feature frames
        (optional: a sample without it takes no part in the saliency losses).
    saliency_mask: `[t_i]` bool, frames whose score is known (optional, default all).

All losses are returned unweighted; `weight_dict` holds their weights (`weighted_sum` in
`tpo.heads.criterion` combines them). Reductions follow moment-DETR: means over elements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.config.heads import TemporalHeadConfig
from tpo.heads.matcher import SET_LOSSES, HungarianMatcher, set_weight_dict
from tpo.heads.span_ops import span_cw_to_xx, span_giou_loss

if TYPE_CHECKING:  # annotations only: the head module imports this one to build its criterion
    from tpo.heads.temporal import TemporalOutput


class TemporalCriterion(nn.Module):
    """Hungarian-matched span L1 + GIoU, foreground CE, and two saliency ranking losses.

    loss_span: L1 between matched (centre, width), mean over elements.
    loss_giou: 1 - GIoU of matched (start, end), mean over matched spans.
    loss_label: cross-entropy fg (class 0) / no-object (class 1) per query, class weights
        [1, eos_coef], mean over all queries (moment-DETR's reduction).
    loss_saliency: margin ranking, mean over every ordered pair (a, b) of labelled frames of a
        sample with score[a] > score[b] of relu(margin - (saliency[a] - saliency[b])).
    loss_saliency_rank: rank-contrastive (as QD-DETR / CG-DETR): for each positive score level r
        of a sample with frames below r, -mean over frames with score >= r of
        log softmax(saliency / tau) over the labelled frames; mean over (sample, level).
    loss_frame_fg: binary cross-entropy of the per-frame foreground logits (when the head has
        them) against 1 for frames whose time lies inside a ground-truth window, else 0, mean
        over the valid frames.
    loss_*_{i}: the set losses of decoder layer i (aux), when `aux_layers` > 0.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weights: dict[str, float],
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        saliency_tau: float = 0.5,
        aux_layers: int = 0,
    ):
        super().__init__()
        known = {*SET_LOSSES, "loss_saliency", "loss_saliency_rank", "loss_frame_fg"}
        self.weight_dict = set_weight_dict(weights, known, aux_layers, "TemporalCriterion")
        self.matcher = matcher
        self.saliency_margin = saliency_margin
        self.saliency_tau = saliency_tau
        self.aux_layers = aux_layers
        self.register_buffer("empty_weight", torch.tensor([1.0, eos_coef]), persistent=False)

    def forward(
        self, outputs: TemporalOutput, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Named unweighted losses (keys of `weight_dict`) for `outputs` against `targets`."""
        n = outputs.pred_spans.shape[0]
        if len(targets) != n:
            raise ValueError(f"TemporalCriterion: {len(targets)} targets for {n} predictions")
        for i, tgt in enumerate(targets):
            spans = tgt.get("spans")
            if spans is None or spans.dim() != 2 or spans.shape[-1] != 2:
                got = None if spans is None else tuple(spans.shape)
                raise ValueError(
                    f"temporal target {i}: 'spans' must be [k, 2] (centre, width), got {got}"
                )
        losses = self._set_losses(outputs.pred_logits, outputs.pred_spans, targets)
        if len(outputs.aux) < self.aux_layers:
            raise ValueError(
                f"TemporalCriterion: {self.aux_layers} aux layers expected, got {len(outputs.aux)}"
            )
        for i, aux in enumerate(outputs.aux[: self.aux_layers]):
            aux_losses = self._set_losses(aux["pred_logits"], aux["pred_spans"], targets)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        losses.update(self._saliency_losses(outputs, targets))
        if outputs.frame_logits is not None:
            losses["loss_frame_fg"] = self._frame_loss(outputs, targets)
        return {k: v for k, v in losses.items() if k in self.weight_dict}

    def _set_losses(
        self, logits: Tensor, spans: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Span L1, span GIoU and fg CE of one decoder layer (`[n, q, 2]` logits and spans)."""
        indices = self.matcher(logits, spans, targets)
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices]).to(spans.device)
        batch_idx = batch_idx.to(spans.device)
        src = spans[batch_idx, src_idx].float()  # [K, 2]
        tgt = torch.cat(
            [t["spans"][j.to(t["spans"].device)] for t, (_, j) in zip(targets, indices)]
        )
        tgt = tgt.to(src)
        if len(src):
            loss_span = F.l1_loss(src, tgt)
            loss_giou = span_giou_loss(span_cw_to_xx(src), span_cw_to_xx(tgt)).mean()
        else:  # no target spans in the batch: zero, still attached to the graph
            loss_span = loss_giou = spans.sum() * 0.0
        classes = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)  # no-object
        classes[batch_idx, src_idx] = 0
        weight = self.empty_weight.to(logits.device)
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), classes, weight.float(), reduction="none"
        )
        return {"loss_span": loss_span, "loss_giou": loss_giou, "loss_label": ce.mean()}

    def _frame_loss(self, outputs: TemporalOutput, targets: list[dict[str, Tensor]]) -> Tensor:
        """BCE of the frame foreground logits; label 1 inside any target window."""
        labels = torch.zeros_like(outputs.tau, dtype=torch.float32)  # [n, t]
        for i, tgt in enumerate(targets):
            xx = span_cw_to_xx(tgt["spans"].to(outputs.tau).float())  # [k, 2]
            if len(xx):
                tau = outputs.tau[i, :, None].float()
                labels[i] = ((tau >= xx[:, 0]) & (tau <= xx[:, 1])).any(-1).float()
        bce = F.binary_cross_entropy_with_logits(
            outputs.frame_logits.float(), labels, reduction="none"
        )
        mask = outputs.mask
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    def _saliency_labels(
        self, outputs: TemporalOutput, targets: list[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """Padded labels `[n, t]` and the mask `[n, t]` of frames whose label is known."""
        n, t = outputs.saliency.shape
        device = outputs.saliency.device
        labels = torch.zeros(n, t, device=device)
        known = torch.zeros(n, t, dtype=torch.bool, device=device)
        for i, tgt in enumerate(targets):
            scores = tgt.get("saliency")
            if scores is None:
                continue
            if scores.dim() != 1 or len(scores) > t:
                raise ValueError(
                    f"temporal target {i}: 'saliency' must be [t_i] with t_i <= {t} frames, "
                    f"got {tuple(scores.shape)}"
                )
            k = len(scores)
            labels[i, :k] = scores.to(device).float()
            known[i, :k] = True
            if tgt.get("saliency_mask") is not None:
                known[i, :k] &= tgt["saliency_mask"].to(device).bool()
        return labels, known & outputs.mask

    def _saliency_losses(
        self, outputs: TemporalOutput, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Margin ranking and rank-contrastive losses of the per-frame saliency."""
        sal = outputs.saliency.float()  # [n, t]
        labels, known = self._saliency_labels(outputs, targets)
        zero = sal.sum() * 0.0
        pairs = (labels[:, :, None] > labels[:, None, :]) & known[:, :, None] & known[:, None, :]
        hinge = F.relu(self.saliency_margin - (sal[:, :, None] - sal[:, None, :]))  # [n, t, t]
        margin = (hinge * pairs).sum() / pairs.sum() if pairs.any() else zero
        losses = {"loss_saliency": margin}
        if "loss_saliency_rank" not in self.weight_dict:
            return losses
        terms = []
        logits = (sal / self.saliency_tau).masked_fill(~known, float("-inf"))
        for i in range(len(sal)):
            if not known[i].any():
                continue
            log_prob = logits[i].log_softmax(-1)  # [t], -inf outside the labelled frames
            for level in labels[i][known[i] & (labels[i] > 0)].unique():
                pos = known[i] & (labels[i] >= level)
                if (known[i] & ~pos).any():  # a level without negatives ranks nothing
                    terms.append(-log_prob[pos].mean())
        losses["loss_saliency_rank"] = torch.stack(terms).mean() if terms else zero
        return losses


def build_temporal_criterion(cfg: TemporalHeadConfig) -> TemporalCriterion:
    """Criterion (and matcher, costs = the loss weights, as moment-DETR) from the config."""
    matcher = HungarianMatcher(cost_span=cfg.span_l1, cost_giou=cfg.span_giou, cost_class=cfg.fg_ce)
    weights = {
        "loss_span": cfg.span_l1,
        "loss_giou": cfg.span_giou,
        "loss_label": cfg.fg_ce,
        "loss_saliency": cfg.saliency,
        "loss_saliency_rank": cfg.saliency_rank,
        "loss_frame_fg": cfg.frame_fg if cfg.windows_from == "frames" else 0.0,
    }
    aux = cfg.dec_layers - 1 if cfg.aux_loss else 0
    return TemporalCriterion(
        matcher, weights, cfg.eos_coef, cfg.saliency_margin, cfg.saliency_tau, aux
    )
