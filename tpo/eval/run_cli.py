"""`tpo eval run BENCHMARK --checkpoint DIR --annotations PATH --videos DIR [--limit N]
[--out DIR] [--batch-size B]`: run a model on a benchmark, write the official prediction file
(resumable), score it, write metrics.json + metrics.md into --out.

`tpo eval run toyworld --checkpoint DIR [--root data/toyworld]` runs every benchmark the toy
world has (its test split) and prints one markdown table (the `make eval` target).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tpo.eval.runner_io import metrics_markdown
from tpo.eval.runners import BENCHMARKS, load_predictor, run_benchmark
from tpo.eval.suite import run_toyworld_suite

RUNNERS = tuple(BENCHMARKS)  # the runners of tpo.eval.runners
SUITE = "toyworld"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo eval run`."""
    parser.add_argument(
        "benchmark",
        choices=(*RUNNERS, SUITE),
        metavar="BENCHMARK",
        help=f"one of: {', '.join(RUNNERS)}; or {SUITE} (all on the toy world)",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="inference folder (model.safetensors + config.yaml) or checkpoint",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        help="annotation file or folder in the benchmark's native format",
    )
    parser.add_argument("--videos", type=Path, help="folder of the benchmark's videos")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("data/toyworld"),
        help="toy world folder (toyworld only; default data/toyworld)",
    )
    parser.add_argument("--split", default="test", help="split name (NExT-GQA files, toy world)")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default outputs/eval/BENCHMARK)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="questions per model call")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the toy-world suite); errors on stderr, exit 2."""

    prog = f"tpo eval run {args.benchmark}"
    out = args.out or Path("outputs/eval") / args.benchmark
    if args.limit is not None and args.limit < 1:
        print(f"{prog}: error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"{prog}: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.benchmark != SUITE and (args.annotations is None or args.videos is None):
        print(f"{prog}: error: --annotations and --videos are required", file=sys.stderr)
        return 2
    try:
        predictor = load_predictor(args.checkpoint, device=args.device)
        if args.benchmark == SUITE:
            run_toyworld_suite(
                args.checkpoint,
                args.root,
                out,
                args.limit,
                split=args.split,
                batch_size=args.batch_size,
                predictor=predictor,
            )
            print((out / "metrics.md").read_text(), end="")
            return 0
        result = run_benchmark(
            args.benchmark,
            predictor,
            args.annotations,
            args.videos,
            out,
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            checkpoint=str(args.checkpoint),
        )
    except (ValueError, FileNotFoundError, KeyError) as err:  # AnnotationError/ScoreError too
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(metrics_markdown(args.benchmark, result["metrics"]), end="")
    print(json.dumps({k: result[k] for k in ("n_gt", "n_predicted", "partial", "no_head")}))
    return 0
