"""Tracking boxes from masks (hand-computed) and box-prompted SAM2 tracking (hiera-t, 256 px)."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.config.heads import MaskHeadConfig
from tpo.heads.mask import build_sam2_backend
from tpo.heads.tracking import boxes_from_masks, carry_forward, track_from_box, xyxy_to_xywh

pytestmark = pytest.mark.usefixtures("one_thread")  # SAM2 runs fastest single-threaded


def _masks() -> torch.Tensor:
    masks = torch.zeros(4, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True  # rows 2..4, cols 3..6
    masks[1, 0, 11] = True  # one pixel in the top-right corner
    masks[3, 6:10, 0:2] = True  # frame 2 stays empty
    masks[3, 1, 5] = True  # a second blob widens the box
    return masks


def test_boxes_from_masks_hand_computed():
    boxes = boxes_from_masks(_masks())
    assert boxes[0].tolist() == [3, 2, 7, 5]  # x2, y2 are edges: last pixel + 1
    assert boxes[1].tolist() == [11, 0, 12, 1]
    assert all(math.isnan(v) for v in boxes[2].tolist())  # empty mask: flagged invalid
    assert boxes[3].tolist() == [0, 1, 6, 10]
    xywh = boxes_from_masks(_masks(), fmt="xywh")
    assert xywh[0].tolist() == [3, 2, 4, 3] and xywh[3].tolist() == [0, 1, 6, 9]


def test_carry_keeps_last_valid_box():
    masks = _masks()
    masks[0] = False
    carried = boxes_from_masks(masks, carry=True)
    assert carried[0].isnan().all()  # nothing to carry before the first valid box
    assert carried[2].tolist() == [11, 0, 12, 1]
    assert carried[1].tolist() == [11, 0, 12, 1] and carried[3].tolist() == [0, 1, 6, 10]
    by_hand = carry_forward(torch.tensor([[1.0, 2, 3, 4], [math.nan] * 4, [5, 6, 7, 8]]))
    assert by_hand.tolist() == [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert xyxy_to_xywh(torch.tensor([[1.0, 2.0, 4.0, 8.0]])).tolist() == [[1, 2, 3, 6]]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"masks must be \[T, H, W\]"):
        boxes_from_masks(torch.zeros(10, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="fmt must be"):
        boxes_from_masks(_masks(), fmt="cxcywh")


@pytest.fixture(scope="module")
def backend():
    cfg = MaskHeadConfig("configs/sam2.1/sam2.1_hiera_t.yaml", None, 256, train_decoder=False)
    return build_sam2_backend(cfg)


def test_track_from_box(backend):
    frames = torch.zeros(3, 3, 48, 64, dtype=torch.uint8)
    for t in range(3):
        frames[t, 1, 8 + 4 * t : 24 + 4 * t, 10 + 8 * t : 26 + 8 * t] = 255
    result = track_from_box(backend, frames, [10, 12, 26, 24], frame=1)
    assert result.masks.shape == (3, 48, 64) and result.masks.dtype == torch.bool
    assert result.boxes.shape == (3, 4)
    assert result.boxes[1].tolist() == [10, 12, 26, 24]  # the given box on its frame
    for t in (0, 2):  # other frames: the tight box of their mask, or NaN when empty
        expected = boxes_from_masks(result.masks[t : t + 1])[0]
        assert torch.equal(result.boxes[t].nan_to_num(-1), expected.nan_to_num(-1))
    with pytest.raises(ValueError, match="box_xyxy must be 4 pixel coordinates"):
        track_from_box(backend, frames, [10, 12, 5, 24])
