"""Which sampled frames of a mask sample carry a ground-truth mask, and reading them at the
video's resolution: shared by the mask head's training targets and the learning bench."""

from __future__ import annotations

import torch

from tpo.data.dataset import Sample
from tpo.data.video import open_source


def evenly_spaced(idx: torch.Tensor, k: int) -> torch.Tensor:
    """Up to `k` entries of `idx` `[m]`, spread evenly from its first to its last."""
    return idx[torch.linspace(0, len(idx) - 1, min(k, len(idx))).round().long()]


def annotated_mask_frames(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled positions of a mask sample with a GT mask: (object visible `[m]`, empty `[m']`)."""
    seen = sample.masks.flatten(1).any(1)
    return (sample.mask_valid & seen).nonzero()[:, 0], (sample.mask_valid & ~seen).nonzero()[:, 0]


def read_mask_frames(sample: Sample, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled frames `pick` `[k]` of a mask sample, uint8 `[k, 3, H0, W0]` read at the
    video's resolution, and their GT masks bool `[k, H0, W0]`."""
    frames = open_source(sample.record.video).read(sample.indices[pick.numpy()])
    return frames, sample.masks[pick]


def pick_mask_frames(sample: Sample, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `k` annotated sampled frames of a mask sample and their masks, as
    `read_mask_frames`.

    Frames where the object is visible come first (spread over its visible span), plus one
    annotated frame without it when there is one, so the head learns both to segment and to
    predict nothing; frames taken evenly from the whole clip would mostly be empty (objects
    come and go), and a head trained on them learns to predict nothing at all.
    """
    visible, absent = annotated_mask_frames(sample)
    if len(visible) and len(absent):
        n_vis = min(len(visible), k - 1)
        pick = torch.cat([evenly_spaced(visible, n_vis), evenly_spaced(absent, k - n_vis)])
    else:
        pick = evenly_spaced(visible if len(visible) else absent, k)
    return read_mask_frames(sample, pick.sort().values)
