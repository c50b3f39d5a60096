"""The training dataset: head targets, forced region frame, masks, bad samples, weighted mixing."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from test_video import denorm, grey, write_mp4

from tpo.data.dataset import VideoTaskDataset, include_frame, sample_weights
from tpo.data.records import AnnotationError, Record
from tpo.data.video import VideoError
from tpo.train.data import WeightedDraws
from tpo.train.distributed import DistInfo


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return str(write_mp4(tmp_path_factory.mktemp("ds") / "v.mp4", num=40, fps=10, size=64))


def rec(video, task="conversation", **kw):
    return Record(video=video, question="q", answer="a", task=task, qid=kw.pop("qid", "0"),
                  source="test:1", **kw)  # fmt: skip


def dataset(records, **kw):
    return VideoTaskDataset(records, num_frames=kw.pop("num_frames", 8), img_size=32, **kw)


def test_temporal_targets(mp4):
    r = rec(mp4, "temporal", windows=[(1.0, 2.0), (3.0, 4.0)], clip_ids=[0, 1],
            saliency=[[2, 3, 4], [0, 0, 1]])  # fmt: skip
    s = dataset([r])[0]
    assert s.frames.shape == (8, 3, 32, 32) and s.duration == pytest.approx(4.0)
    # (centre, width) / 4 s
    assert torch.allclose(s.spans, torch.tensor([[0.375, 0.25], [0.875, 0.25]]))
    # 4 s -> 2 clips of 2 s; mean over annotators
    assert torch.allclose(s.saliency, torch.tensor([3.0, 1 / 3]))
    # a clip 2 s - 4 s re-bases the windows: (3, 4) -> centre 1.5/2, width 1/2
    clipped = dataset([rec(mp4, "temporal", windows=[(3.0, 4.0)], start=2.0, end=4.0)])[0]
    assert torch.allclose(clipped.spans, torch.tensor([[0.75, 0.5]]))
    assert ((clipped.indices >= 20) & (clipped.indices < 40)).all()


def test_region_forces_the_asked_frame(mp4):
    assert include_frame(np.array([2, 7, 12, 17]), 9) == (pytest.approx([2, 9, 12, 17]), 1)
    r = rec(mp4, "region", box=(8.0, 16.0, 32.0, 48.0), frame_index=13, frame_time=1.3,
            width=64, height=64)  # fmt: skip
    s = dataset([r], sampling="middle")[0]
    assert s.indices[s.box_frame] == 13 and (np.diff(s.indices) >= 0).all()
    assert torch.allclose(s.box, torch.tensor([0.125, 0.25, 0.5, 0.75]))
    # the frame at box_frame really is video frame 13
    assert denorm(s.frames[s.box_frame]).mean().item() == pytest.approx(grey(13), abs=2.0)
    assert s.timestamps[s.box_frame].item() == pytest.approx(1.3)


def test_mask_targets_at_sampled_frames(mp4):
    masks, expected = {}, {}
    for i in range(0, 40, 2):  # object on even frames, its size grows with the frame index
        m = np.zeros((16, 20), np.uint8)
        m[: 1 + i // 4, :3] = 1
        enc = mask_utils.encode(np.asfortranarray(m))
        masks[i] = {"size": [16, 20], "counts": enc["counts"].decode()}
        expected[i] = int(m.sum())
    r = rec(mp4, "mask", masks=masks, mask_frames=list(range(40)), height=16, width=20)
    s = dataset([r], num_frames=6, sampling="rand", seed=3)[0]
    assert s.masks.shape == (6, 16, 20) and s.masks.dtype == torch.bool
    for k, i in enumerate(s.indices.tolist()):
        assert s.masks[k].sum().item() == expected.get(i, 0)
    assert s.mask_valid.all()
    partial = rec(mp4, "mask", masks={0: masks[0]}, mask_frames=[0, 1, 2], height=16, width=20)
    s = dataset([partial], num_frames=4, sampling="middle")[0]
    assert s.mask_valid.tolist() == [i in (0, 1, 2) for i in s.indices]


def test_bad_samples_are_skipped_and_counted(mp4, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    records = [
        rec(mp4, qid="good0"),
        rec(str(corrupt), qid="corrupt"),
        rec(str(tmp_path / "missing.mp4"), qid="missing"),
        rec(mp4, "temporal", qid="outside", windows=[(30.0, 35.0)], duration=40.0),
        rec(mp4, qid="good1"),
    ]
    ds = dataset(records)
    got = [ds[i] for i in range(len(ds))]
    assert [s.record.qid for s in got] == ["good0", "good1", "good1", "good1", "good1"]
    assert got[1].skipped == ("video_corrupt", "video_missing", "annotation_bad_window")
    assert got[2].skipped == () and got[0].skipped == ()
    assert ds.bad_samples == {"video_corrupt": 1, "video_missing": 1, "annotation_bad_window": 1}
    # a resumed run restores what was found: the bad records are neither reread nor recounted
    again = dataset(records)
    again.load_state_dict(json.loads(json.dumps(ds.state_dict())))
    assert [again[i].record.qid for i in range(len(again))] == [s.record.qid for s in got]
    assert again.bad_samples == ds.bad_samples and again[1].skipped == ()
    strict = dataset(records, strict=True)
    with pytest.raises(VideoError, match=str(corrupt)):
        strict[1]
    with pytest.raises(RuntimeError, match="no readable sample"):
        dataset(records[1:3])[0]


def test_sampling_is_deterministic_per_epoch(mp4):
    ds = dataset([rec(mp4)], sampling="rand", seed=1)
    a, b = ds[0].indices, ds[0].indices
    assert (a == b).all()
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen.add(tuple(ds[0].indices))
    assert len(seen) > 1


def test_weighted_mixing_follows_dataset_weights():
    records = [rec("x", qid=str(i), dataset="small") for i in range(10)]
    records += [rec("x", qid=str(i), dataset="big") for i in range(90)]
    w = sample_weights(records, {"small": 3.0, "big": 1.0})
    assert w[:10].sum().item() == pytest.approx(0.75 * w.sum().item())
    sampler = WeightedDraws(w, 100, seed=0, dist=DistInfo(0, 1, 0, "cpu"))
    draws = [i for k in range(40) for i in sampler.draw(k)]
    share = Counter(records[i].dataset for i in draws)["small"] / 4000
    assert share == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match=r"no weight for dataset\(s\) \['big'\]"):
        sample_weights(records, {"small": 1.0})


def test_undecodable_mask_is_a_counted_skip(mp4):
    good = {"size": [16, 20], "counts": mask_utils.encode(np.ones((16, 20), np.uint8, "F"))}
    good["counts"] = good["counts"]["counts"].decode()
    bad = {"size": [16, 20], "counts": "!!!!~~~~"}  # passes pycocotools' area, fails decode
    frames = list(range(40))
    records = [
        rec(mp4, "mask", qid="bad", masks=dict.fromkeys(frames, bad), mask_frames=frames,
            height=16, width=20),
        rec(mp4, "mask", qid="good", masks=dict.fromkeys(frames, good), mask_frames=frames,
            height=16, width=20),
    ]  # fmt: skip
    ds = dataset(records, num_frames=2)
    assert ds[0].record.qid == "good" and ds.bad_samples == {"annotation_bad_value": 1}
    with pytest.raises(AnnotationError, match=r"mask of frame \d+ is not a valid COCO RLE"):
        dataset(records, num_frames=2, strict=True)[0]
