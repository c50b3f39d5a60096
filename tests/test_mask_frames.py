"""Which annotated frames of a mask sample the mask loss sees (`MaskHead.targets_from`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tpo.data.sample_frames
from tpo.heads.mask import MaskHead


class _Reader:
    """Stands in for a video: frame i is filled with the value i."""

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return torch.tensor(idx, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 4, 4)


@pytest.fixture(autouse=True)
def _fake_video(monkeypatch):
    monkeypatch.setattr(tpo.data.sample_frames, "open_source", lambda path: _Reader())


def collate_mask_frames(sample) -> tuple[torch.Tensor, torch.Tensor]:
    found = MaskHead.targets_from(sample)
    return found.mask_frames, found.targets["masks"]


def _sample(visible: list[int], valid: list[int], f: int = 8) -> SimpleNamespace:
    masks = torch.zeros(f, 6, 6, dtype=torch.bool)
    masks[visible, 2:4, 2:4] = True
    mask_valid = torch.zeros(f, dtype=torch.bool)
    mask_valid[valid] = True
    indices = np.arange(f) * 10 + 5  # decoded frame numbers of the sampled positions
    return SimpleNamespace(
        masks=masks, mask_valid=mask_valid, indices=indices, record=SimpleNamespace(video="v")
    )


def test_visible_frames_first_and_one_without_the_object():
    assert MaskHead.train_frames == 3
    # object on positions 2-5 of 8; the first and last positions (the old pick) are empty
    s = _sample(visible=[2, 3, 4, 5], valid=list(range(8)))
    frames, masks = collate_mask_frames(s)
    assert frames[:, 0, 0, 0].tolist() == [5, 25, 55]  # position 0 (empty), then 2 and 5
    assert masks.flatten(1).any(1).tolist() == [False, True, True]


def test_only_annotated_frames_and_single_kind():
    s = _sample(visible=[1, 3, 6], valid=[1, 3, 6, 7])
    frames, masks = collate_mask_frames(s)
    assert frames[:, 0, 0, 0].tolist() == [15, 65, 75]  # two visible (spread) + the empty 7
    everywhere = _sample(visible=list(range(8)), valid=list(range(8)))
    frames, masks = collate_mask_frames(everywhere)
    assert frames[:, 0, 0, 0].tolist() == [5, 45, 75] and bool(masks.flatten(1).any(1).all())
    nowhere = _sample(visible=[], valid=[0, 4])
    frames, masks = collate_mask_frames(nowhere)
    assert frames[:, 0, 0, 0].tolist() == [5, 45] and not masks.any()


def test_no_mask_targets_without_an_annotated_sampled_frame():
    s = _sample(visible=[], valid=[])
    assert MaskHead.targets_from(s) is None
    s.masks = None
    assert MaskHead.targets_from(s) is None
