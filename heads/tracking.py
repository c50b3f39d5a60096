"""Box tracking (LaSOT / GOT-10k style) from SAM2 masks propagated over a video.

Box convention: pixel edges, xyxy with x2 = last foreground column + 1 (so x2 - x1 is the
number of foreground columns); xywh = (x1, y1, x2 - x1, y2 - y1), the LaSOT/GOT-10k layout
(LaSOT's pixel-inclusive right edge x + w - 1 is then the last foreground column).
An empty mask has no box: its row is NaN (flagged invalid) or, with `carry`, the last valid box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes

from tpo.heads.sam2_backend import SAM2Backend


def boxes_from_masks(masks: Tensor, fmt: str = "xyxy", carry: bool = False) -> Tensor:
    """Tight boxes `[T, 4]` float of bool masks `[T, H, W]` (pixel units, see module doc).

    Empty masks give NaN rows, or with `carry` the previous valid box (NaN before the first).
    `fmt` "xyxy" or "xywh".
    """
    if masks.ndim != 3:
        raise ValueError(f"boxes_from_masks: masks must be [T, H, W], got {tuple(masks.shape)}")
    if fmt not in ("xyxy", "xywh"):
        raise ValueError(f"boxes_from_masks: fmt must be 'xyxy' or 'xywh', not {fmt!r}")
    masks = masks.bool()
    boxes = torch.full((len(masks), 4), float("nan"))
    valid = masks.flatten(1).any(1).cpu()
    if valid.any():
        # torchvision gives the inclusive last pixel; +1 turns it into the pixel edge
        tight = masks_to_boxes(masks[valid.to(masks.device)]).float().cpu()
        boxes[valid] = tight + torch.tensor([0.0, 0.0, 1.0, 1.0])
    if carry:
        boxes = carry_forward(boxes)
    return xyxy_to_xywh(boxes) if fmt == "xywh" else boxes


def carry_forward(boxes: Tensor) -> Tensor:
    """`[T, 4]` boxes with each NaN row replaced by the last valid row before it (if any)."""
    out = boxes.clone()
    for t in range(1, len(out)):
        if out[t].isnan().any():
            out[t] = out[t - 1]
    return out


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """`[..., 4]` (x1, y1, x2, y2) -> (x1, y1, w, h); NaN stays NaN."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


@dataclass
class TrackResult:
    """A tracked object: `masks [T, H, W]` bool and `boxes [T, 4]` (NaN rows: lost)."""

    masks: Tensor
    boxes: Tensor


def track_from_box(
    backend: SAM2Backend,
    frames: Tensor,
    box_xyxy: Sequence[float] | Tensor,
    frame: int = 0,
    fmt: str = "xyxy",
    carry: bool = False,
) -> TrackResult:
    """Track the object in pixel `box_xyxy` of `frames[frame]` over frames `[T, 3, H, W]`.

    SAM2 is prompted with the real box prompt on that frame and its video predictor
    propagates; boxes follow from the masks (`boxes_from_masks`), the given box on `frame`.
    """
    box = torch.as_tensor(box_xyxy, dtype=torch.float32).reshape(-1)
    h, w = frames.shape[-2:]
    if box.numel() != 4 or not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
        raise ValueError(
            f"track_from_box: box_xyxy must be 4 pixel coordinates x1 < x2 <= {w}, "
            f"y1 < y2 <= {h}, got {box.tolist()}"
        )
    masks = backend.propagate(frames, prompt_frame=frame, box_xyxy=box)
    boxes = boxes_from_masks(masks)
    boxes[frame] = box
    if carry:
        boxes = carry_forward(boxes)
    return TrackResult(masks, xyxy_to_xywh(boxes) if fmt == "xywh" else boxes)
