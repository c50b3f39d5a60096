"""Which sampled frames of a mask sample carry a ground-truth mask, and reading them at the
video's resolution: shared by the training collate (the mask loss) and the learning bench."""

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
