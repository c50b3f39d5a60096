"""Scoring speed: 10,000 QVHighlights predictions (+ video masks when tpo.eval.video_masks has
`bench_masks`). Prints seconds per family.

    .venv/bin/python bench/metrics.py [--queries 10000]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _qvh_files(n: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random but valid QVHighlights GT and predictions (150-s videos, 75 clips)."""
    rng = np.random.default_rng(seed)
    gt_lines, pred_lines = [], []
    for qid in range(n):
        windows, clip_ids = [], []
        for _ in range(rng.integers(1, 4)):
            start = int(rng.integers(0, 70)) * 2
            end = min(150, start + int(rng.integers(1, 20)) * 2)
            windows.append([start, end])
            clip_ids.extend(range(start // 2, end // 2))
        clip_ids = sorted(set(clip_ids))
        saliency = rng.integers(0, 5, size=(len(clip_ids), 3)).tolist()
        gt_lines.append(
            {
                "qid": qid,
                "duration": 150,
                "relevant_windows": windows,
                "relevant_clip_ids": clip_ids,
                "saliency_scores": saliency,
            }
        )
        starts = rng.uniform(0, 140, 10)
        ends = starts + rng.uniform(0.5, 40, 10)
        scores = np.sort(rng.uniform(0, 1, 10))[::-1]
        pred_lines.append(
            {
                "qid": qid,
                "pred_relevant_windows": np.round(
                    np.stack([starts, np.minimum(ends, 150), scores], 1), 4
                ).tolist(),
                "pred_saliency_scores": np.round(rng.normal(size=75), 4).tolist(),
            }
        )
    gt, pred = folder / "gt.jsonl", folder / "pred.jsonl"
    gt.write_text("\n".join(json.dumps(x) for x in gt_lines) + "\n")
    pred.write_text("\n".join(json.dumps(x) for x in pred_lines) + "\n")
    return gt, pred


def bench_qvhighlights(n_queries: int = 10_000) -> dict[str, float]:
    """Seconds to score `n_queries` QVHighlights predictions: whole file scorer and metrics alone."""
    from tpo.eval.highlights import highlight_metrics
    from tpo.eval.moments import (
        moment_metrics,
        read_qvh_gt,
        read_qvh_predictions,
        score_qvhighlights,
    )

    with tempfile.TemporaryDirectory() as tmp:
        gt, pred = _qvh_files(n_queries, Path(tmp))
        t0 = time.perf_counter()
        metrics = score_qvhighlights(gt, pred)
        total = time.perf_counter() - t0
        preds = read_qvh_predictions(pred, need_windows=True)
        truth = read_qvh_gt(gt, need_saliency=True)
    qids = list(preds)
    t0 = time.perf_counter()
    moment_metrics([preds[q]["windows"] for q in qids], [truth[q]["windows"] for q in qids])
    t_mr = time.perf_counter() - t0
    t0 = time.perf_counter()
    highlight_metrics([preds[q]["saliency"] for q in qids], [truth[q]["saliency"] for q in qids])
    t_hl = time.perf_counter() - t0
    return {
        "queries": n_queries,
        "score_qvhighlights_s": round(total, 3),
        "moment_metrics_s": round(t_mr, 3),
        "highlight_metrics_s": round(t_hl, 3),
        "MR-full-mAP": metrics["MR-full-mAP"],
    }


def main() -> None:
    """Run every family's benchmark that exists and print one line per family."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    args = parser.parse_args()
    print("qvhighlights", json.dumps(bench_qvhighlights(args.queries)))
    if importlib.util.find_spec("tpo.eval.video_masks") is not None:
        masks = importlib.import_module("tpo.eval.video_masks")
        if hasattr(masks, "bench_masks"):
            print("video_masks", json.dumps(masks.bench_masks(n_frames=1000, h=480, w=854)))


if __name__ == "__main__":
    main()
