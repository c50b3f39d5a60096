"""The toy video world: deterministic files that load through the native loaders and agree with
the rendered state (decoded pixels, masks, boxes, motion, order, counts)."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tpo.data.loaders import load_annotation
from tpo.data.templates import MASK_ANSWER, REGION_ANSWER, TEMPORAL_ANSWER
from tpo.data.toyworld import TASK_ANSWERS, TASK_PAIRS, generate_toyworld, summarize
from tpo.data.toyworld_render import COLOURS, DIRECTIONS, RGB, SHAPES, render_video

N_VIDEOS = 5
PAIRS = ("<time_begin><temp>", "<box_begin><boxes>", "<track_begin><tracking>")
TPO = Path(sys.executable).parent / "tpo"


def annotation_bytes(root: Path) -> dict[str, bytes]:
    files = sorted((root / "annotations").rglob("*")) + [root / "toyworld.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def video_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "videos").glob("*.mp4"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "w1"
    generate_toyworld(root, num_videos=N_VIDEOS, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def rendered():
    return [render_video(0, i) for i in range(N_VIDEOS)]


def ann(world, name):
    return world / "annotations" / name


def test_render_state(rendered):
    pairs = {(s, c) for s in SHAPES for c in COLOURS}
    for video in rendered:
        assert video.frames.shape[1:] == (128, 128, 3) and video.frames.dtype == np.uint8
        assert 12.0 <= video.duration <= 20.0 and video.fps == 8.0
        assert 1 <= len(video.objects) <= 3
        names = [(o.shape, o.colour) for o in video.objects]
        assert len(set(names)) == len(names) and set(names) <= pairs
        union = np.zeros(video.frames.shape[:3], dtype=int)
        starts = sorted(o.t0 for o in video.objects)
        assert all(b - a >= 16 for a, b in zip(starts, starts[1:]))  # appear >= 2 s apart
        assert len({o.direction for o in video.objects}) == len(video.objects)
        for obj in video.objects:
            # >= 3 s long, >= 2 s from both ends of the video
            assert obj.t1 - obj.t0 >= 24 and 16 <= obj.t0 and obj.t1 <= video.n_frames - 16
            assert 18 <= obj.side <= 30
            present = obj.areas > 0
            assert present[obj.t0 : obj.t1].all() and present.sum() == obj.t1 - obj.t0
            b = obj.boxes[present]
            assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 128).all() and (b[:, 2:] > b[:, :2]).all()
            assert not obj.masks[~present].any()
            union += obj.masks
        assert union.max() <= 1  # visible masks never overlap: later shapes hide earlier ones
    # (seed, index) alone decides a video
    again = render_video(0, 1)
    assert np.array_equal(again.frames, rendered[1].frames)
    assert not np.array_equal(render_video(1, 1).frames[:10], rendered[1].frames[:10])


def test_occlusion_keeps_the_last_drawn_shape():
    for index in range(40):
        video = render_video(0, index)
        if len(video.objects) < 2:
            continue
        first, last = video.objects[0], video.objects[-1]
        overlap = (first.areas > 0) & (last.masks.reshape(len(last.masks), -1).sum(1) > 0)
        for f in np.flatnonzero(overlap):
            # pixels of the last shape are its colour and never in the first shape's mask
            assert not (first.masks[f] & last.masks[f]).any()
            assert (video.frames[f][last.masks[f]] == RGB[last.colour]).all()
        if (first.visible_fraction()[first.areas > 0] < 1).any():
            return
    pytest.fail("no occlusion in 40 videos")


def test_every_file_loads_strictly(world):
    videos = world / "videos"
    n = {}
    for fmt, name, split in [
        ("qvh", "qvh_train.jsonl", "train"),
        ("qvh", "qvh_test.jsonl", "test"),
        ("charades", "charades_train.txt", "train"),
        ("charades", "charades_test.txt", "test"),
        ("refcoco", "refcoco_train.json", "train"),
        ("refcoco", "refcoco_test.json", "test"),
        ("mevis", "mevis_train", "train"),
        ("mevis", "mevis_test", "test"),
        ("conversation", "conversation_train.json", "train"),
        ("mvbench", "mvbench_train.json", "train"),
        ("mvbench", "mvbench_test.json", "test"),
        ("nextgqa", "nextgqa_test", "test"),
    ]:
        records = load_annotation(fmt, ann(world, name), videos, split=split, strict=True)
        assert records, name
        assert all(Path(r.video).is_file() for r in records), name
        n[name] = records
    test_vids = {Path(r.video).stem for r in n["mvbench_test.json"]}
    train_vids = {Path(r.video).stem for r in n["qvh_train.jsonl"]}
    assert test_vids == {f"toy_{N_VIDEOS - 1:05d}"} and not test_vids & train_vids
    assert len(n["nextgqa_test"]) == 2 * len(n["qvh_test.jsonl"])  # two questions per object
    meta = json.loads((world / "toyworld.json").read_text())
    assert meta["splits"]["train"]["videos"] == N_VIDEOS - 1 and meta["seed"] == 0
    chance = meta["chance"]
    assert chance["mvbench_test"]["random"] == 0.25 and chance["nextgqa_test"]["random"] == 0.2
    assert chance["mvbench_test"]["items"] == len(n["mvbench_test.json"])
    assert 0.0 <= chance["mvbench_test"]["blind_majority"] <= 1.0


def test_same_seed_same_bytes_other_seed_differs_workers_do_not_matter(world, tmp_path):
    two = tmp_path / "w2"
    generate_toyworld(two, num_videos=N_VIDEOS, seed=0, workers=2)
    assert annotation_bytes(two) == annotation_bytes(world)
    assert video_bytes(two) == video_bytes(world)
    other = tmp_path / "w3"
    generate_toyworld(other, num_videos=N_VIDEOS, seed=1, workers=2)
    a, b = annotation_bytes(other), annotation_bytes(world)
    assert (
        a.keys() == b.keys()
        and a["annotations/qvh_train.jsonl"] != b["annotations/qvh_train.jsonl"]
    )


def test_decoded_pixels_and_masks_match_the_annotations(world, rendered):
    boxes = json.loads(ann(world, "refcoco_train.json").read_text())
    meta = json.loads(ann(world, "mevis_train/meta_expressions.json").read_text())["videos"]
    masks = json.loads(ann(world, "mevis_train/mask_dict.json").read_text())
    palette = np.array([RGB[c] for c in COLOURS], dtype=float)
    for item in boxes:
        video = rendered[int(item["video"][4:9])]
        reader = decord.VideoReader(str(world / "videos" / item["video"]))
        assert len(reader) == video.n_frames
        frame = reader[item["frame_index"]].asnumpy().astype(float)
        x, y, w, h = item["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w >= 14 and h >= 14
        cx, cy = int(x + w / 2), int(y + h / 2)
        mean = frame[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0)
        colour = item["expression"].split()[1]
        assert COLOURS[int(np.argmin(((palette - mean) ** 2).sum(1)))] == colour
        assert np.abs(mean - RGB[colour]).max() < 40
        assert item["time"] == round(item["frame_index"] / 8.0, 2)
        # the same object's mask on that frame is fully visible and has exactly this box
        vid = item["video"][:-4]
        exps = meta[vid]["expressions"].values()
        (exp,) = [e for e in exps if e["exp"].startswith(item["expression"] + " moving")]
        rle = masks[exp["anno_id"][0]][item["frame_index"]]
        assert list(mask_utils.toBbox(rle)) == item["bbox"]
        obj = video.objects[exp["obj_id"][0]]
        assert int(mask_utils.area(rle)) == obj.areas[item["frame_index"]]


def test_rles_are_the_visible_masks(world, rendered):
    meta = json.loads(ann(world, "mevis_train/meta_expressions.json").read_text())["videos"]
    masks = json.loads(ann(world, "mevis_train/mask_dict.json").read_text())
    checked = 0
    for vid, entry in meta.items():
        video = rendered[int(vid[4:])]
        assert entry["frames"] == [f"{i:05d}" for i in range(video.n_frames)]
        tracks = {}
        for exp in entry["expressions"].values():
            obj = video.objects[exp["obj_id"][0]]
            # every expression names its object alone: by colour and shape, or by motion
            named = [o for o in video.objects if o.name in exp["exp"]]
            moving = [o for o in video.objects if exp["exp"].endswith(f"moving {o.direction}")]
            assert named in ([obj], []) and moving in ([obj], []) and (named or moving)
            tracks.setdefault(exp["anno_id"][0], set()).add(exp["exp"])
            rles = masks[exp["anno_id"][0]]
            assert len(rles) == video.n_frames
            for f, rle in enumerate(rles):
                area = int(obj.masks[f].sum())
                assert (rle is None) == (area == 0)
                if rle is not None:
                    assert int(mask_utils.area(rle)) == area
            f = (obj.t0 + obj.t1) // 2
            if rles[f] is not None:
                assert np.array_equal(mask_utils.decode(rles[f]).astype(bool), obj.masks[f])
                checked += 1
        # one mask track per object, referred to by three expressions
        assert all(len(exps) == 3 for exps in tracks.values())
    assert checked > 0


def test_windows_and_saliency(world, rendered):
    lines = ann(world, "qvh_train.jsonl").read_text().splitlines()
    charades = ann(world, "charades_train.txt").read_text().splitlines()
    assert len(lines) == len(charades) == sum(len(v.objects) for v in rendered[:-1])
    for line, cline in zip(lines, charades):
        q = json.loads(line)
        video = rendered[int(q["vid"][4:])]
        (obj,) = [o for o in video.objects if q["query"] == f"{o.name} moves {o.direction}"]
        (s, e) = q["relevant_windows"][0]
        assert (s, e) == (obj.t0 / 8.0, obj.t1 / 8.0) and e - s >= 3 and e <= q["duration"]
        assert cline == f"{q['vid']} {s:.1f} {e:.1f}##{q['query']}."
        assert q["duration"] == round(video.duration, 2)
        ids = q["relevant_clip_ids"]
        n_clips = int(np.ceil(q["duration"] / 2))  # the last clip may be cut short
        assert ids == [i for i in range(n_clips) if 2 * i < e and 2 * i + 2 > s]
        assert len(q["saliency_scores"]) == len(ids)
        for row in q["saliency_scores"]:
            assert len(row) == 3 and all(isinstance(v, int) and 0 <= v <= 4 for v in row)
        # a clip the object fills completely scores near 4, one it barely touches near 0
        share = obj.visible_fraction()
        for i, row in zip(ids, q["saliency_scores"]):
            exact = round(4 * share[16 * i : 16 * i + 16].mean())
            assert all(abs(v - exact) <= 1 for v in row)


def direction_from_boxes(obj):
    present = np.flatnonzero(obj.areas > 0)
    a, b = obj.boxes[present[0]], obj.boxes[present[-1]]
    dx, dy = (b[0] + b[2] - a[0] - a[2]) / 2, (b[1] + b[3] - a[1] - a[3]) / 2
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def test_multiple_choice_answers_follow_the_rendering(world, rendered):
    train = json.loads(ann(world, "mvbench_train.json").read_text())
    items = train + json.loads(ann(world, "mvbench_test.json").read_text())
    kinds = Counter()
    for item in items:
        video = rendered[int(item["video"][4:9])]
        cands = item["candidates"]
        assert len(cands) == 4 == len(set(cands)) and cands.count(item["answer"]) == 1
        q, a = item["question"], item["answer"]
        if q.startswith("How many"):
            assert a == ("one", "two", "three")[len(video.objects) - 1]
        elif q.startswith("Which direction"):
            (obj,) = [o for o in video.objects if o.name in q]
            assert a == direction_from_boxes(obj) and set(cands) == set(DIRECTIONS)
        elif q.startswith("What colour"):
            movers = [o for o in video.objects if direction_from_boxes(o) in q.rstrip("?").split()]
            assert len(movers) == 1 and a == movers[0].colour
        else:
            assert q == "Which shape appears first?"
            first = min(video.objects, key=lambda o: np.flatnonzero(o.areas)[0])
            assert a == first.name
        kinds[q.split()[0] + q.split()[1]] += 1
    assert len(kinds) == 4
    whole = len(train) // 4 * 4
    assert whole >= 8
    positions = Counter(item["candidates"].index(item["answer"]) for item in train[:whole])
    assert sorted(positions.values()) == [whole // 4] * 4  # balanced in blocks of four


def test_conversation_task_calls_hold_exactly_one_pair(world):
    assert tuple(TASK_PAIRS[t] for t in ("temporal", "region", "mask")) == PAIRS
    assert TASK_ANSWERS == {
        "temporal": "It happens at <time_begin><temp>.",
        "region": "It is here: <box_begin><boxes>.",
        "mask": "Tracking it: <track_begin><tracking>.",
    }
    convs = json.loads(ann(world, "conversation_train.json").read_text())
    answers = Counter()
    for conv in convs:
        for turn in conv["QA"]:
            n = sum(turn["a"].count(p) for p in PAIRS)
            if n:
                assert n == 1 and turn["a"] in (TEMPORAL_ANSWER, REGION_ANSWER, MASK_ANSWER)
                answers[turn["a"]] += 1
            else:
                assert "<" not in turn["a"] and turn["a"].endswith(".")
    assert (
        answers[TEMPORAL_ANSWER] == answers[REGION_ANSWER] == answers[MASK_ANSWER] == N_VIDEOS - 1
    )


def test_grounded_qa_locations(world, rendered):
    gsub = json.loads(ann(world, "nextgqa_test/gsub_test.json").read_text())
    records = load_annotation("nextgqa", ann(world, "nextgqa_test"), world / "videos", split="test")
    for r in records:
        vid = Path(r.video).stem
        video = rendered[int(vid[4:])]
        named = [
            o for o in video.objects if o.name in r.question or o.name == r.options[r.answer_index]
        ]
        assert len(named) == 1 and len(r.options) == 5
        obj = named[0]
        assert r.windows == [(obj.t0 / 8.0, obj.t1 / 8.0)]
        assert gsub[vid]["fps"] == 8.0 and gsub[vid]["duration"] == round(video.duration, 2)


def test_cli_generates_and_summarizes(tmp_path):
    out = tmp_path / "tmp"
    done = subprocess.run(
        [str(TPO), "toyworld", "--out", str(out), "--videos", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((out / "videos").glob("*.mp4"))) == 3
    assert "qvh_train.jsonl" in done.stdout and "nextgqa_test/test.csv" in done.stdout
    summary = summarize(out)
    assert summary["splits"]["train"]["videos"] == 2 and summary["splits"]["test"]["videos"] == 1
    qvh = summary["splits"]["train"]["files"]["qvh_train.jsonl"]
    assert qvh == len(ann(out, "qvh_train.jsonl").read_text().splitlines()) >= 2
    shown = subprocess.run(
        [str(TPO), "toyworld", "--summary", "--out", str(out)], capture_output=True, text=True
    )
    assert shown.returncode == 0 and f"qvh_train.jsonl: {qvh}" in shown.stdout
    missing = subprocess.run(
        [str(TPO), "toyworld", "--summary", "--out", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "toyworld.json" in missing.stderr


def test_blind_majority_by_hand():
    from tpo.data.toyworld import _chance

    train = [{"question": "q1", "answer": a} for a in "aab"]
    test = [{"question": "q1", "answer": "a"}, {"question": "q1", "answer": "b"}]
    test.append({"question": "q2", "answer": "c"})
    # q1 -> 'a' (2 of 3 in train): right, wrong; q2 unseen in train: a 1-in-4 guess
    got = _chance(train, test, 4)
    assert got == {"items": 3, "random": 0.25, "blind_majority": round(1.25 / 3, 3)}
