"""`tpo ask VIDEO "question"`: answer a grounded question and print (or draw) what was found."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tpo.data.video import VideoError
from tpo.infer.api import _check_question, load
from tpo.infer.visualize import contact_sheet, overlay_video, plot_timeline

DEFAULT_CHECKPOINT = "outputs/stage3/final"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo ask`."""
    parser.add_argument("video", help="video file, image file or frame folder")
    parser.add_argument("question", help="the question (e.g. 'When does the red circle appear?')")
    parser.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help=f"inference or checkpoint folder (default {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for timeline.png, frames.png and overlay.mp4 (with masks)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--num-frames", type=int, default=None, help="frames the model sees")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--ensemble",
        type=int,
        default=None,
        metavar="K",
        help="POPEN preference ensemble: sample K responses and combine their mask embeddings",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed for --ensemble")
    parser.add_argument("--device", default="cpu")


def format_answer(ans) -> str:
    """Human-readable lines of a GroundedAnswer."""
    lines = [f"answer: {ans.text}", f"heads: {', '.join(ans.heads) or 'none'}"]
    for w in ans.windows[:5]:
        lines.append(f"window: {w.start:.2f}-{w.end:.2f} s (score {w.score:.2f})")
    for b in ans.boxes:
        x1, y1, x2, y2 = b.box
        lines.append(
            f"box: ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) px on frame "
            f"{b.frame_index} ({b.time:.2f} s)"
        )
    if ans.masks is not None:
        area = ans.masks.masks.reshape(len(ans.masks.masks), -1).mean(1)
        lines.append(
            f"masks: {len(area)} frames, mean area {float(area.mean()) if len(area) else 0:.3f}"
        )
    return "\n".join(lines)


def write_pictures(pipe, video, ans, out: Path) -> list[Path]:
    """timeline.png, frames.png (sampled frames with box/masks) and overlay.mp4 (with masks)."""

    out.mkdir(parents=True, exist_ok=True)
    written = [plot_timeline(ans, out / "timeline.png")]
    inp = pipe.load_input(video)
    indices = inp.indices
    masks = None
    if ans.masks is not None:
        indices = ans.masks.frame_indices
        masks = ans.masks.masks
    frames = inp.raw(indices).permute(0, 2, 3, 1).numpy()
    boxes = [[b.box for b in ans.boxes if b.frame_index == int(j)] or None for j in indices]
    written.append(
        contact_sheet(
            frames,
            out / "frames.png",
            times=indices / inp.fps,
            boxes=boxes,
            masks=masks,
            title=ans.text[:80],
        )
    )
    if masks is not None:
        written.append(
            overlay_video(
                frames,
                masks,
                out / "overlay.mp4",
                fps=max(1.0, len(indices) / max(inp.duration, 1e-6)),
            )
        )
    return written


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, answer, print; exit 2 with a message on bad input."""

    try:
        _check_question(args.question)
        if args.ensemble is not None and args.ensemble < 1:
            raise ValueError(f"--ensemble must be at least 1 response, got {args.ensemble}")
        if not Path(args.video).exists():
            raise VideoError(f"{args.video}: no such video or image file", "missing")
        pipe = load(args.checkpoint, device=args.device)
        ans = pipe.ask(
            args.video,
            args.question,
            num_frames=args.num_frames,
            max_new_tokens=args.max_new_tokens,
            ensemble=args.ensemble,
            seed=args.seed,
        )
        pictures = write_pictures(pipe, args.video, ans, Path(args.out)) if args.out else []
    except (FileNotFoundError, VideoError, ValueError) as err:
        print(f"tpo ask: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(ans.to_json()))
    else:
        print(format_answer(ans))
        for p in pictures:
            print(f"wrote {p}")
    return 0
