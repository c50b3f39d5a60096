"""Parameter counts of the full-size model (built on the meta device) vs the official release.

Run: .venv/bin/python bench/param_counts.py [configs/full/model.yaml]
Exits non-zero when a part with an official figure is more than 1% off.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tpo.config import TPOConfig, load_config
from tpo.heads.registry import task_pairs
from tpo.model.build import build_mllm

ROOT = Path(__file__).resolve().parents[1]
# millions of parameters of the official VideoChat-TPO checkpoint (OpenGVLab/TPO, commit ed733bd),
# counted from its weight index
OFFICIAL = {
    "LLM (Mistral-7B, 32007 rows)": 7241.8,
    "LoRA r16 (q k v o gate up down lm_head)": 42.5,
    "ViT (UMT-L/16, 23 of 24 blocks + LN)": 290.5,
    "Q-Former + queries": 182.2,
}


def count(params) -> float:
    """Millions of parameters, each tensor once."""
    return sum(p.numel() for p in {id(p): p for p in params}.values()) / 1e6


def main(argv: list[str]) -> int:
    """Print ours vs official per part; returns 1 if any ratio is outside 1 +- 0.01."""
    path = argv[0] if argv else str(ROOT / "configs/full/model.yaml")
    start = time.perf_counter()
    model = build_mllm(load_config(TPOConfig, [path]).model, meta=True, pairs=task_pairs())
    built = time.perf_counter() - start
    g = model.trainable_groups()
    proj = {id(p) for p in g["connector_proj"]}
    ours = {
        "LLM (Mistral-7B, 32007 rows)": count(g["llm"]),
        "LoRA r16 (q k v o gate up down lm_head)": count(g["lora"]),
        "ViT (UMT-L/16, 23 of 24 blocks + LN)": count(g["vision"]),
        "Q-Former + queries": count(p for p in g["connector"] if id(p) not in proj),
    }
    info = {
        "connector projection to d_llm": count(g["connector_proj"]),
        "task tokens (3 vectors, box MLP, 7 rows)": count(g["task_tokens"]),
        "total (no heads)": count(model.parameters()),
    }
    print(f"{path}: built on meta in {built:.1f} s")
    print(f"{'part':44s} {'ours (M)':>10s} {'official (M)':>13s} {'ratio':>7s}")
    bad = []
    for name, ref in OFFICIAL.items():
        ratio = ours[name] / ref
        flag = "" if abs(ratio - 1) <= 0.01 else "  <-- off by more than 1%"
        bad += [name] if flag else []
        print(f"{name:44s} {ours[name]:10.1f} {ref:13.1f} {ratio:7.4f}{flag}")
    for name, value in info.items():
        print(f"{name:44s} {value:10.1f} {'-':>13s}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
