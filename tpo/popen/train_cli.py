"""`tpo train --stage N [--config FILE] [--resume] [key=value ...]`: one training stage.

The stage runs through the one engine (tpo.train.engine) with the stage's builders, or with
POPEN's (its preference losses added) when the config has `popen.enabled`. The command lives in
tpo.popen, the layer above tpo.train, because choosing between the two needs both.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tpo.config import TPOConfig, load_config
from tpo.popen.data import build_popen_data
from tpo.popen.objective import build_popen_model
from tpo.stages import STAGES, get_stage
from tpo.train.builders import build_train_model
from tpo.train.data import build_train_data
from tpo.train.distributed import shutdown
from tpo.train.engine import DataBuilder, ModelBuilder, StageRunner
from tpo.train.init_folder import adopt_folder_model, is_inference_folder


def default_config(stage: int) -> Path:
    """The embedded toy-world default of a stage."""
    return Path("configs") / "tiny" / f"stage{stage}.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo train`."""
    parser.add_argument("--stage", type=int, required=True, choices=tuple(STAGES))
    parser.add_argument(
        "--config", default=None, help="stage YAML (default configs/tiny/stageN.yaml)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # deepspeed
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")


def builders_for(cfg: TPOConfig) -> tuple[ModelBuilder, DataBuilder]:
    """(model builder, data builder) of a run: the stage's own, or with POPEN's preference
    losses added when `popen.enabled`."""
    if cfg.popen.enabled:
        return build_popen_model, build_popen_data
    return build_train_model, build_train_data


def run(args: argparse.Namespace) -> int:
    """Load the config, then run the stage through the engine."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = Path(args.config) if args.config else default_config(args.stage)
    cfg = load_config(TPOConfig, [path], [f"train.stage={args.stage}", *args.overrides])
    if cfg.train.init_from and is_inference_folder(cfg.train.init_from):
        cfg = adopt_folder_model(cfg, args.overrides)  # the folder's model, not the YAML's
    stage = get_stage(args.stage)
    final = StageRunner(cfg, stage, *builders_for(cfg)).run(resume=args.resume)
    shutdown()
    print(f"stage {args.stage} done: {final}")
    return 0
