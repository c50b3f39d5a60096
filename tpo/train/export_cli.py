"""`tpo export SRC --out DIR [--merge-lora] [--format tpo|videochat-tpo] [--layout DIR]`."""

from __future__ import annotations

import argparse

from tpo.train.export import export
from tpo.train.export_official import export_official


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo export`."""
    parser.add_argument(
        "checkpoint",
        help="a training checkpoint folder (e.g. outputs/stage3/final), or for --format "
        "videochat-tpo a folder written by `tpo convert videochat-tpo`",
    )
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--merge-lora", action="store_true", help="fold LoRA into the LLM weights")
    parser.add_argument(
        "--format",
        choices=["tpo", "videochat-tpo"],
        default="tpo",
        help="tpo: an inference folder; videochat-tpo: the official release layout",
    )
    parser.add_argument(
        "--layout",
        help="videochat-tpo from a training checkpoint: the converted folder it started from",
    )


def run(args: argparse.Namespace) -> int:
    """Export and print where."""
    if args.format == "videochat-tpo":
        if args.merge_lora:
            raise SystemExit("--merge-lora: the official layout keeps the LoRA adapters")
        print(f"exported: {export_official(args.checkpoint, args.out, args.layout)}")
        return 0
    print(f"exported: {export(args.checkpoint, args.out, args.merge_lora)}")
    return 0
