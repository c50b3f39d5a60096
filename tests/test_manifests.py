"""Data manifests: every YAML fits the schema; records load through each dataset's loader."""

import json
from pathlib import Path

import pytest

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
    assert toy_tasks["toyworld_stage1"] == toy_tasks["toyworld_stage3"] == {
        "temporal", "region", "mask", "conversation",
    }  # fmt: skip


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
        (entry(weight=0), r"weight must be > 0"),
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
    moved = Manifest(
        name="x", data_root="/nonexistent", datasets=[DatasetEntry(**entry(max_records=1))]
    )
    records, _ = load_records(moved, data_root=other)
    assert len(records) == 1 and records[0].video == str(other / "v" / "v0.mp4")
