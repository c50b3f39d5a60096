"""`tpo toyworld`: write the toy video world, or print the summary of an existing one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tpo.data.toyworld import format_summary, generate_toyworld, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tpo toyworld`."""
    parser.add_argument("--out", type=Path, default=Path("data/toyworld"), help="world folder")
    parser.add_argument("--videos", type=int, default=200, help="number of videos")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default min(2, cpu count))"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="last share of the videos used for test"
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the summary of the world at --out only"
    )


def run(args: argparse.Namespace) -> int:
    """Generate (then summarize) or only summarize; returns the exit status."""

    if args.summary:
        try:
            summary = summarize(args.out)
        except FileNotFoundError as err:
            print(f"tpo toyworld: {err}", file=sys.stderr)
            return 1
    else:
        if args.videos < 1:
            print(f"tpo toyworld: --videos {args.videos} must be >= 1", file=sys.stderr)
            return 2
        if args.workers is not None and args.workers < 1:
            print(f"tpo toyworld: --workers {args.workers} must be >= 1", file=sys.stderr)
            return 2
        if not 0.0 <= args.test_fraction < 1.0:
            print("tpo toyworld: --test-fraction must be in [0, 1)", file=sys.stderr)
            return 2
        summary = generate_toyworld(
            args.out, args.videos, args.seed, args.workers, args.test_fraction
        )
    print(format_summary(summary))
    return 0
