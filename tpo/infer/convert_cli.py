"""`tpo convert videochat-tpo SRC --out DST [--llm-config F] [--qformer-config F]
[--sam2-config F] [--cgdetr-config F] [--dtype bf16|fp32]`."""

from __future__ import annotations

import argparse

from tpo.infer.convert import DTYPES, convert_videochat_tpo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo convert videochat-tpo`."""
    parser.add_argument("src", help="the official release folder (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="the tpo inference folder to write")
    parser.add_argument(
        "--llm-config", help="HF MistralConfig config.json (default: Mistral-7B v0.3's)"
    )
    parser.add_argument(
        "--qformer-config", help="HF BertConfig of the Q-Former as built (default: bert-base)"
    )
    parser.add_argument(
        "--sam2-config", help="SAM2 Hydra YAML (default: sam2's configs/sam2/sam2_hiera_l.yaml)"
    )
    parser.add_argument("--cgdetr-config", help="JSON of CG-DETR fields (default: the release's)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights' dtype (default: the source's)"
    )


def run(args: argparse.Namespace) -> int:
    """Convert and print the report."""
    report = convert_videochat_tpo(
        args.src,
        args.out,
        llm_config=args.llm_config,
        qformer_config=args.qformer_config,
        sam2_config=args.sam2_config,
        cgdetr_config=args.cgdetr_config,
        dtype=args.dtype,
    )
    print("\n".join(report.lines()))
    return 0
