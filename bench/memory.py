"""Memory per GPU of each full-size stage under DeepSpeed ZeRO-2/3, counted on the meta device.

bf16 training with fp32 master weights: parameters 2 B each (ZeRO-3 partitions them over N
GPUs), gradients 2 B per trainable parameter (partitioned by ZeRO-3; under ZeRO-2 each rank
holds them whole for a moment, since `tpo.train.distributed.in_fixed_order` computes them all
before handing them to DeepSpeed in a fixed order), optimizer state 12 B per trainable
parameter (fp32 master + Adam m and v, partitioned). Activations are not included (they depend
on batch, frames and checkpointing).

    .venv/bin/python bench/memory.py [--config configs/full/stage2.yaml] [--gpus 1 8 32]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def count_groups(cfg_path: Path, stage_number: int) -> tuple[int, int, dict[str, int]]:
    """(all params, trainable params, trainable per group) of the stage's model on meta."""
    from tpo.config import TPOConfig, load_config
    from tpo.heads.build import build_heads
    from tpo.heads.registry import task_pairs
    from tpo.model.build import build_mllm
    from tpo.stages import get_stage

    cfg = load_config(TPOConfig, [cfg_path])
    mllm = build_mllm(cfg.model, meta=True, pairs=task_pairs())
    # SAM2's Hiera cannot be built on the meta device (it calls .item() while building), so the
    # heads are built for real: at full size about 0.9 GB of fp32 weights, a few seconds.
    heads = build_heads(cfg.model.heads, mllm.llm.width, mllm.vision.width)
    groups = dict(mllm.trainable_groups())
    for h in heads.values():
        groups.update(h.trainable_groups())
    total = sum(p.numel() for p in mllm.parameters()) + sum(
        p.numel() for h in heads.values() for p in h.parameters()
    )
    stage = get_stage(stage_number)
    seen, per = set(), {}
    for g in stage.groups(cfg.train.extra_groups):
        params = [p for p in groups.get(g, []) if id(p) not in seen]
        seen.update(id(p) for p in params)
        per[g] = sum(p.numel() for p in params)
    return total, sum(per.values()), per


def per_gpu(total: int, trainable: int, zero: int, n: int) -> tuple[float, float, float]:
    """(params, grads, optimizer) GiB per GPU."""
    params = 2 * total / (n if zero == 3 else 1)
    grads = 2 * trainable / (n if zero == 3 else 1)
    optim = 12 * trainable / n
    return params / GIB, grads / GIB, optim / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", default=str(ROOT / "configs" / "full"))
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    print(
        f"{'stage':<6}{'trainable':>12}{'of total':>12}  {'ZeRO':<5}{'GPUs':>5}"
        f"{'params':>9}{'grads':>8}{'optim':>8}{'sum GiB':>9}"
    )
    for n_stage in (1, 2, 3):
        cfg = Path(args.config_dir) / f"stage{n_stage}.yaml"
        total, trainable, per = count_groups(cfg, n_stage)
        for zero in (2, 3):
            for n in args.gpus:
                p, g, o = per_gpu(total, trainable, zero, n)
                print(
                    f"{n_stage:<6}{trainable / 1e6:>11.1f}M{total / 1e9:>11.2f}B  {zero:<5}{n:>5}"
                    f"{p:>9.2f}{g:>8.2f}{o:>8.2f}{p + g + o:>9.2f}"
                )
        print("       groups: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
