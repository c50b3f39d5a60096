"""SAM2's video predictor on in-memory frames: frame preparation, the inference state, the three
seeds (a mask, a box, an embedding prompt as the official `add_new_box_embeding`) and
propagation. Masks come back at the video's own resolution.

sam2 (1.x) reads videos only from an mp4 path or a JPEG folder, and its video API has no
embedding prompt; the two hooks below (`_in_memory_frames`, `_sparse_prompt_replaced`) let
sam2's own predictor code run on tensors and on a given sparse prompt, so everything else
(multimask choice, consolidation, memory encoding, object pointers) stays sam2's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAM_MEAN = (0.485, 0.456, 0.406)  # SAM2's image normalisation (sam2.utils.transforms)
SAM_STD = (0.229, 0.224, 0.225)


def to_sam_input(frames: Tensor, image_size: int) -> Tensor:
    """RGB frames `[k, 3, H, W]` (uint8, or float in [0, 1]) -> `[k, 3, S, S]` float normalised.

    As the official `get_transform('Mask')`: to float /255 first, then a bicubic resize of the
    floats (antialiased) to SAM's square input without keeping the aspect ratio, then SAM2's
    mean/std. The one frame preparation of both the training features and tracking.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"SAM2 frames must be RGB [k, 3, H, W], got {tuple(frames.shape)}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True)
    mean = x.new_tensor(SAM_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(SAM_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class PreparedFrames:
    """The video `[T, 3, H, W]` as sam2's inference state reads it (`len`, `[t]` -> `[3, S, S]`):
    each frame prepared (`to_sam_input`) on `device` when sam2 asks for it, so a long video is
    never held at SAM's resolution all at once."""

    def __init__(self, frames: Tensor, image_size: int, device: torch.device):
        self.frames = frames
        self.image_size = image_size
        self.device = device

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> Tensor:
        return to_sam_input(self.frames[t : t + 1].to(self.device), self.image_size)[0]


@contextlib.contextmanager
def _in_memory_frames(frames: PreparedFrames, height: int, width: int) -> Iterator[None]:
    """sam2's `init_state` reading `frames` instead of loading a video path."""
    # function-level: sam2 only when a mask head tracks
    from sam2 import sam2_video_predictor

    # init_state calls this module-level loader and nothing else reads the path; patched for
    # the one call (not thread-safe: one init_state at a time per process)
    with mock.patch.object(
        sam2_video_predictor, "load_video_frames", lambda **_: (frames, height, width)
    ):
        yield


def video_state(sam: nn.Module, frames: Tensor) -> dict[str, Any]:
    """sam2's inference state for video `frames [T, 3, H, W]` (uint8 or float in [0, 1]),
    built in memory (no files); its outputs come back at H x W."""
    if frames.ndim != 4 or frames.shape[1] != 3 or len(frames) == 0:
        raise ValueError(f"propagate: frames must be [T>=1, 3, H, W], got {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    prepared = PreparedFrames(frames, int(sam.image_size), sam.device)
    with _in_memory_frames(prepared, int(h), int(w)):
        return sam.init_state(video_path="<in-memory frames>", offload_video_to_cpu=True)


@contextlib.contextmanager
def _sparse_prompt_replaced(
    sam: nn.Module, sparse: Tensor, dense: Tensor | None = None
) -> Iterator[None]:
    """SAM2's prompt encoder giving `sparse [1, t, 256]` (and `dense [1, 256, h, w]` when
    given) in place of what it computes, as the official `_forward_sam_heads_embed` replaces
    the sparse embedding of its dummy box."""
    encoder = sam.sam_prompt_encoder
    original = encoder.forward

    def replaced(points: Any, boxes: Any, masks: Any) -> tuple[Tensor, Tensor]:
        own_sparse, own_dense = original(points=points, boxes=boxes, masks=masks)
        new_dense = own_dense if dense is None else dense.to(own_dense)
        return sparse.to(own_sparse).expand(len(own_sparse), -1, -1), new_dense

    encoder.forward = replaced  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield
    finally:
        del encoder.forward


def seed_embedding(
    sam: nn.Module,
    state: dict[str, Any],
    frame: int,
    sparse: Tensor,
    dense: Tensor | None = None,
) -> Tensor:
    """Prompt `frame` with a sparse prompt `[1, t, 256]` (the official `add_new_box_embeding`:
    a dummy all-zero box, its sparse embedding replaced); its logits `[H, W]` at video size.

    The dummy box makes the frame a point-prompted conditioning frame, so sam2 decodes it with
    a single mask (dynamic multimask via stability) and binarises it for the memory encoder.
    """
    if sparse.ndim != 3 or sparse.shape[0] != 1:
        raise ValueError(f"seed_embedding: sparse must be [1, t, 256], got {tuple(sparse.shape)}")
    box = torch.zeros(4, dtype=torch.float32)
    with _sparse_prompt_replaced(sam, sparse, dense):
        _, _, logits = sam.add_new_points_or_box(state, frame, 1, box=box, normalize_coords=True)
    return logits[0, 0]


def seed_mask(sam: nn.Module, state: dict[str, Any], frame: int, mask: Tensor) -> Tensor:
    """Prompt `frame` with a mask `[S, S]` (any size: sam2 resizes it); logits `[H, W]`."""
    _, _, logits = sam.add_new_mask(state, frame, 1, mask.bool().cpu())
    return logits[0, 0]


def seed_box(sam: nn.Module, state: dict[str, Any], frame: int, box_xyxy: Tensor) -> Tensor:
    """Prompt `frame` with SAM2's box prompt (pixel xyxy of the video); logits `[H, W]`."""
    box = torch.as_tensor(box_xyxy, dtype=torch.float32).reshape(4).cpu()
    _, _, logits = sam.add_new_points_or_box(state, frame, 1, box=box, normalize_coords=True)
    return logits[0, 0]


def propagate_logits(sam: nn.Module, state: dict[str, Any], prompt_frame: int) -> Tensor:
    """Mask logits `[T, H, W]` of every frame: sam2's `propagate_in_video` from the seeded
    `prompt_frame` forward, then backward when it is not the first frame."""
    num = int(state["num_frames"])
    h, w = int(state["video_height"]), int(state["video_width"])
    out = torch.zeros(num, h, w)
    # function-level: sam2 only when a mask head tracks
    from sam2 import sam2_video_predictor

    # sam2 wraps every propagation in a tqdm bar of its own, which floods benchmark logs; the
    # callers show their own progress (patched for the call, as `_in_memory_frames`)
    with mock.patch.object(sam2_video_predictor, "tqdm", lambda it, **_: it):
        for reverse in (False, True):
            if reverse and prompt_frame == 0:
                continue
            for idx, _, logits in sam.propagate_in_video(
                state, start_frame_idx=prompt_frame, reverse=reverse
            ):
                out[idx] = logits[0, 0].float().cpu()
    return out
