"""Video I/O: decode a video (or image, frame folder, array) and sample, resize, normalise frames.

Decoding is decord's (`VideoReader(..., num_threads=1)` + `get_batch`, as the official release);
the resize (bicubic, antialiased) and ImageNet normalisation run in torch on the whole batch.
The frame is resized to a square `img_size` without cropping, so that normalised boxes and
masks of the full frame stay aligned with what the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
import torch.nn.functional as F

from tpo.data.frame_times import SampleMode, sample_feature_times, sample_indices

__all__ = ["SampleMode", "sample_feature_times", "sample_indices"]  # + the names defined here

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# per channel (1 / (255 std), -mean / std) as float32 values: x * scale + shift == (x/255 - mean) / std
_INV_STD = 1.0 / (255.0 * torch.tensor(IMAGENET_STD))
_NORM = [(float(s), float(-m * 255.0 * s)) for m, s in zip(torch.tensor(IMAGENET_MEAN), _INV_STD)]

# how uint8 frames are resized: "uint8", torch's uint8 bicubic kernel (~5x faster); "float",
# bicubic on floats then clamped and rounded, as torchvision's Resize on a uint8 tensor (the
# official release): torch's uint8 kernel rounds between its two passes, so the two differ by
# up to 14 levels on ~20 % of the pixels
RESIZE_MODES = ("uint8", "float")
VideoSource = str | Path | decord.VideoReader | np.ndarray | torch.Tensor


class VideoError(ValueError):
    """A video that cannot be read. `reason` is one of: missing, empty, corrupt, bad_input."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class VideoClip:
    """Sampled, resized, normalised frames of one video.

    frames: `[f, 3, H, W]` float, ImageNet-normalised (uint8 when loaded with `normalize=False`),
        H = W = img_size.
    timestamps: `[f]` float seconds of each sampled frame (index / fps).
    indices: `[f]` int frame indices into the decoded video.
    fps: frames per second of the source; duration: seconds of the whole source.
    orig_size: (h, w) of the source frames before resizing.
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    indices: np.ndarray
    fps: float
    duration: float
    orig_size: tuple[int, int]


def open_video(path: str | Path, num_threads: int = 1) -> decord.VideoReader:
    """Open a video file with decord; a missing, empty or unreadable file raises `VideoError`."""
    path = Path(path)
    if not path.exists():
        raise VideoError(
            f"{path}: video file not found (expected a readable video file)", "missing"
        )
    if path.is_dir():
        raise VideoError(f"{path}: is a folder, expected a video file", "bad_input")
    if path.stat().st_size == 0:
        raise VideoError(
            f"{path}: video file is empty (0 bytes), expected an encoded video", "empty"
        )
    try:
        reader = decord.VideoReader(str(path), num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VideoError(
            f"{path}: not a decodable video (decord: {msg}); expected e.g. an H.264 mp4", "corrupt"
        ) from err
    if len(reader) == 0:
        raise VideoError(f"{path}: video has no frames, expected at least one", "corrupt")
    return reader


def resize_frames(frames: torch.Tensor, img_size: int, resize: str = "uint8") -> torch.Tensor:
    """Resize `[f, 3, h, w]` uint8 (or float in [0, 1]) frames to uint8 `[f, 3, img_size,
    img_size]` (bicubic, antialiased; `resize`: see `RESIZE_MODES`).

    Float input is quantised to uint8 first, as a decoded video would be. Training ships these
    uint8 frames to the device (`normalize_uint8` there).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"resize_frames: expected [f, 3, h, w] frames, got {tuple(frames.shape)}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize_frames: resize must be one of {RESIZE_MODES}, got {resize!r}")
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if tuple(frames.shape[-2:]) == (img_size, img_size):
        return frames
    size = (img_size, img_size)
    if resize == "float":
        out = F.interpolate(
            frames.float(), size=size, mode="bicubic", antialias=True, align_corners=False
        )
        return out.clamp_(0, 255).round_().to(torch.uint8)
    # channels-last uint8 batches take torch's fast antialiased bicubic path (~30x float's)
    return F.interpolate(
        frames.contiguous(memory_format=torch.channels_last),
        size=size,
        mode="bicubic",
        antialias=True,
        align_corners=False,
    )


def normalize_uint8(frames: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise uint8 frames `[..., 3, H, W]` (any device) into contiguous float32."""
    if frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(
            f"normalize_uint8: expected uint8 [..., 3, H, W] frames, got {frames.dtype} "
            f"{tuple(frames.shape)}"
        )
    # one pass casts to float and lays the (channels-last) batch out contiguously, then
    # (x/255 - mean) / std as one in-place scale + shift per channel: ~1.7x faster than
    # .contiguous().float() and broadcasting [1, 3, 1, 1] tensors (bench/video_io.py)
    out = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)
    out.copy_(frames)
    for c, (scale, shift) in enumerate(_NORM):
        out.select(-3, c).mul_(scale).add_(shift)
    return out


def normalize_frames(frames: torch.Tensor, img_size: int, resize: str = "uint8") -> torch.Tensor:
    """Resize `[f, 3, h, w]` uint8 (or float in [0, 1]) frames and ImageNet-normalise them:
    float32 `[f, 3, img_size, img_size]` (`resize_frames`, then `normalize_uint8`)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"normalize_frames: expected [f, 3, h, w] frames, got {tuple(frames.shape)}"
        )
    return normalize_uint8(resize_frames(frames, img_size, resize))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only images need PIL

    if not path.exists():
        raise VideoError(f"{path}: image file not found (expected a readable image)", "missing")
    if path.stat().st_size == 0:
        raise VideoError(
            f"{path}: image file is empty (0 bytes), expected an encoded image", "empty"
        )
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise VideoError(
            f"{path}: not a decodable image ({err}); expected jpg/png", "corrupt"
        ) from err


class FrameSource:
    """An opened video of any kind: `num_total` frames at `fps`; `read(indices)` decodes frames.

    Built by `open_source`; reading returns uint8 `[f, 3, h, w]` (a channels-last view).
    """

    def __init__(
        self,
        name: str,
        num_total: int,
        fps: float,
        *,
        reader: decord.VideoReader | None = None,
        files: list[Path] | None = None,
        frames: torch.Tensor | None = None,
    ) -> None:
        if not fps > 0:
            raise VideoError(f"{name}: invalid frame rate {fps}, expected > 0", "corrupt")
        self.name, self.num_total, self.fps = name, num_total, fps
        self._reader, self._files, self._frames = reader, files, frames

    @property
    def duration(self) -> float:
        """Seconds of the whole source."""
        return self.num_total / self.fps

    def sample(
        self,
        num_frames: int,
        mode: SampleMode = "middle",
        *,
        start: float | None = None,
        end: float | None = None,
        sample_fps: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """`sample_indices` over this source; a 1-frame source (an image) gives just `[0]`."""
        if self.num_total == 1:
            return np.zeros(1, dtype=np.int64)
        try:
            return sample_indices(
                self.num_total, self.fps, num_frames, mode,
                start=start, end=end, sample_fps=sample_fps, rng=rng,
            )  # fmt: skip
        except ValueError as err:
            raise VideoError(f"{self.name}: {err}", "bad_input") from err

    def read(self, indices: np.ndarray) -> torch.Tensor:
        """Frames at `indices` as uint8 `[f, 3, h, w]`."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0 or indices.min() < 0 or indices.max() >= self.num_total:
            raise VideoError(
                f"{self.name}: frame indices {indices.tolist()} outside [0, {self.num_total})",
                "bad_input",
            )
        if self._reader is not None:
            try:
                batch = self._reader.get_batch(indices.tolist()).asnumpy()  # [f, h, w, 3] uint8
            except (RuntimeError, decord.DECORDError) as err:
                raise VideoError(
                    f"{self.name}: decoding frames {indices.tolist()} failed ({err})", "corrupt"
                ) from err
            return torch.from_numpy(batch).permute(0, 3, 1, 2)
        if self._files is not None:
            imgs = [torch.from_numpy(_read_image(self._files[i])) for i in indices]
            if len({tuple(im.shape) for im in imgs}) > 1:
                raise VideoError(f"{self.name}: frames of different sizes in the folder", "corrupt")
            return torch.stack(imgs).permute(0, 3, 1, 2)
        assert self._frames is not None
        return self._frames[torch.from_numpy(indices)]


def open_source(
    source: VideoSource | FrameSource, *, fps: float | None = None, num_threads: int = 1
) -> FrameSource:
    """Open a video path, image path, frame folder, `decord.VideoReader`, image array `[H, W, 3]`
    or frames `[f, 3, H, W]` (uint8, or float in [0, 1]) as a `FrameSource`.

    `fps` is the frame rate of folders, arrays and tensors (default 1.0); a video has its own.
    Missing, empty or undecodable files raise `VideoError` naming the path.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, decord.VideoReader):
        return FrameSource("<VideoReader>", len(source), float(source.get_avg_fps()), reader=source)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            img = torch.from_numpy(_read_image(path)).permute(2, 0, 1)[None]
            return FrameSource(str(path), 1, float(fps or 1.0), frames=img)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise VideoError(f"{path}: frame folder holds no jpg/png frames", "empty")
            return FrameSource(str(path), len(files), float(fps or 1.0), files=files)
        reader = open_video(path, num_threads)
        return FrameSource(str(path), len(reader), float(reader.get_avg_fps()), reader=reader)
    if isinstance(source, np.ndarray | torch.Tensor):
        name = f"<{type(source).__name__}>"
        arr = torch.as_tensor(source)
        if arr.dim() == 3 and arr.shape[-1] == 3:  # one [H, W, 3] image
            arr = arr.permute(2, 0, 1)[None]
        if arr.dim() != 4 or arr.shape[1] != 3 or arr.shape[0] == 0:
            raise VideoError(
                f"{name}: expected an [H, W, 3] image or [f, 3, H, W] frames, got {tuple(arr.shape)}",
                "bad_input",
            )
        return FrameSource(name, arr.shape[0], float(fps or 1.0), frames=arr)
    raise VideoError(f"load_video: unsupported source type {type(source).__name__}", "bad_input")


def frames_at(
    source: FrameSource,
    times: torch.Tensor,
    img_size: int,
    normalize: bool = True,
    resize: str = "uint8",
) -> torch.Tensor:
    """Frames `[t, 3, img_size, img_size]` of `source` nearest to `times` `[t]` s (the temporal
    head's frames at its feature times): normalised, or resized uint8 with `normalize=False`."""
    idx = np.clip(np.round(times.numpy() * source.fps).astype(np.int64), 0, source.num_total - 1)
    frames = resize_frames(source.read(idx), img_size, resize)
    return normalize_uint8(frames) if normalize else frames


def load_video(
    source: VideoSource | FrameSource,
    num_frames: int = 16,
    mode: SampleMode = "middle",
    *,
    img_size: int = 224,
    start: float | None = None,
    end: float | None = None,
    sample_fps: float | None = None,
    rng: np.random.Generator | None = None,
    num_threads: int = 1,
    indices: np.ndarray | None = None,
    fps: float | None = None,
    normalize: bool = True,
    resize: str = "uint8",
) -> VideoClip:
    """Decode, sample, resize and normalise frames of a video.

    `source`: anything `open_source` takes (video/image path, frame folder, open
    `decord.VideoReader`, `[H, W, 3]` image array, `[f, 3, H, W]` frames) or a `FrameSource`.
    An image is a 1-frame video at 0 s. `indices` overrides sampling with explicit frame indices.
    Returns a `VideoClip` with frames `[f, 3, img_size, img_size]`; `normalize=False` keeps
    them uint8 (resized only), for a loader that normalises on the device. `resize`: the
    resize kernel (`RESIZE_MODES`).
    """
    src = open_source(source, fps=fps, num_threads=num_threads)
    if indices is None:
        indices = src.sample(num_frames, mode, start=start, end=end, sample_fps=sample_fps, rng=rng)
    indices = np.asarray(indices, dtype=np.int64)
    raw = src.read(indices)
    frames = resize_frames(raw, img_size, resize)
    return VideoClip(
        frames=normalize_uint8(frames) if normalize else frames,
        timestamps=torch.from_numpy(indices / src.fps).float(),
        indices=indices,
        fps=src.fps,
        duration=src.duration,
        orig_size=(int(raw.shape[-2]), int(raw.shape[-1])),
    )
