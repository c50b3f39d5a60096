"""Rendering of one toy-world video: coloured shapes that appear, move and vanish over a texture.

Everything is drawn with numpy from `numpy.random.default_rng([seed, index])`, so a video depends
only on (seed, index). The renderer keeps the exact per-frame state of every object: its box and
its visible mask (shapes drawn later occlude earlier ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
DIRECTIONS = ("left", "right", "up", "down")
RGB = {
    "red": (225, 35, 35),
    "green": (35, 195, 55),
    "blue": (40, 85, 240),
    "yellow": (240, 215, 30),
}
FPS = 8.0
SIZE = 128  # frame width and height in pixels
MIN_FRAMES, MAX_FRAMES = 96, 160  # 12-20 s at FPS
STEP_FRAMES = 4  # appear/vanish times are multiples of 0.5 s, exact in every annotation format
MIN_WINDOW_FRAMES = 24  # an object stays at least 3 s
EDGE_FRAMES = 16  # objects appear >= 2 s after the start and vanish >= 2 s before the end
MIN_GAP_FRAMES = 16  # appear times differ by at least 2 s, so "which appears first" is clear
MIN_SIDE, MAX_SIDE = 18, 30  # object size in pixels
MIN_TRAVEL = 32  # pixels moved over the object's window
MAX_OBJECTS = 3


@dataclass
class ToyObject:
    """One shape of a video and its exact per-frame state over the video's `f` frames.

    Fields:
        shape, colour, direction: one of SHAPES, COLOURS, DIRECTIONS.
        t0, t1: frames [t0, t1) in which it is drawn (appear / vanish frame).
        side: size in pixels.
        boxes: `[f, 4]` float xyxy pixel box of the whole shape (x2, y2 exclusive; 0 when absent).
        masks: `[f, H, W]` bool visible mask (the shape minus later-drawn shapes).
        areas: `[f]` int pixel area of the whole shape (0 when absent).
    """

    shape: str
    colour: str
    direction: str
    t0: int
    t1: int
    side: int
    boxes: np.ndarray
    masks: np.ndarray
    areas: np.ndarray

    @property
    def name(self) -> str:
        """'the red circle'."""
        return f"the {self.colour} {self.shape}"

    def visible_fraction(self) -> np.ndarray:
        """`[f]` visible share of the whole shape per frame (0 when absent)."""
        visible = self.masks.reshape(len(self.masks), -1).sum(1)
        return np.where(self.areas > 0, visible / np.maximum(self.areas, 1), 0.0)

    def fully_visible(self) -> np.ndarray:
        """`[f]` frames on which the whole shape is present and unoccluded."""
        visible = self.masks.reshape(len(self.masks), -1).sum(1)
        return (self.areas > 0) & (visible == self.areas)


@dataclass
class ToyVideo:
    """A rendered video: `frames` `[f, H, W, 3]` uint8 RGB at `fps`, and its objects in draw order."""

    seed: int
    index: int
    frames: np.ndarray
    fps: float
    objects: list[ToyObject]

    @property
    def vid(self) -> str:
        """Video id, 'toy_00042'."""
        return video_id(self.index)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds (frames / fps)."""
        return self.n_frames / self.fps


def video_id(index: int) -> str:
    """The id of video `index`: 'toy_00042'."""
    return f"toy_{index:05d}"


def _background(rng: np.random.Generator) -> np.ndarray:
    """`[H, W, 3]` float smooth greyish texture: low-frequency waves, a gradient, faint grain."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) / SIZE
    lum = np.full((SIZE, SIZE), rng.uniform(60.0, 95.0))
    lum += rng.uniform(-20.0, 20.0) * (xx - 0.5) + rng.uniform(-20.0, 20.0) * (yy - 0.5)
    for _ in range(4):
        fx, fy = rng.uniform(-3.0, 3.0, size=2) * np.pi
        lum += rng.uniform(4.0, 12.0) * np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi))
    tint = rng.uniform(-8.0, 8.0, size=3)
    grain = rng.normal(0.0, 3.0, size=(SIZE, SIZE, 1))
    return np.clip(lum[..., None] + tint + grain, 20.0, 140.0)


def _raster(
    shape: str, x: float, y: float, side: int, px: np.ndarray, py: np.ndarray
) -> np.ndarray:
    """`[H, W]` bool: pixels whose centre lies in the shape with top-left (x, y) and size `side`."""
    if shape == "square":
        return (px >= x) & (px < x + side) & (py >= y) & (py < y + side)
    if shape == "circle":
        r = side / 2.0
        return (px - x - r) ** 2 + (py - y - r) ** 2 <= r * r
    # triangle: apex at the top centre, base along the bottom edge
    depth = py - y
    return (depth >= 0) & (depth <= side) & (np.abs(px - x - side / 2.0) <= depth / 2.0)


def _appear_frames(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """`k` appear frames on the STEP_FRAMES grid in [EDGE_FRAMES, n - EDGE_FRAMES -
    MIN_WINDOW_FRAMES], pairwise at least MIN_GAP_FRAMES apart, in random object order."""
    last = n - EDGE_FRAMES - MIN_WINDOW_FRAMES
    slack = (last - EDGE_FRAMES - (k - 1) * MIN_GAP_FRAMES) // STEP_FRAMES
    if slack < 0:
        raise ValueError(f"{n} frames cannot hold {k} objects")
    # sorted offsets on the grid, then the fixed gaps added: every spacing >= MIN_GAP_FRAMES
    offsets = np.sort(rng.integers(0, slack + 1, size=k)) * STEP_FRAMES
    t0s = [EDGE_FRAMES + int(o) + i * MIN_GAP_FRAMES for i, o in enumerate(offsets)]
    return [t0s[i] for i in rng.permutation(k)]


def _path(rng: np.random.Generator, direction: str, side: int) -> tuple[float, float, float]:
    """(start along the motion axis, signed travel in pixels, position across the axis)."""
    room = SIZE - side
    travel = rng.uniform(MIN_TRAVEL, room)
    across = rng.uniform(0.0, room)
    start = rng.uniform(0.0, room - travel)
    if direction in ("left", "up"):
        return start + travel, -travel, across
    return start, travel, across


def render_video(seed: int, index: int) -> ToyVideo:
    """Render video `index` of world `seed`: 1-3 shapes with distinct (shape, colour) and
    distinct directions over a texture, each present for >= 3 s (appearing >= 2 s after the
    start, vanishing >= 2 s before the end) and moving at constant speed inside the frame."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    background = _background(rng)
    k = int(rng.integers(1, MAX_OBJECTS + 1))
    pairs = rng.choice(len(SHAPES) * len(COLOURS), size=k, replace=False)
    directions = rng.permutation(len(DIRECTIONS))[:k]
    t0s = _appear_frames(rng, n, k)
    py, px = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5  # pixel centres
    frames = np.repeat(np.round(background).astype(np.uint8)[None], n, axis=0)
    full = np.zeros((k, n, SIZE, SIZE), dtype=bool)
    objects: list[ToyObject] = []
    for j in range(k):
        shape, colour = SHAPES[pairs[j] // len(COLOURS)], COLOURS[pairs[j] % len(COLOURS)]
        direction = DIRECTIONS[directions[j]]
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        t0 = t0s[j]
        longest = (n - EDGE_FRAMES - t0) // STEP_FRAMES * STEP_FRAMES
        t1 = t0 + int(rng.choice(np.arange(MIN_WINDOW_FRAMES, longest + 1, STEP_FRAMES)))
        start, travel, across = _path(rng, direction, side)
        boxes = np.zeros((n, 4))
        for f in range(t0, t1):
            along = start + travel * (f - t0) / (t1 - 1 - t0)
            x, y = (along, across) if direction in ("left", "right") else (across, along)
            mask = _raster(shape, x, y, side, px, py)
            full[j, f] = mask
            frames[f][mask] = RGB[colour]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes[f] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        areas = full[j].reshape(n, -1).sum(1)
        objects.append(ToyObject(shape, colour, direction, t0, t1, side, boxes, full[j], areas))
    for j, obj in enumerate(objects):  # later-drawn shapes hide earlier ones
        if j + 1 < k:
            obj.masks = full[j] & ~full[j + 1 :].any(0)
    return ToyVideo(seed=seed, index=index, frames=frames, fps=FPS, objects=objects)


def write_mp4(frames: np.ndarray, fps: float, path: Path) -> None:
    """Encode `[f, H, W, 3]` uint8 RGB as H.264 yuv420p mp4, single-threaded (deterministic
    bytes), written to a temp file then moved into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libx264", rate=int(fps), options={"threads": "1", "crf": "18", "preset": "fast"}
        )
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
