"""Per-head forward / backward times at the tiny size, and SAM2's image-encoder time.

Run: .venv/bin/python bench/heads.py [configs/tiny/model.yaml configs/tiny/heads.yaml]
Temporal and region heads are built from the config and timed as TPOModel calls them (the
TaskHead protocol: gather, run, criterion) when their modules exist; the mask head is SAM2 hiera-t
with random weights (cold: image encoder run; cached: features from the LRU cache). CPU, with
torch's thread count (OMP_NUM_THREADS). Prints median milliseconds over repeats.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from tpo.config import TPOConfig, load_config
from tpo.heads.criterion import weighted_sum

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of `fn()` in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def fwd_bwd(
    run: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]
) -> tuple[float, float]:
    """(forward ms, backward ms) of a loss closure."""
    fwd = median_ms(run)
    bwd_times = []
    for _ in range(REPEATS + 1):
        loss = run()
        for p in params:
            p.grad = None
        start = time.perf_counter()
        loss.backward()
        bwd_times.append((time.perf_counter() - start) * 1e3)
    return fwd, statistics.median(bwd_times[1:])


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _queries(n: int, d_llm: int, samples, vision=None):
    from tpo.model.task_head import HeadQueries

    return HeadQueries(torch.randn(n, d_llm), list(range(n)), samples, vision)


def bench_protocol(head, queries, targets, label: str) -> None:
    """Time a head the way TPOModel calls it: gather, run, prepare_targets, its criterion."""
    from tpo.heads.criterion import weighted_sum

    head.train()
    crit = head.criterion()
    inputs = head.gather(queries)
    tg = head.prepare_targets(targets, inputs)

    def run() -> torch.Tensor:
        return weighted_sum(crit(head.run(queries.hidden, inputs), tg), crit.weight_dict)

    fwd, bwd = fwd_bwd(run, list(head.parameters()))
    print(f"{label:50s} {fwd:10.1f} {bwd:10.1f}")


def bench_temporal(model, d_llm: int, d_vision: int) -> None:
    from tpo.heads.temporal import TemporalHead
    from tpo.model.task_head import HeadSample

    cfg = model.heads.temporal
    head = TemporalHead.from_config(model, d_llm, d_vision)
    n, t = 4, cfg.max_feats
    p = (model.vision.img_size // model.vision.patch_size) ** 2
    shape = (t, p, d_vision) if cfg.spatial else (t, d_vision)  # what the feature source gives
    stamps = (torch.arange(t, dtype=torch.float32) + 0.5) / cfg.feat_fps

    def features(f=torch.randn(*shape)):
        return lambda: (f, stamps)

    samples = [HeadSample(duration=t / cfg.feat_fps, frame_features=features()) for _ in range(n)]
    targets = [
        {"spans": torch.tensor([[0.4, 0.2]]), "saliency": torch.randint(0, 5, (t // 2,)).float()}
        for _ in range(n)
    ]
    kind = f", p={p}" if cfg.spatial else ""
    bench_protocol(head, _queries(n, d_llm, samples), targets, f"temporal head (n=4, t={t}{kind})")


def bench_region(model, d_llm: int, d_vision: int) -> None:
    from tpo.heads.region import RegionHead
    from tpo.model.task_head import HeadSample
    from tpo.model.vision import VisionOutput

    head = RegionHead.from_config(model, d_llm, d_vision)
    n, f = 4, 4
    p = (model.vision.img_size // model.vision.patch_size) ** 2
    vision = VisionOutput(torch.randn(n, f * p, d_vision), torch.randn(n, f, d_vision))
    samples = [HeadSample(duration=1.0, asked_frame=1) for _ in range(n)]
    targets = [{"boxes": torch.tensor([0.1, 0.2, 0.6, 0.7])} for _ in range(n)]
    bench_protocol(head, _queries(n, d_llm, samples, vision), targets, f"region head (n=4, p={p})")


def bench_mask(cfg, d_llm: int) -> None:
    from tpo.heads.mask import build_mask_criterion, build_mask_head

    head, crit = build_mask_head(cfg, d_llm).train(), build_mask_criterion(cfg)
    n, k, h, w = 2, 2, 96, 128
    frames = [torch.randint(0, 256, (k, 3, h, w), dtype=torch.uint8) for _ in range(n)]
    query = torch.randn(n, d_llm)
    targets = [{"masks": torch.rand(k, h, w) > 0.7} for _ in range(n)]
    ids = [f"v{i}" for i in range(n)]
    params = head.trainable_groups()["mask_head"]

    def run() -> torch.Tensor:
        out = head(query, frames, ids, [list(range(k))] * n)
        return weighted_sum(crit(out, targets), crit.weight_dict)

    def cold() -> torch.Tensor:
        head.backend.cache.clear()
        return run()

    fwd_cold = median_ms(cold, repeats=2)
    fwd, bwd = fwd_bwd(run, params)
    label = f"mask head (n={n}, k={k}, {cfg.image_size} px)"
    print(f"{label + ' cached':50s} {fwd:10.1f} {bwd:10.1f}")
    print(f"{label + ' cold':50s} {fwd_cold:10.1f} {'-':>10s}")
    video = torch.randint(0, 256, (8, 3, h, w), dtype=torch.uint8)
    start = time.perf_counter()
    head.propagate(query[0], video)
    per_frame = (time.perf_counter() - start) * 1e3 / len(video)
    print(f"{'mask propagation, per frame (8 frames)':50s} {per_frame:10.1f} {'-':>10s}")


def bench_encoder(cfg) -> None:
    from tpo.heads.mask import build_sam2_backend

    frame = torch.randint(0, 256, (1, 3, 360, 640), dtype=torch.uint8)
    for size in (256, 512):
        backend = build_sam2_backend(replace(cfg, image_size=size, cache_frames=0))
        ms = median_ms(lambda b=backend: b.image_features(frame), repeats=3)
        name = Path(cfg.sam2_config).stem
        print(f"{'SAM2 image encoder ' + name + f' {size} px (1 frame)':50s} {ms:10.1f} {'-':>10s}")


def main(argv: list[str]) -> int:
    """Print the table; returns 0."""
    paths = argv or [str(ROOT / "configs/tiny/model.yaml"), str(ROOT / "configs/tiny/heads.yaml")]
    model = load_config(TPOConfig, paths).model
    d_llm = (model.llm.arch or {}).get("hidden_size")
    if d_llm is None:
        raise SystemExit(f"{paths}: model.llm.arch.hidden_size is needed to size the heads")
    d_vision = model.vision.width
    heads = model.heads
    torch.manual_seed(0)
    print(f"{paths}: d_llm {d_llm}, d_vision {d_vision}, torch threads {torch.get_num_threads()}")
    print(f"{'head':50s} {'fwd (ms)':>10s} {'bwd (ms)':>10s}")
    for name, fn, cfg in (
        ("temporal", bench_temporal, heads.temporal),
        ("region", bench_region, heads.region),
    ):
        if not _has(f"tpo.heads.{name}"):
            print(f"{name + ' head':50s} skipped: tpo.heads.{name} not present")
        elif cfg is None:
            print(f"{name + ' head':50s} skipped: not configured")
        else:
            fn(model, d_llm, d_vision)
    if heads.mask is None:
        print(f"{'mask head':50s} skipped: not configured")
        return 0
    bench_mask(heads.mask, d_llm)
    bench_encoder(heads.mask)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
