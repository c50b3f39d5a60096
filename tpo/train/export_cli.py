"""`tpo export CHECKPOINT --out DIR [--merge-lora]`."""

from __future__ import annotations

import argparse

from tpo.train.export import export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo export`."""
    parser.add_argument(
        "checkpoint", help="a training checkpoint folder (e.g. outputs/stage3/final)"
    )
    parser.add_argument("--out", required=True, help="the inference folder to write")
    parser.add_argument("--merge-lora", action="store_true", help="fold LoRA into the LLM weights")


def run(args: argparse.Namespace) -> int:
    """Export and print where."""

    print(f"exported: {export(args.checkpoint, args.out, args.merge_lora)}")
    return 0
