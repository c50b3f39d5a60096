"""Pictures of grounded answers: a timeline PNG, a contact sheet PNG and a mask-overlay MP4.

Plain functions on numpy arrays and `GroundedAnswer`s. Matplotlib is used through its Agg
canvas only (no pyplot, no global backend switch); every file is written to a temp file beside
its target and moved into place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from tpo.infer.answer import BoxPrediction, GroundedAnswer, TimeWindow

MASK_ALPHA = 0.5  # share of the colour in a masked pixel
TILE_TARGET = 256  # frames smaller than this (longest side, px) are upscaled by an integer factor
LABEL_HEIGHT = 22  # px of the caption strip above each contact-sheet tile
PRED_COLOR = "tab:blue"
GT_COLOR = "tab:green"

BoxEntry = BoxPrediction | Sequence[float] | Sequence[BoxPrediction] | np.ndarray | None


@contextlib.contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); on success move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames: expected [f, H, W, 3] uint8 RGB, got shape {frames.shape} {frames.dtype}"
        )
    if len(frames) == 0:
        raise ValueError("frames: expected at least one frame, got 0")
    return frames


def _check_masks(masks: np.ndarray | None, frames: np.ndarray) -> np.ndarray | None:
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.shape != frames.shape[:3]:
        raise ValueError(
            f"masks: expected [f, H, W] = {tuple(frames.shape[:3])} to match frames, "
            f"got {masks.shape}"
        )
    return masks.astype(bool, copy=False)


def _boxes_xyxy(entry: BoxEntry, where: str) -> np.ndarray:
    """One frame's boxes as `[k, 4]` float xyxy (k = 0 for None)."""
    if entry is None:
        return np.zeros((0, 4))
    if isinstance(entry, BoxPrediction):
        entry = [entry.box]
    elif len(entry) and isinstance(entry[0], BoxPrediction):
        entry = [b.box for b in entry]
    arr = np.asarray(entry, dtype=np.float64)
    if arr.shape == (4,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: expected xyxy box(es) of 4 numbers, got shape {arr.shape}")
    return arr


def _check_boxes(boxes: Sequence[BoxEntry] | np.ndarray | None, n: int) -> list[np.ndarray]:
    if boxes is None:
        return [np.zeros((0, 4))] * n
    if len(boxes) != n:
        raise ValueError(f"boxes: expected one entry (or None) per frame ({n}), got {len(boxes)}")
    return [_boxes_xyxy(b, f"boxes[{i}]") for i, b in enumerate(boxes)]


def _check_color(color: Sequence[int]) -> tuple[int, int, int]:
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color: expected 3 ints in 0..255 (RGB), got {color!r}")
    return tuple(int(c) for c in color)


def _draw(
    frame: np.ndarray,
    mask: np.ndarray | None,
    boxes: np.ndarray,
    color: tuple[int, int, int],
    scale: int = 1,
) -> np.ndarray:
    """`[H*scale, W*scale, 3]` uint8: the frame upscaled (nearest), mask tinted with its outline
    in full colour, boxes outlined."""
    # function-level: PIL only when an image is read or drawn
    from PIL import Image, ImageDraw

    # function-level: scipy only when this computation runs
    from scipy import ndimage

    out = frame.astype(np.float32)
    if mask is not None and mask.any():
        tint = np.asarray(color, np.float32)
        out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * tint
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    if mask is not None and mask.any() and scale > 1:
        big = mask.repeat(scale, 0).repeat(scale, 1)
        out[big & ~ndimage.binary_erosion(big, iterations=max(1, scale // 2))] = color
    if len(boxes):
        image = Image.fromarray(out)
        pen = ImageDraw.Draw(image)
        width = max(1, scale)
        for x1, y1, x2, y2 in boxes * scale:
            pen.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
        out = np.asarray(image)
    return out


def _save_png(image, path: str | os.PathLike) -> Path:
    with _atomic(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def _window_pairs(windows: Sequence, where: str) -> list[tuple[float, float]]:
    pairs = []
    for i, w in enumerate(windows):
        start, end = (w.start, w.end) if isinstance(w, TimeWindow) else tuple(w)[:2]
        if not float(end) >= float(start):
            raise ValueError(f"{where}[{i}]: expected (start, end) with end >= start, got {w!r}")
        pairs.append((float(start), float(end)))
    return pairs


def plot_timeline(
    answer: GroundedAnswer,
    path: str | os.PathLike,
    *,
    gt_windows: Sequence[TimeWindow | Sequence[float]] | None = None,
    title: str | None = None,
) -> Path:
    """Write a timeline PNG: the saliency curve over time, predicted windows as shaded spans
    labelled with their scores, ground-truth windows (when given) in their own band below, x in
    seconds from 0 to the duration."""
    # function-level: matplotlib only when a picture is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pred = _window_pairs(answer.windows, "answer.windows")
    gt = _window_pairs(gt_windows or [], "gt_windows")
    ends = [e for _, e in pred + gt]
    if answer.saliency_times is not None and len(answer.saliency_times):
        ends.append(float(np.max(answer.saliency_times)))
    duration = float(answer.duration) if answer.duration else max(ends, default=1.0) or 1.0

    rows = 2 if gt_windows is not None else 1
    fig = Figure(figsize=(10, 3.0 + 0.8 * (rows - 1)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False, height_ratios=[4, 1][:rows])[:, 0]
    ax = axes[0]
    if answer.saliency is not None and len(answer.saliency):
        ax.plot(answer.saliency_times, answer.saliency, color="black", lw=1.5, label="saliency")
        lo, hi = float(np.min(answer.saliency)), float(np.max(answer.saliency))
        pad = 0.1 * (hi - lo) or 0.5
        ax.set_ylim(lo - pad, hi + 2 * pad)
        ax.set_ylabel("saliency")
    else:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no saliency", transform=ax.transAxes, ha="center", color="gray")
    for (start, end), w in zip(pred, answer.windows):
        ax.axvspan(start, end, color=PRED_COLOR, alpha=0.25, lw=0)
        ax.text(
            (start + end) / 2,
            0.97,
            f"{w.score:.2f}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            color=PRED_COLOR,
            fontsize=9,
        )
    handles = ax.get_legend_handles_labels()[0]
    if pred:
        handles.append(Patch(color=PRED_COLOR, alpha=0.25, label="predicted"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if gt_windows is not None:
        band = axes[1]
        band.broken_barh([(s, e - s) for s, e in gt], (0, 1), color=GT_COLOR, alpha=0.6)
        band.set_ylim(0, 1)
        band.set_yticks([0.5], ["ground truth"])
    axes[-1].set_xlim(0, duration)
    axes[-1].set_xlabel("time (s)")
    text = title if title is not None else answer.text
    ax.set_title(text if len(text) <= 90 else text[:87] + "...", fontsize=10)
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def contact_sheet(
    frames: np.ndarray,
    path: str | os.PathLike,
    *,
    times: Sequence[float] | np.ndarray | None = None,
    boxes: Sequence[BoxEntry] | np.ndarray | None = None,
    masks: np.ndarray | None = None,
    cols: int = 4,
    title: str | None = None,
    max_tiles: int | None = 16,
    color: Sequence[int] = (255, 0, 0),
) -> Path:
    """Write a grid PNG of `frames` `[f, H, W, 3]` uint8 (evenly sampled down to `max_tiles`),
    each tile captioned with its time (`times` `[f]` s, else its frame index), with `boxes`
    (per frame: None, xyxy, `[k, 4]`, or BoxPrediction(s)) outlined and `masks` `[f, H, W]` bool
    tinted in `color`. Frames under TILE_TARGET px are upscaled by an integer factor."""
    # function-level: PIL only when an image is read or drawn
    from PIL import Image, ImageDraw, ImageFont

    frames = _check_frames(frames)
    n, h, w = frames.shape[:3]
    masks = _check_masks(masks, frames)
    per_frame = _check_boxes(boxes, n)
    color = _check_color(color)
    if times is not None and len(times) != n:
        raise ValueError(f"times: expected one time per frame ({n}), got {len(times)}")
    if cols < 1:
        raise ValueError(f"cols: expected >= 1, got {cols}")
    keep = np.arange(n)
    if max_tiles is not None and n > max_tiles:
        keep = np.unique(np.linspace(0, n - 1, max_tiles).round().astype(int))

    scale = max(1, TILE_TARGET // max(h, w))
    tw, th = w * scale, h * scale
    cols = min(cols, len(keep))
    rows = -(-len(keep) // cols)
    gap = 4
    top = 30 if title else 0
    sheet = Image.new(
        "RGB", (cols * (tw + gap) + gap, top + rows * (th + LABEL_HEIGHT + gap) + gap), "white"
    )
    pen = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    if title:
        pen.text((gap, 6), title, fill="black", font=font)
    for k, i in enumerate(keep):
        x = gap + (k % cols) * (tw + gap)
        y = top + gap + (k // cols) * (th + LABEL_HEIGHT + gap)
        label = f"t = {float(times[i]):.2f} s" if times is not None else f"frame {i}"
        pen.text((x + 2, y + 3), label, fill="black", font=font)
        tile = _draw(frames[i], None if masks is None else masks[i], per_frame[i], color, scale)
        sheet.paste(Image.fromarray(tile), (x, y + LABEL_HEIGHT))
    return _save_png(sheet, path)


def overlay_video(
    frames: np.ndarray,
    masks: np.ndarray,
    path: str | os.PathLike,
    *,
    fps: float,
    boxes: Sequence[BoxEntry] | np.ndarray | None = None,
    color: Sequence[int] = (255, 0, 0),
) -> Path:
    """Write an H.264 yuv420p MP4 of `frames` `[f, H, W, 3]` uint8 with `masks` `[f, H, W]` bool
    tinted in `color` (and `boxes` per frame outlined) at `fps`; odd sizes are padded to even by
    repeating the last row/column."""
    # function-level: PyAV only when a video is written
    import av

    frames = _check_frames(frames)
    masks = _check_masks(masks, frames)
    per_frame = _check_boxes(boxes, len(frames))
    color = _check_color(color)
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    h, w = frames.shape[1:3]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    rate = Fraction(fps).limit_denominator(1001)
    with _atomic(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(
                "libx264", rate=rate, options={"crf": "18", "preset": "fast", "threads": "1"}
            )
            stream.width, stream.height = w + w % 2, h + h % 2
            stream.pix_fmt = "yuv420p"
            for frame, mask, bxs in zip(frames, masks, per_frame):
                drawn = np.pad(_draw(frame, mask, bxs, color), pad, mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return Path(path)
