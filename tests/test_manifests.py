"""Data manifests: every YAML fits the schema; records load through each dataset's loader."""

import json
from pathlib import Path

import pytest
import torch

from tpo.config import ConfigError
from tpo.data.manifest import DatasetEntry, Manifest, load_manifest, load_records
from tpo.data.records import FORMAT_TASKS, AnnotationError

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "data_manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_fits_the_schema(path):
    m = load_manifest(path)
    assert m.name == path.stem and m.datasets
    for d in m.datasets:
        assert FORMAT_TASKS[d.format] == d.task and d.weight > 0
        assert not Path(d.annotation).is_absolute() and not Path(d.videos).is_absolute()


def test_the_paper_mixtures_are_all_there():
    names = {p.stem: {d.name for d in load_manifest(p).datasets} for p in MANIFESTS}
    heads = {
        "mevis", "sa_v", "activitynet_captions", "tacos", "qvhighlights", "didemo", "queryd",
        "hirest", "ego4d_nlq", "allseeing_v2", "visual_genome", "refcoco", "refcoco_plus",
        "refcocog",
    }  # fmt: skip
    conversation = {
        "youcook2", "activitynet_conv", "videochat2_it", "sharegpt_4o", "llava_hound_dpo",
        "sharegpt4v",
    }  # fmt: skip
    assert names["stage2_heads"] == heads
    assert names["stage3_cotraining"] == heads | conversation
    assert heads < names["stage1_task_assignment"]
    toy_tasks = {p.stem: {d.task for d in load_manifest(p).datasets} for p in MANIFESTS}
    assert toy_tasks["toyworld_stage2"] == {"temporal", "region", "mask"}
    for stage in ("toyworld_stage1", "toyworld_stage3"):
        assert {"temporal", "region", "mask", "conversation"} <= toy_tasks[stage]


def test_toy_manifests_read_a_generated_toy_world(tmp_path):
    """The toy manifests' paths fit the toy world's layout; every record loads strictly and
    its targets line up with the rendered pixels (mask and box cover the coloured shape)."""
    from tpo.data.dataset import VideoTaskDataset
    from tpo.data.toyworld import generate_toyworld
    from tpo.data.video import IMAGENET_MEAN, IMAGENET_STD

    generate_toyworld(tmp_path, num_videos=2, workers=1, test_fraction=0.0)
    for path in MANIFESTS:
        if path.stem.startswith("toyworld"):
            records, report = load_records(load_manifest(path), strict=True, data_root=tmp_path)
            assert records and not report.skipped
            assert {d.name for d in load_manifest(path).datasets} == {r.dataset for r in records}
    records, _ = load_records(load_manifest(ROOT / "data_manifests/toyworld_stage2.yaml"),
                              strict=True, data_root=tmp_path)  # fmt: skip
    ds = VideoTaskDataset(records, num_frames=4, img_size=128, sampling="middle", strict=True)
    first = {task: next(i for i, r in enumerate(records) if r.task == task)
             for task in ("temporal", "region", "mask")}  # fmt: skip
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    temporal = ds[first["temporal"]]
    assert ((temporal.spans >= 0) & (temporal.spans <= 1)).all() and temporal.saliency.max() > 0
    region = ds[first["region"]]
    pixels = (region.frames[region.box_frame] * std + mean) * 255  # 128 px: no resize
    x1, y1, x2, y2 = (region.box * 128).round().int().tolist()
    inside = pixels[:, y1:y2, x1:x2].mean(dim=(1, 2))
    assert (inside - pixels.mean(dim=(1, 2))).abs().max() > 20  # the box holds the coloured shape
    mask = ds[first["mask"]]
    k = int(mask.masks.flatten(1).sum(1).argmax())
    frame = (mask.frames[k] * std + mean) * 255
    on, off = frame[:, mask.masks[k]], frame[:, ~mask.masks[k]]
    assert mask.masks[k].any() and (on.mean(1) - off.mean(1)).abs().max() > 40
    assert on.std(1).max() < 25  # the mask covers one flat colour


def write_manifest(tmp_path, datasets, name="m"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "data_root": str(tmp_path), "datasets": datasets}))
    return path


def entry(**kw):
    base = {
        "name": "a",
        "task": "temporal",
        "format": "qvh",
        "annotation": "a.jsonl",
        "videos": "v",
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "bad, words",
    [
        (entry(format="avi"), r"format must be one of .*got 'avi'"),
        (entry(task="region"), r"format 'qvh' holds 'temporal' records, but task is 'region'"),
        (entry(task="speech"), r"task must be one of"),
        (entry(weight=0), r"weight must be a finite number > 0, got 0"),
        (entry(weight=float("inf")), r"weight must be a finite number > 0, got inf"),
        (entry(sampling=3), r"sampling"),
    ],
)
def test_schema_errors_name_file_and_problem(tmp_path, bad, words):
    path = write_manifest(tmp_path, [bad])
    with pytest.raises(ConfigError, match=rf"{path}.*{words}"):
        load_manifest(path)


def test_duplicate_and_empty(tmp_path):
    with pytest.raises(ConfigError, match="duplicate dataset names \\['a'\\]"):
        load_manifest(write_manifest(tmp_path, [entry(), entry()]))
    with pytest.raises(ConfigError, match="'datasets' is empty"):
        load_manifest(write_manifest(tmp_path, [], name="e"))


def test_load_records_through_the_loaders(tmp_path):
    good = {"qid": 1, "query": "q", "duration": 10, "vid": "v0", "relevant_windows": [[1, 2]]}
    (tmp_path / "a.jsonl").write_text(
        json.dumps(good) + "\n{broken\n" + json.dumps(good | {"qid": 2})
    )
    (tmp_path / "conv.json").write_text(
        json.dumps([{"video": "c.mp4", "QA": [{"q": "hi", "a": "yo"}]}])
    )
    path = write_manifest(
        tmp_path,
        [entry(weight=2.0), entry(name="chat", task="conversation", format="conversation",
                                  annotation="conv.json", videos="cv")],
    )  # fmt: skip
    m = load_manifest(path)
    (tmp_path / "v").mkdir()
    with pytest.raises(AnnotationError, match=r"dataset 'chat': key 'videos' names .*cv, which"):
        load_records(m, strict=False)  # else every draw of 'chat' would be skipped
    (tmp_path / "cv").mkdir()
    records, report = load_records(m, strict=False)
    assert [(r.dataset, r.qid) for r in records] == [("a", "1"), ("a", "2"), ("chat", "0_0")]
    assert records[0].video == str(tmp_path / "v" / "v0.mp4")
    assert records[2].video == str(tmp_path / "cv" / "c.mp4")
    assert report.skipped == {"malformed": 1} and report.loaded == {"a": 2, "chat": 1}
    assert m.weights() == {"a": 2.0, "chat": 1.0}
    with pytest.raises(AnnotationError, match=r"a.jsonl:2: not valid JSON"):
        load_records(m, strict=True)
    # data_root override, and max_records
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.jsonl").write_text(json.dumps(good))
    (other / "v").mkdir()
    moved = Manifest(
        name="x", data_root="/nonexistent", datasets=[DatasetEntry(**entry(max_records=1))]
    )
    records, _ = load_records(moved, data_root=other)
    assert len(records) == 1 and records[0].video == str(other / "v" / "v0.mp4")
