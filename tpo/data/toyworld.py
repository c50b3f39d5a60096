"""The toy video world: short mp4 videos of coloured shapes and exact annotations in the native
formats of the real datasets (QVHighlights, Charades-STA, RefCOCO-style, MeViS, VideoChat2
conversations, MVBench, NExT-GQA), readable by `tpo.data.loaders`.

Layout under `out`: `videos/toy_00000.mp4`, `annotations/...`, `toyworld.json` (parameters and
counts). Video `i` depends only on (seed, i), so the output is the same for any worker count.
The last `test_fraction` of the videos by index form the test split.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tpo.data.toyworld_annotate import TASK_ANSWERS, TASK_PAIRS, annotate_video, r2
from tpo.data.toyworld_render import FPS, SIZE, ToyObject, ToyVideo, render_video, write_mp4

__all__ = [
    "TASK_ANSWERS",
    "TASK_PAIRS",
    "ToyObject",
    "ToyVideo",
    "format_summary",
    "generate_toyworld",
    "render_video",
    "summarize",
    "write_mp4",
]

VERSION = 2  # 2: 2-s edge margins and appear gaps, 18-30 px, indented JSON, 3 MeViS expressions
SPLITS = ("train", "test")
MC_OPTIONS = 4
GQA_OPTIONS = 5
GQA_COLUMNS = ("video_id", "frame_count", "width", "height", "question", "answer", "qid", "type")
GQA_COLUMNS += tuple(f"a{i}" for i in range(GQA_OPTIONS))
# annotation file (relative to annotations/) -> how its items are counted, for the summary
FILES = {
    "qvh_{split}.jsonl": "lines",
    "charades_{split}.txt": "lines",
    "refcoco_{split}.json": "list",
    "mevis_{split}/meta_expressions.json": "expressions",
    "mvbench_{split}.json": "list",
}
TRAIN_FILES = {"conversation_train.json": "turns"}
TEST_FILES = {"nextgqa_test/test.csv": "lines"}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _line(obj: Any) -> str:
    """One JSON Lines line."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _dumps(obj: Any) -> str:
    """A whole JSON file, indented for reading."""
    return json.dumps(obj, sort_keys=True, indent=1) + "\n"


def _make_video(job: tuple[int, int, str]) -> dict:
    """Worker: render video `index`, write its mp4, return its annotation pieces."""
    seed, index, videos_dir = job
    video = render_video(seed, index)
    write_mp4(video.frames, video.fps, Path(videos_dir) / f"{video.vid}.mp4")
    return annotate_video(video)


def _positions(rng: np.random.Generator, count: int, k: int) -> list[int]:
    """Right-answer positions, each of the `k` equally often: a permutation per block of `k`."""
    blocks = [rng.permutation(k) for _ in range(-(-count // k))]
    return [int(p) for p in np.concatenate(blocks)[:count]] if blocks else []


def _with_answer(item: dict, position: int) -> list[str]:
    options = list(item["distractors"])
    options.insert(position, item["answer"])
    return options


def _split_files(split: str, pieces: list[dict], ids: Counter, seed: int) -> dict[str, str]:
    """Text of each annotation file of one split; `ids` numbers qids/ids across splits."""
    files: dict[str, str] = {}
    qvh, charades, refcoco, mc, meta, mask_dict = [], [], [], [], {}, {}
    for p in pieces:
        for entry in p["qvh"]:
            qvh.append(_line(dict(entry, qid=ids["qvh"])))
            ids["qvh"] += 1
        charades.extend(p["charades"])
        for entry in p["refcoco"]:
            refcoco.append(dict(entry, id=ids["refcoco"]))
            ids["refcoco"] += 1
        annos = []
        for rles in p["mevis"]["masks"]:
            annos.append(str(ids["mevis"]))
            ids["mevis"] += 1
            mask_dict[annos[-1]] = rles
        expressions = {}
        for e, exp in enumerate(p["mevis"]["expressions"]):
            entry = {"exp": exp["exp"], "obj_id": exp["obj_id"]}
            expressions[str(e)] = dict(entry, anno_id=[annos[exp["track"]]])
        frames = [f"{i:05d}" for i in range(p["n_frames"])]
        meta[p["vid"]] = {"expressions": expressions, "frames": frames}
        mc.extend(p["mc"])
    positions = _positions(
        np.random.default_rng([seed, 2, SPLITS.index(split)]), len(mc), MC_OPTIONS
    )
    mvbench = [
        {
            "video": item["video"],
            "question": item["question"],
            "candidates": _with_answer(item, pos),
            "answer": item["answer"],
        }
        for item, pos in zip(mc, positions)
    ]
    files[f"qvh_{split}.jsonl"] = "".join(line + "\n" for line in qvh)
    files[f"charades_{split}.txt"] = "".join(line + "\n" for line in charades)
    files[f"refcoco_{split}.json"] = _dumps(refcoco)
    files[f"mevis_{split}/meta_expressions.json"] = _dumps({"videos": meta})
    files[f"mevis_{split}/mask_dict.json"] = _dumps(mask_dict)
    files[f"mvbench_{split}.json"] = _dumps(mvbench)
    if split == "train":
        conversation = [item for p in pieces for item in p["conversation"]]
        files["conversation_train.json"] = _dumps(conversation)
    if split == "test":
        files.update(_nextgqa(pieces, seed))
    return files


def _nextgqa(pieces: list[dict], seed: int) -> dict[str, str]:
    """gsub_test.json and test.csv of NExT-GQA (answer = index of the right option)."""
    count = sum(len(p["gqa"]) for p in pieces)
    positions = iter(_positions(np.random.default_rng([seed, 3]), count, GQA_OPTIONS))
    gsub, buffer = {}, io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GQA_COLUMNS)
    for p in pieces:
        location = {}
        for q, item in enumerate(p["gqa"]):
            pos = next(positions)
            location[str(q)] = [item["window"]]
            row = [p["vid"], p["n_frames"], SIZE, SIZE, item["question"], pos, q, item["type"]]
            writer.writerow(row + _with_answer(item, pos))
        gsub[p["vid"]] = {"duration": p["duration"], "fps": FPS, "location": location}
    return {"nextgqa_test/gsub_test.json": _dumps(gsub), "nextgqa_test/test.csv": buffer.getvalue()}


def _world_stats(pieces: list[dict]) -> dict:
    durations = [p["duration"] for p in pieces]
    objects = [o for p in pieces for o in p["objects"]]
    return {
        "durations": {
            "min": r2(min(durations, default=0.0)),
            "mean": r2(float(np.mean(durations)) if durations else 0.0),
            "max": r2(max(durations, default=0.0)),
        },
        "objects": {
            "total": len(objects),
            "per_video": dict(Counter(str(len(p["objects"])) for p in pieces)),
            "shapes": dict(Counter(o["shape"] for o in objects)),
            "colours": dict(Counter(o["colour"] for o in objects)),
            "directions": dict(Counter(o["direction"] for o in objects)),
        },
    }


def _chance(train: list[dict], test: list[dict], options: int) -> dict:
    """Accuracy on `test` of guessing (1 / options) and of the best blind guess: for each
    question text, the answer most frequent in `train` (a guess where train lacks the text)."""
    by_question: dict[str, Counter] = {}
    for item in train:
        by_question.setdefault(item["question"], Counter())[item["answer"]] += 1
    hits = 0.0
    for item in test:
        seen = by_question.get(item["question"])
        hits += (seen.most_common(1)[0][0] == item["answer"]) if seen else 1.0 / options
    return {
        "items": len(test),
        "random": round(1.0 / options, 3),
        "blind_majority": round(hits / max(len(test), 1), 3),
    }


def n_test_videos(num_videos: int, test_fraction: float) -> int:
    """Videos in the test split: the last round(n * fraction), at least one when n >= 2."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction} must be in [0, 1)")
    n_test = int(round(num_videos * test_fraction))
    return max(n_test, 1) if num_videos >= 2 and test_fraction > 0 else n_test


def generate_toyworld(
    out: Path,
    num_videos: int = 200,
    seed: int = 0,
    workers: int | None = None,
    test_fraction: float = 0.2,
) -> dict:
    """Write `num_videos` videos and every annotation file under `out`; returns the summary."""
    if num_videos < 1:
        raise ValueError(f"num_videos {num_videos} must be >= 1")
    out = Path(out)
    videos_dir, ann_dir = out / "videos", out / "annotations"
    videos_dir.mkdir(parents=True, exist_ok=True)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers {workers} must be >= 1")
    jobs = [(seed, i, str(videos_dir)) for i in range(num_videos)]
    bar = tqdm(total=num_videos, desc="toyworld", unit="video")
    if workers <= 1:
        pieces = []
        for job in jobs:
            pieces.append(_make_video(job))
            bar.update()
    else:
        with multiprocessing.Pool(workers) as pool:
            pieces = []
            for piece in pool.imap(_make_video, jobs, chunksize=1):
                pieces.append(piece)
                bar.update()
    bar.close()
    n_train = num_videos - n_test_videos(num_videos, test_fraction)
    by_split = {"train": pieces[:n_train], "test": pieces[n_train:]}
    ids: Counter = Counter()
    for split in SPLITS:
        for name, text in _split_files(split, by_split[split], ids, seed).items():
            _atomic_write(ann_dir / name, text)
    meta = {
        "version": VERSION,
        "seed": seed,
        "videos": num_videos,
        "fps": FPS,
        "size": [SIZE, SIZE],
        "test_fraction": test_fraction,
        "splits": {
            s: {"videos": len(by_split[s]), "vids": [p["vid"] for p in by_split[s]]} for s in SPLITS
        },
        "chance": {
            name: _chance(
                [i for p in by_split["train"] for i in p[key]],
                [i for p in by_split["test"] for i in p[key]],
                options,
            )
            for name, key, options in (
                ("mvbench_test", "mc", MC_OPTIONS),
                ("nextgqa_test", "gqa", GQA_OPTIONS),
            )
        },
        **_world_stats(pieces),
    }
    _atomic_write(out / "toyworld.json", _dumps(meta))
    return summarize(out)


def _count(path: Path, how: str) -> int:
    if how == "lines":
        lines = path.read_text(encoding="utf-8").splitlines()
        return sum(1 for line in lines if line.strip()) - (path.suffix == ".csv")
    data = json.loads(path.read_text(encoding="utf-8"))
    if how == "expressions":
        return sum(len(v["expressions"]) for v in data["videos"].values())
    if how == "turns":
        return sum(len(item["QA"]) for item in data)
    return len(data)


def summarize(out: Path) -> dict:
    """Summary of an existing world: parameters, items per split and file, durations, objects."""
    out = Path(out)
    meta_path = out / "toyworld.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no toy world here (write one with `tpo toyworld`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    keys = ("version", "seed", "videos", "fps", "size", "durations", "chance")
    summary = {k: meta[k] for k in keys}
    summary["objects"] = meta["objects"]
    summary["out"] = str(out)
    summary["splits"] = {}
    for split in SPLITS:
        specs = dict(FILES, **(TRAIN_FILES if split == "train" else TEST_FILES))
        counts = {}
        for pattern, how in specs.items():
            path = out / "annotations" / pattern.format(split=split)
            counts[path.relative_to(out / "annotations").as_posix()] = (
                _count(path, how) if path.is_file() else None
            )
        summary["splits"][split] = {"videos": meta["splits"][split]["videos"], "files": counts}
    return summary


def format_summary(summary: dict) -> str:
    """The summary as readable lines."""
    d, o = summary["durations"], summary["objects"]
    lines = [
        f"toy world {summary['out']}: {summary['videos']} videos, seed {summary['seed']}, "
        f"{summary['size'][0]}x{summary['size'][1]} px at {summary['fps']:g} fps, "
        f"version {summary['version']}",
        f"  durations: min {d['min']:g} s, mean {d['mean']:g} s, max {d['max']:g} s",
        f"  objects: {o['total']} (videos by count {dict(sorted(o['per_video'].items()))}); "
        f"shapes {dict(sorted(o['shapes'].items()))}; colours {dict(sorted(o['colours'].items()))}",
    ]
    for name, c in summary["chance"].items():
        lines.append(
            f"  {name} chance: {c['random']:.0%} random, {c['blind_majority']:.0%} blind (train "
            f"majority answer per question; {c['items']} questions)"
        )
    for split, info in summary["splits"].items():
        lines.append(f"  {split}: {info['videos']} videos")
        for name, count in info["files"].items():
            lines.append(f"    {name}: {'MISSING' if count is None else count}")
    return "\n".join(lines)
