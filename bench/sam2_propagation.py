"""SAM2 propagation time per frame of the mask head, per seeding mode (`mask.propagation`).

Run: .venv/bin/python bench/sam2_propagation.py [SAM2_CONFIG [IMAGE_SIZE [FRAMES]]]
SAM2_CONFIG: a YAML file or a config name inside sam2 (default: the parity reference's reduced
official `sam2.yaml`, $TPO_REFERENCE or an ancestor's shared/, when present, else
configs/sam2/sam2_hiera_t.yaml at 256 px); random weights, a random uint8 video of FRAMES (default 8) frames at 180 x 320, 1 torch thread, CPU.
Prints the median CPU milliseconds per frame (process time: steadier than wall time on a shared
machine) of `MaskHead.propagate` (frames held in memory) for "mask" (tpo's seeding) and
"embedding" (the official seeding), and their ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from tpo.config.heads import MaskHeadConfig
from tpo.heads.mask import build_mask_head

PARITY = "shared/reference/parity"
REPEATS = 3
D_LLM = 64


def per_frame_ms(cfg: MaskHeadConfig, frames: int) -> float:
    """Median ms per frame of one propagation over a random `[frames, 3, 180, 320]` video."""
    torch.manual_seed(0)
    head = build_mask_head(cfg, D_LLM).eval()
    video = torch.randint(0, 256, (frames, 3, 180, 320), dtype=torch.uint8)
    query = torch.randn(D_LLM)
    head.propagate(query, video)  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.process_time()
        head.propagate(query, video)
        times.append((time.process_time() - start) * 1e3 / frames)
    return statistics.median(times)


def reduced_official_yaml() -> Path:
    """`official-reduced/sam2.yaml` of the parity reference: $TPO_REFERENCE, else the first
    ancestor of this file holding shared/reference/parity (may not exist)."""
    env = os.environ.get("TPO_REFERENCE")
    ups = Path(__file__).resolve().parents
    ref = Path(env) if env else next((u / PARITY for u in ups if (u / PARITY).is_dir()), Path())
    return ref / "official-reduced" / "sam2.yaml"


def main() -> None:
    torch.set_num_threads(1)
    default = reduced_official_yaml()
    name = (
        sys.argv[1]
        if len(sys.argv) > 1
        else (str(default) if default.is_file() else "configs/sam2/sam2_hiera_t.yaml")
    )
    size = int(sys.argv[2]) if len(sys.argv) > 2 else (None if default.is_file() else 256)
    frames = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    base = MaskHeadConfig(sam2_config=name, image_size=size, train_decoder=False)
    results = {}
    for mode in ("mask", "embedding"):
        results[mode] = per_frame_ms(replace(base, propagation=mode), frames)
        print(f"{'propagation ' + mode + f' ({frames} frames)':40s} {results[mode]:8.1f} ms/frame")
    print(f"{'embedding / mask':40s} {results['embedding'] / results['mask']:8.2f}x")


if __name__ == "__main__":
    main()
