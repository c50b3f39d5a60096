"""Grounded-answer types (JSON / RLE round trips) and the timeline, contact sheet and overlay
video writers, on a toy-world video."""

from __future__ import annotations

import json

import decord
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tpo.data.toyworld import render_video
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack, TimeWindow
from tpo.infer.visualize import contact_sheet, overlay_video, plot_timeline

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def toy():
    """Frames `[f, 128, 128, 3]` and one object's masks/boxes over 16 frames where it shows."""
    video = render_video(0, 3)
    obj = video.objects[0]
    idx = np.arange(obj.t0, obj.t0 + 16)
    return {
        "frames": video.frames[idx],
        "masks": obj.masks[idx],
        "boxes": obj.boxes[idx],
        "idx": idx,
        "fps": video.fps,
        "duration": video.duration,
    }


def _answer(toy, windows=None) -> GroundedAnswer:
    times = np.arange(0, toy["duration"], 0.5)
    return GroundedAnswer(
        text="Where is the yellow circle?",
        heads=["temporal", "region", "mask"],
        windows=windows if windows is not None else [TimeWindow(7.5, 12.0, 0.9)],
        saliency=np.sin(times) ** 2,
        saliency_times=times,
        boxes=[BoxPrediction(tuple(toy["boxes"][0]), int(toy["idx"][0]), toy["idx"][0] / 8.0)],
        masks=MaskTrack(toy["masks"], toy["idx"], toy["fps"]),
        video="toy_00003.mp4",
        duration=toy["duration"],
        fps=toy["fps"],
    )


def _png(path) -> np.ndarray:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def test_mask_track_rle_round_trip(toy):
    track = MaskTrack(toy["masks"], toy["idx"], toy["fps"])
    rles = track.to_rle()
    assert len(rles) == 16 and all(isinstance(r["counts"], str) for r in rles)
    assert rles[0]["size"] == [128, 128]
    back = MaskTrack.from_rle(rles, toy["idx"], toy["fps"])
    np.testing.assert_array_equal(back.masks, toy["masks"])
    np.testing.assert_array_equal(back.frame_indices, toy["idx"])
    as_bytes = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
    np.testing.assert_array_equal(MaskTrack.from_rle(as_bytes, toy["idx"], 8.0).masks, back.masks)
    np.testing.assert_allclose(track.times, toy["idx"] / 8.0)
    empty = MaskTrack.from_rle([], [], 8.0, size=(4, 6))
    assert empty.masks.shape == (0, 4, 6) and empty.to_rle() == []


def test_grounded_answer_json_round_trip(toy):
    answer = _answer(toy)
    data = json.loads(json.dumps(answer.to_json()))
    back = GroundedAnswer.from_json(data)
    assert back.text == answer.text and back.heads == answer.heads
    assert back.windows == answer.windows and back.boxes == answer.boxes
    np.testing.assert_allclose(back.saliency, answer.saliency)
    np.testing.assert_allclose(back.saliency_times, answer.saliency_times)
    np.testing.assert_array_equal(back.masks.masks, toy["masks"])
    np.testing.assert_array_equal(back.masks.frame_indices, toy["idx"])
    assert (back.video, back.duration, back.fps) == ("toy_00003.mp4", 16.0, 8.0)
    bare = GroundedAnswer.from_json(json.loads(json.dumps(GroundedAnswer("yes").to_json())))
    assert bare == GroundedAnswer("yes")


def test_bad_answer_fields_raise():
    with pytest.raises(ValueError, match="end >= start"):
        TimeWindow(3.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="one frame index per mask"):
        MaskTrack(np.zeros((3, 4, 4), bool), [0, 1], 8.0)
    with pytest.raises(ValueError, match=r"\[f, H, W\]"):
        MaskTrack(np.zeros((4, 4), bool), [0], 8.0)
    with pytest.raises(ValueError, match="one time per saliency score"):
        GroundedAnswer("x", saliency=np.zeros(4), saliency_times=np.zeros(3))
    with pytest.raises(ValueError, match="heads"):
        GroundedAnswer("x", heads=["boxes"])
    with pytest.raises(ValueError, match="4 numbers"):
        BoxPrediction((1.0, 2.0, 3.0), 0, 0.0)


def test_timeline_png_with_and_without_gt(toy, tmp_path):
    answer = _answer(toy)
    plain = _png(plot_timeline(answer, tmp_path / "plain.png"))
    gt = _png(plot_timeline(answer, tmp_path / "gt.png", gt_windows=[(8.0, 11.5)]))
    assert plain.shape[1] >= 600 and plain.shape[0] >= 200
    assert gt.shape != plain.shape or (gt != plain).any()
    # the GT band is tab:green (44, 160, 44) at alpha 0.6 on white -> about (120, 198, 120)
    greenish = (np.abs(gt - [120, 198, 120]).max(-1) < 12).sum()
    assert greenish > 1000
    assert (np.abs(plain - [120, 198, 120]).max(-1) < 12).sum() == 0
    assert not list(tmp_path.glob(".*tmp*"))


def test_timeline_window_shading_follows_time(toy, tmp_path):
    # tab:blue (31, 119, 180) at alpha 0.25 on white -> about (199, 221, 236)
    centres = []
    for window in ([TimeWindow(0.0, 4.0, 0.5)], [TimeWindow(12.0, 16.0, 0.5)]):
        answer = _answer(toy, windows=window)
        answer.saliency = answer.saliency_times = None
        image = _png(plot_timeline(answer, tmp_path / "t.png"))
        cols = np.nonzero((np.abs(image - [199, 221, 236]).max(-1) < 8).sum(0) > 50)[0]
        assert len(cols) > 20
        centres.append(cols.mean() / image.shape[1])
    assert centres[0] < 0.35 and centres[1] > 0.6


def test_contact_sheet_upscales_and_tints_exactly_the_mask(toy, tmp_path):
    frames, masks = toy["frames"][:8], toy["masks"][:8]
    base = _png(contact_sheet(frames, tmp_path / "base.png", times=toy["idx"][:8] / 8.0))
    tinted = _png(contact_sheet(frames, tmp_path / "mask.png", times=None, masks=masks))
    # 128 px frames -> 256 px tiles, 4 columns x 2 rows
    assert base.shape[1] >= 4 * 256 and base.shape[0] >= 2 * 256
    assert base.shape == tinted.shape
    # captions differ between the two sheets; compare below each tile's caption strip only
    label_rows = np.zeros(base.shape[0], bool)
    for row in range(2):
        top = 4 + row * (256 + 22 + 4)
        label_rows[top : top + 22] = True
    changed = (base != tinted).any(-1) & ~label_rows[:, None]
    assert changed.sum() == 4 * masks.sum()  # every masked pixel, upscaled 2x2, and nothing else
    assert (tinted[changed][:, 0] >= base[changed][:, 0]).all()  # towards red


def test_contact_sheet_boxes_and_sampling(toy, tmp_path):
    frames = toy["frames"][:8]
    base = _png(contact_sheet(frames, tmp_path / "a.png"))
    preds = [BoxPrediction(tuple(b), i, i / 8.0) for i, b in enumerate(toy["boxes"][:8])]
    boxed = _png(contact_sheet(frames, tmp_path / "b.png", boxes=preds[:4] + [None] * 4))
    changed = (base != boxed).any(-1)
    assert changed.sum() > 4 * 4 * 20
    assert (boxed[changed] == RED).all()
    many = _png(contact_sheet(toy["frames"], tmp_path / "c.png", max_tiles=8, cols=4))
    assert many.shape == base.shape  # 16 frames sampled down to 8 tiles


def test_overlay_video_decodes_and_tints_masked_pixels(toy, tmp_path):
    frames, masks = toy["frames"], toy["masks"]
    path = overlay_video(frames, masks, tmp_path / "o.mp4", fps=toy["fps"], color=RED)
    assert path.stat().st_size > 0
    decoded = decord.VideoReader(str(path)).get_batch(range(16)).asnumpy().astype(float)
    assert decoded.shape == (16, 128, 128, 3)
    inside = ndimage.binary_erosion(masks, np.ones((1, 7, 7)))
    outside = ~ndimage.binary_dilation(masks, np.ones((1, 9, 9)))
    expected = 0.5 * frames[inside] + 0.5 * np.asarray(RED)
    assert np.abs(decoded[inside] - expected).mean() < 4
    assert np.abs(decoded[inside] - frames[inside]).mean() > 30  # visibly tinted
    assert np.abs(decoded[outside] - frames[outside]).mean() < 4  # background unchanged


def test_overlay_video_pads_odd_sizes(toy, tmp_path):
    frames, masks = toy["frames"][:4, :125, :127], toy["masks"][:4, :125, :127]
    boxes = [toy["boxes"][0], None, np.stack(toy["boxes"][2:4]), None]
    path = overlay_video(frames, masks, tmp_path / "odd.mp4", fps=8.0, boxes=boxes)
    reader = decord.VideoReader(str(path))
    assert len(reader) == 4 and reader[0].shape == (126, 128, 3)


def test_shape_mismatches_raise(toy, tmp_path):
    frames, masks = toy["frames"][:4], toy["masks"][:4]
    with pytest.raises(ValueError, match=r"masks: expected \[f, H, W\]"):
        overlay_video(frames, masks[:3], tmp_path / "x.mp4", fps=8.0)
    with pytest.raises(ValueError, match=r"masks: expected \[f, H, W\]"):
        contact_sheet(frames, tmp_path / "x.png", masks=masks[:, :64])
    with pytest.raises(ValueError, match="boxes: expected one entry"):
        contact_sheet(frames, tmp_path / "x.png", boxes=[None] * 3)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        contact_sheet(frames, tmp_path / "x.png", boxes=[None, (1, 2, 3), None, None])
    with pytest.raises(ValueError, match="times: expected one time per frame"):
        contact_sheet(frames, tmp_path / "x.png", times=[0.0])
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet(frames.astype(np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="fps"):
        overlay_video(frames, masks, tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError, match=r"gt_windows\[0\]"):
        plot_timeline(GroundedAnswer("x"), tmp_path / "x.png", gt_windows=[(3.0, 1.0)])
    assert not list(tmp_path.iterdir())
