"""Temporal span operations: centre-width <-> start-end, pairwise IoU / GIoU, NMS.

Spans are `[..., 2]` tensors, either `cw` (centre, width) or `xx` (start, end), in any unit
(normalised [0, 1] inside the heads, seconds after post-processing).

A span (s, e) is lifted to the box (s, 0, e, 1): the box IoU, the enclosing box and so the GIoU
of lifted boxes equal the 1-d ones exactly, so torchvision's box ops do the work (no hand-written
interval arithmetic to keep in sync).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou, generalized_box_iou_loss, nms


def span_cw_to_xx(spans: Tensor) -> Tensor:
    """(centre, width) `[..., 2]` -> (start, end) `[..., 2]`."""
    centre, width = spans.unbind(-1)
    return torch.stack([centre - 0.5 * width, centre + 0.5 * width], dim=-1)


def span_xx_to_cw(spans: Tensor) -> Tensor:
    """(start, end) `[..., 2]` -> (centre, width) `[..., 2]`."""
    start, end = spans.unbind(-1)
    return torch.stack([0.5 * (start + end), end - start], dim=-1)


def _lift(spans: Tensor) -> Tensor:
    """(start, end) `[n, 2]` -> boxes (start, 0, end, 1) `[n, 4]`."""
    if spans.dim() != 2 or spans.shape[-1] != 2:
        raise ValueError(f"expected spans of shape [n, 2] (start, end), got {tuple(spans.shape)}")
    zeros = spans.new_zeros(spans.shape[0])
    return torch.stack([spans[:, 0], zeros, spans[:, 1], zeros + 1], dim=-1)


def temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Pairwise IoU of (start, end) spans `[n, 2]` x `[m, 2]` -> `[n, m]`."""
    return box_iou(_lift(spans1), _lift(spans2))


def generalized_temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Pairwise generalised IoU of (start, end) spans `[n, 2]` x `[m, 2]` -> `[n, m]` in [-1, 1].

    GIoU = IoU - (hull - union) / hull, hull = the smallest span covering both.
    """
    return generalized_box_iou(_lift(spans1), _lift(spans2))


def span_nms(spans: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of (start, end) spans `[n, 2]` kept by NMS, by decreasing `scores` `[n]`."""
    return nms(_lift(spans).float(), scores.float(), iou_threshold)


def span_giou_loss(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Element-wise 1 - GIoU of paired (start, end) spans `[n, 2]`, `[n, 2]` -> `[n]`."""
    return generalized_box_iou_loss(_lift(spans1), _lift(spans2), reduction="none")
