"""The training stream: DataLoader workers give the very batches the main process builds, the
skips they meet are counted once, a stream started at micro-batch k continues a whole run's
exactly, and the temporal head's frames come decoded in the batch."""

import json
from pathlib import Path

import pytest
import torch
from test_dataset import rec
from test_video import denorm, grey, write_mp4

from tpo.config import TPOConfig, load_config
from tpo.data.dataset import VideoTaskDataset
from tpo.data.video import sample_feature_times
from tpo.train.data import TrainData, text_collator
from tpo.train.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    mp4 = str(write_mp4(tmp / "v.mp4", num=40, fps=10, size=64))
    corrupt = tmp / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    records = [
        rec(mp4, "temporal", qid="t", windows=[(1.0, 2.0)]),
        rec(str(corrupt), qid="bad"),
        rec(mp4, qid="c"),
    ]
    cfg = load_config(TPOConfig, [ROOT / "configs" / "tiny" / "stage2.yaml"], [])
    return records, text_collator(cfg)


def _data(parts, workers: int) -> TrainData:
    records, collator = parts
    ds = VideoTaskDataset(
        records, num_frames=4, img_size=32, sampling="rand", seed=1, feature_rate=(2.0, 6)
    )
    weights = torch.ones(len(records), dtype=torch.double)
    return TrainData(ds, weights, collator, 3, 7, DistInfo(0, 1, 0, "cpu"), num_workers=workers)


def _key(batch) -> tuple:
    temporal = [None if f is None else f.sum().item() for f in batch.temporal_frames]
    return (batch.frames.sum().item(), batch.input_ids.tolist(), batch.videos, temporal)


def _take(stream, n: int) -> list:
    return [b for b, _ in zip(stream, range(n))]


def test_workers_build_the_main_process_batches_and_count_skips_once(parts):
    main, workers = _data(parts, 0), _data(parts, 2)
    a, b = _take(main.iterate(0), 8), _take(workers.iterate(0), 8)
    assert [_key(x) for x in a] == [_key(y) for y in b]
    met = sum(len(x.skipped) for x in b)
    assert met >= 1  # the corrupt record was drawn; each worker that met it reported it
    # counted once per record in the main process, as without workers
    assert main.bad_samples == workers.bad_samples == {"video_corrupt": 1}
    assert json.dumps(main.state_dict()) == json.dumps(workers.state_dict())


def test_a_stream_started_at_k_continues_the_whole_one(parts):
    whole = _take(_data(parts, 2).iterate(0), 6)
    first = _data(parts, 0)
    _take(first.iterate(0), 3)
    resumed = _data(parts, 2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    again = _take(resumed.iterate(3), 3)
    assert [_key(x) for x in again] == [_key(y) for y in whole[3:]]


def test_temporal_frames_are_decoded_at_the_feature_times(parts):
    batch = next(b for b in _data(parts, 0).iterate(0) if "temporal" in b.targets[0])
    times = sample_feature_times(4.0, 2.0, 6)  # 4 s at 2/s = 8 > 6: six equal clips
    assert torch.allclose(batch.temporal_times[0], times)
    frames = batch.temporal_frames[0]
    assert frames.shape == (6, 3, 32, 32)
    want = torch.tensor([float(grey(round(t * 10))) for t in times.tolist()])
    assert torch.allclose(denorm(frames).mean((1, 2, 3)), want, atol=1.5)
    # samples without temporal targets carry no temporal frames
    assert all(
        f is None for f, t in zip(batch.temporal_frames, batch.targets) if "temporal" not in t
    )
