"""Mask criterion: BCE + DICE over the sampled frames' masks (+ the official box-embedding L1).

Conventions of LISA / PixelLM / VideoLISA (docs/metrics.md): logits are upsampled (bilinear)
to the ground truth's resolution; BCE is the per-mask mean over pixels; DICE per mask is
1 - (2 sum(p g)/s + eps) / (sum(p)/s + sum(g)/s + eps) with p = sigmoid(logit), s = 1000,
eps = 1e-6; both are averaged over every mask (frame) in the batch. LISA divides each
sample's sum by (masks + 1e-8) and re-weights by the count, which is the same mean up to 1e-8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.config.heads import MaskHeadConfig
from tpo.heads.tracking import boxes_from_masks

DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def bce_per_mask(logits: Tensor, gt: Tensor) -> Tensor:
    """`[k]` mean binary cross-entropy over the pixels of each of `k` masks `[k, H, W]`."""
    loss = F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype), reduction="none")
    return loss.flatten(1).mean(1)


def dice_per_mask(
    logits: Tensor, gt: Tensor, scale: float = DICE_SCALE, eps: float = DICE_EPS
) -> Tensor:
    """`[k]` DICE loss of each mask `[k, H, W]` (LISA's scale and eps)."""
    p = logits.sigmoid().flatten(1)
    g = gt.to(p.dtype).flatten(1)
    num = 2 * (p / scale * g).sum(-1)
    den = (p / scale).sum(-1) + (g / scale).sum(-1)
    return 1 - (num + eps) / (den + eps)


def gt_box(target: Mapping[str, Tensor], masks: Tensor) -> Tensor | None:
    """Normalised xyxy box `[4]` for the box-embedding L1: `target["box"]` if given, else the
    tight box of the first non-empty ground-truth mask; None when every mask is empty."""
    if target.get("box") is not None:
        return target["box"].reshape(4).float()
    boxes = boxes_from_masks(masks)
    valid = ~boxes.isnan().any(-1)
    if not valid.any():
        return None
    h, w = masks.shape[-2:]
    return boxes[valid][0] / torch.tensor([w, h, w, h], dtype=torch.float32)


class MaskCriterion(nn.Module):
    """Named losses `loss_mask_bce`, `loss_mask_dice` (+ `loss_box_embed`) of a `MaskOutput`.

    Targets, one dict per `<tracking>` token: `masks` bool `[k, H0, W0]` on the token's `k`
    sampled frames (same order as its logits); optional `box` `[4]` normalised xyxy (else the
    first non-empty mask's box) for the box-embedding L1 (mean absolute difference between the
    predicted sparse prompt and SAM2's prompt-encoder embedding of the box).
    """

    def __init__(self, bce: float = 2.0, dice: float = 0.5, box_embed_l1: float = 0.0):
        super().__init__()
        weights = {"loss_mask_bce": bce, "loss_mask_dice": dice, "loss_box_embed": box_embed_l1}
        self.weight_dict = {k: float(w) for k, w in weights.items() if w}

    def forward(self, outputs, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Unweighted named losses (only those with a non-zero weight)."""
        if len(targets) != len(outputs.logits):
            raise ValueError(
                f"MaskCriterion: {len(targets)} targets for {len(outputs.logits)} mask predictions"
            )
        bce, dice, box_pred, box_gt = [], [], [], []
        for i, (logits, tgt) in enumerate(zip(outputs.logits, targets)):
            gt = tgt.get("masks")
            if gt is None or gt.ndim != 3 or len(gt) != len(logits):
                got = None if gt is None else tuple(gt.shape)
                raise ValueError(
                    f"mask target {i}: 'masks' must be bool [k={len(logits)}, H, W], got {got}"
                )
            gt = gt.to(logits.device)
            up = F.interpolate(
                logits[:, None].float(), size=gt.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
            bce.append(bce_per_mask(up, gt))
            dice.append(dice_per_mask(up, gt))
            if "loss_box_embed" in self.weight_dict:
                box = gt_box(tgt, gt.cpu())
                if box is not None:
                    box_pred.append(outputs.sparse[i])
                    box_gt.append(box)
        losses = {
            "loss_mask_bce": torch.cat(bce).mean(),
            "loss_mask_dice": torch.cat(dice).mean(),
        }
        if "loss_box_embed" in self.weight_dict:
            losses["loss_box_embed"] = self._box_embed_l1(outputs, box_pred, box_gt)
        return {k: v for k, v in losses.items() if k in self.weight_dict}

    @staticmethod
    def _box_embed_l1(outputs, pred: list[Tensor], boxes: list[Tensor]) -> Tensor:
        if not pred:  # no box anywhere: zero, still attached to the prompt
            return outputs.sparse.float().sum() * 0.0
        if outputs.embed_box is None:
            raise ValueError("MaskCriterion: box_embed_l1 needs MaskOutput.embed_box")
        target = outputs.embed_box(torch.stack(boxes)).float()  # [m, 3, 256]
        pred_t = torch.stack(pred).float()
        if pred_t.shape != target.shape:
            raise ValueError(
                f"MaskCriterion: sparse prompt {tuple(pred_t.shape[1:])} vs box embedding "
                f"{tuple(target.shape[1:])}; box_embed_l1 needs prompt_tokens 3"
            )
        return F.l1_loss(pred_t, target.to(pred_t.device))


def build_mask_criterion(cfg: MaskHeadConfig) -> MaskCriterion:
    """Mask criterion with the config's loss weights."""
    return MaskCriterion(bce=cfg.bce, dice=cfg.dice, box_embed_l1=cfg.box_embed_l1)
