"""Annotations of one rendered toy video, derived from the renderer's exact state.

`annotate_video` returns plain JSON-able pieces per format without global ids; `tpo.data.toyworld`
numbers them, balances the multiple-choice answer positions and writes the native files.
Every question needs the video: colour, shape, motion direction, order or count.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from tpo.data.templates import MASK_ANSWER, REGION_ANSWER, TEMPORAL_ANSWER
from tpo.data.toyworld_render import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZE,
    STEP_FRAMES,
    ToyObject,
    ToyVideo,
)

# The task answers of the conversation data (the strings the task loaders use) and the task pair
# each holds; the pair is what routes an answer to its head.
TASK_PAIRS = {
    "temporal": "<time_begin><temp>",
    "region": "<box_begin><boxes>",
    "mask": "<track_begin><tracking>",
}
TASK_ANSWERS = {"temporal": TEMPORAL_ANSWER, "region": REGION_ANSWER, "mask": MASK_ANSWER}
CLIP_S = 2.0  # QVHighlights clip length
ANNOTATORS = 3  # saliency scores per clip
ANNOTATOR_NOISE = (-1, 0, 0, 0, 1)  # small per-annotator deviation from the exact score
REGION_FRAMES = 2  # box annotations per object
NUMBERS = ("one", "two", "three", "four")
MOTIONS = tuple(f"moves {d}" for d in DIRECTIONS) + ("stays still",)
TEMPORAL_CALLS = (
    "When does {name} appear?",
    "When is {name} in the video?",
    "When does {name} move {d}?",
)
REGION_CALLS = ("Where is {name} at {t:.1f} s?", "Where is {name} at {t:.1f} seconds?")
MASK_CALLS = ("Track {name}.", "Segment {name} throughout the video.")


def r2(x: float) -> float:
    """Round to 2 decimals (every float the toy world writes)."""
    return round(float(x), 2)


def _window(obj: ToyObject, fps: float) -> list[float]:
    return [r2(obj.t0 / fps), r2(obj.t1 / fps)]


def _saliency(obj: ToyObject, video: ToyVideo, rng: np.random.Generator) -> tuple[list, list]:
    """Ids of the 2-s clips overlapping the object's window and their [n_clips, ANNOTATORS] int
    scores 0-4: 4 x the object's mean visible share over the clip's frames, +-1 per annotator."""
    start, end = obj.t0 / video.fps, obj.t1 / video.fps
    n_clips = int(np.ceil(video.duration / CLIP_S))  # the last clip may be cut short
    per_clip = int(round(CLIP_S * video.fps))
    share = obj.visible_fraction()
    ids, scores = [], []
    for i in range(int(start // CLIP_S), min(int(np.ceil(end / CLIP_S)), n_clips)):
        exact = int(round(4 * float(share[i * per_clip : (i + 1) * per_clip].mean())))
        noise = rng.choice(ANNOTATOR_NOISE, size=ANNOTATORS)
        ids.append(i)
        scores.append([int(np.clip(exact + d, 0, 4)) for d in noise])
    return ids, scores


def _region_frames(obj: ToyObject, rng: np.random.Generator, count: int) -> list[int]:
    """Up to `count` frames where the whole object is visible (on the 0.5-s grid when possible)."""
    full = np.flatnonzero(obj.fully_visible())
    on_grid = full[full % STEP_FRAMES == 0]
    pool = on_grid if len(on_grid) else full
    if not len(pool):
        return []
    return sorted(int(f) for f in rng.choice(pool, size=min(count, len(pool)), replace=False))


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [r2(x1), r2(y1), r2(x2 - x1), r2(y2 - y1)]


def _rles(obj: ToyObject) -> list[dict | None]:
    """Per-frame COCO RLE (counts as str) of the visible mask; None where nothing is visible."""
    visible = obj.masks.reshape(len(obj.masks), -1).any(1)
    out: list[dict | None] = [None] * len(obj.masks)
    idx = np.flatnonzero(visible)
    if len(idx):
        stack = np.asfortranarray(obj.masks[idx].transpose(1, 2, 0).astype(np.uint8))
        for f, rle in zip(idx, mask_utils.encode(stack)):
            out[int(f)] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
    return out


def mevis_expressions(obj: ToyObject) -> list[str]:
    """Referring expressions of one object, each unique within its video (directions differ)."""
    return [
        f"{obj.name} moving {obj.direction}",
        f"the shape moving {obj.direction}",
        obj.name,
    ]


def _other_names(video: ToyVideo, obj: ToyObject, count: int, rng: np.random.Generator) -> list:
    """`count` object names other than `obj`'s: the video's other objects first, then unseen ones."""
    inside = [o.name for o in video.objects if o is not obj]
    inside = [inside[i] for i in rng.permutation(len(inside))]
    taken = {o.name for o in video.objects}
    outside = [f"the {c} {s}" for s in SHAPES for c in COLOURS if f"the {c} {s}" not in taken]
    outside = [outside[i] for i in rng.permutation(len(outside))]
    return (inside + outside)[:count]


def _shuffled(values: list, rng: np.random.Generator) -> list:
    return [values[i] for i in rng.permutation(len(values))]


def _first_last(video: ToyVideo) -> tuple[ToyObject, ToyObject]:
    order = sorted(video.objects, key=lambda o: o.t0)
    return order[0], order[-1]


def multiple_choice(video: ToyVideo, rng: np.random.Generator) -> list[dict]:
    """MVBench-style items {question, answer, distractors (3)}: colour of the shape moving a
    way, direction of a named shape, how many shapes, which appears first."""
    obj = video.objects[int(rng.integers(len(video.objects)))]
    items = [
        {
            "question": f"What colour is the shape that moves {obj.direction}?",
            "answer": obj.colour,
            "distractors": _shuffled([c for c in COLOURS if c != obj.colour], rng),
        }
    ]
    obj = video.objects[int(rng.integers(len(video.objects)))]
    items.append(
        {
            "question": f"Which direction does {obj.name} move?",
            "answer": obj.direction,
            "distractors": _shuffled([d for d in DIRECTIONS if d != obj.direction], rng),
        }
    )
    count = NUMBERS[len(video.objects) - 1]
    items.append(
        {
            "question": "How many shapes appear in the video?",
            "answer": count,
            "distractors": _shuffled([n for n in NUMBERS if n != count], rng),
        }
    )
    if len(video.objects) > 1:
        first, _ = _first_last(video)
        items.append(
            {
                "question": "Which shape appears first?",
                "answer": first.name,
                "distractors": _other_names(video, first, 3, rng),
            }
        )
    return items


def grounded_qa(video: ToyVideo, rng: np.random.Generator) -> list[dict]:
    """NExT-GQA-style items {question, answer, distractors (4), window, type}, two per object;
    the window is the object's."""
    items = []
    for obj in video.objects:
        window = _window(obj, video.fps)
        items.append(
            {
                "question": f"Which shape moves {obj.direction}?",
                "answer": obj.name,
                "distractors": _other_names(video, obj, 4, rng),
                "window": window,
                "type": "DO",
            }
        )
        motion = f"moves {obj.direction}"
        items.append(
            {
                "question": f"What does {obj.name} do?",
                "answer": motion,
                "distractors": _shuffled([m for m in MOTIONS if m != motion], rng),
                "window": window,
                "type": "TC",
            }
        )
    return items


def _plain_turns(video: ToyVideo, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Questions answered in words (colour, shape, count, direction, order); up to three."""
    obj = video.objects[int(rng.integers(len(video.objects)))]
    k = len(video.objects)
    turns = [
        ("How many shapes appear in the video?", f"{NUMBERS[k - 1].capitalize()}."),
        (f"What colour is the shape that moves {obj.direction}?", f"{obj.colour.capitalize()}."),
        (f"What shape moves {obj.direction}?", f"A {obj.shape}."),
        (f"Which direction does {obj.name} move?", f"It moves {obj.direction}."),
    ]
    if k > 1:
        first, last = _first_last(video)
        turns.append(("Which shape appears first?", f"{first.name.capitalize()}."))
        turns.append(("Which shape appears last?", f"{last.name.capitalize()}."))
    return [turns[i] for i in rng.permutation(len(turns))[:3]]


def _task_turns(video: ToyVideo, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Task calls answered with the task pairs of tpo.data.templates."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    def some_object() -> ToyObject:
        return video.objects[int(rng.integers(len(video.objects)))]

    obj = some_object()
    turns = [(pick(TEMPORAL_CALLS).format(name=obj.name, d=obj.direction), TEMPORAL_ANSWER)]
    obj = some_object()
    frames = _region_frames(obj, rng, 1) or [int((obj.t0 + obj.t1) // 2)]
    turns.append((pick(REGION_CALLS).format(name=obj.name, t=frames[0] / video.fps), REGION_ANSWER))
    obj = some_object()
    turns.append((pick(MASK_CALLS).format(name=obj.name), MASK_ANSWER))
    return [turns[i] for i in rng.permutation(len(turns))]


def annotate_video(video: ToyVideo) -> dict:
    """Per-format annotation pieces of one video (JSON-able, without global ids)."""
    rng = np.random.default_rng([video.seed, video.index, 1])
    vid, fps, duration = video.vid, video.fps, r2(video.duration)
    qvh, charades, refcoco, expressions, masks = [], [], [], [], []
    for j, obj in enumerate(video.objects):
        window = _window(obj, fps)
        query = f"{obj.name} moves {obj.direction}"
        ids, scores = _saliency(obj, video, rng)
        qvh.append(
            {
                "query": query,
                "duration": duration,
                "vid": vid,
                "relevant_windows": [window],
                "relevant_clip_ids": ids,
                "saliency_scores": scores,
            }
        )
        charades.append(f"{vid} {window[0]:.1f} {window[1]:.1f}##{query}.")
        for f in _region_frames(obj, rng, REGION_FRAMES):
            refcoco.append(
                {
                    "video": f"{vid}.mp4",
                    "frame_index": f,
                    "time": r2(f / fps),
                    "expression": obj.name,
                    "bbox": _xywh(obj.boxes[f]),
                    "width": SIZE,
                    "height": SIZE,
                }
            )
        rles = _rles(obj)
        if any(r is not None for r in rles):  # one mask track, several ways to name it
            for exp in mevis_expressions(obj):
                expressions.append({"exp": exp, "obj_id": [j], "track": len(masks)})
            masks.append(rles)
    return {
        "vid": vid,
        "index": video.index,
        "duration": duration,
        "n_frames": video.n_frames,
        "objects": [
            {"shape": o.shape, "colour": o.colour, "direction": o.direction} for o in video.objects
        ],
        "qvh": qvh,
        "charades": charades,
        "refcoco": refcoco,
        "mevis": {"expressions": expressions, "masks": masks},
        "conversation": [
            {"video": f"{vid}.mp4", "QA": [{"i": "", "q": q, "a": a} for q, a in turns]}
            for turns in (_plain_turns(video, rng), _task_turns(video, rng))
        ],
        "mc": [dict(item, video=f"{vid}.mp4") for item in multiple_choice(video, rng)],
        "gqa": grounded_qa(video, rng),
    }
