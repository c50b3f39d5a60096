"""Training throughput of the real tiny stage 2: samples/s and the share of each step spent
waiting for data, with batches built in the main process (num_workers 0) vs in 2 workers.

A small toy world is generated in a temporary folder; stage 1 runs one step to give stage 2 its
starting checkpoint; each stage-2 run trains `--steps` steps, the first `--warmup` of which
(worker start-up, first decodes) are left out. `data_wait` is the engine's own measure (the
time spent in `next(batches)` and the copy to the device, over the step's time).
Run: `.venv/bin/python bench/train_throughput.py [--steps 12] [--videos 6] [--micro_batch 4]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tpo.config import TPOConfig, load_config  # noqa: E402
from tpo.data.toyworld import generate_toyworld  # noqa: E402
from tpo.stages import get_stage  # noqa: E402
from tpo.train.builders import build_train_model  # noqa: E402
from tpo.train.data import build_train_data  # noqa: E402
from tpo.train.engine import StageRunner  # noqa: E402
from tpo.train.logger import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_stage(tmp: Path, n: int, name: str, overrides: list[str]) -> list[dict]:
    """Train stage `n` of the tiny config into `tmp / name`; its metrics rows."""
    cfg = load_config(
        TPOConfig,
        [ROOT / "configs" / "tiny" / f"stage{n}.yaml"],
        [f"train.output_dir={tmp / name}", "train.tensorboard=false", "train.save_every=0"]
        + overrides,
    )
    StageRunner(cfg, get_stage(n), build_train_model, build_train_data).run()
    return read_metrics(tmp / name / "metrics.jsonl")


def main() -> None:
    """Print samples/s and data-wait share for num_workers 0 and 2, with their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--micro_batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate_toyworld(tmp / "world", args.videos, seed=0, workers=1, test_fraction=0.0)
        manifest = tmp / "m.yaml"
        text = (ROOT / "data_manifests" / "toyworld_stage2.yaml").read_text()
        manifest.write_text(text.replace("data_root: data/toyworld", f"data_root: {tmp / 'world'}"))
        common = [f"data.manifest={manifest}", f"train.micro_batch={args.micro_batch}"]
        run_stage(tmp, 1, "s1", [*common, "train.max_steps=1"])
        rows = {}
        for w in args.workers:
            got = run_stage(
                tmp,
                2,
                f"w{w}",
                [*common, f"train.max_steps={args.steps}", f"data.num_workers={w}"]
                + [f"train.init_from={tmp / 's1' / 'final'}"],
            )[args.warmup :]
            rows[w] = (
                statistics.mean(r["samples_per_s"] for r in got),
                statistics.mean(r["data_wait"] for r in got),
            )
    base = rows[args.workers[0]]
    print(f"tiny stage 2, micro_batch {args.micro_batch}, {args.steps - args.warmup} steps timed")
    print(f"{'num_workers':>11s} {'samples/s':>10s} {'data wait':>10s} {'speed-up':>9s}")
    for w, (sps, wait) in rows.items():
        print(f"{w:11d} {sps:10.2f} {wait:10.1%} {sps / base[0]:9.2f}")


if __name__ == "__main__":
    main()
