"""Does training teach the model to look at the video? Untrained vs prior-only vs stage 3.

Scores the untrained model, the best constant prediction learned from the training split
(mean span, mean box, mean mask, majority answer letter) and the trained stage-3 model on the
toy-world test split: temporal R1@0.5, box Acc@0.5, mask J&F and multiple-choice accuracy, and
for each metric the trained model's lead over the better baseline with a 95% paired bootstrap
interval over the test items ("clear" when the whole interval is above zero).

    make stage1 stage2 stage3 && .venv/bin/python bench/learning.py [--checkpoint DIR]

`--compare DIR ...` scores more trained checkpoints on the same items beside it, e.g. the
toy world trained with the CG-DETR temporal head (`make stage1 stage2 stage3
CONFIG_DIR=configs/tiny/cgdetr`, then `--compare outputs/cgdetr/stage3/final`), with each one's
lead over the first checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(argv: list[str] | None = None) -> int:
    import torch

    from tpo.config import TPOConfig, load_saved_config
    from tpo.eval.learning import (
        METRICS,
        Prior,
        evaluate,
        evaluate_prior,
        load_split,
        paired_difference,
        prepare,
        summarise,
    )
    from tpo.heads.build import build_model
    from tpo.infer.load import load_inference_model
    from tpo.infer.predictor import Predictor
    from tpo.model.build import build_collator

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="outputs/stage3/final")
    p.add_argument("--root", default="data/toyworld")
    p.add_argument("--limit", type=int, default=None, help="test records per task")
    p.add_argument("--compare", nargs="*", default=[], help="more checkpoints to score beside it")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ckpt = Path(a.checkpoint)
    for folder in (ckpt, *map(Path, a.compare)):
        if not (folder / "config.yaml").is_file():
            print(
                f"{folder}: no checkpoint; run `make stage1 stage2 stage3` first", file=sys.stderr
            )
            return 2
    cfg = load_saved_config(TPOConfig, ckpt / "config.yaml")
    test = load_split(a.root, "test", a.limit)
    train = load_split(a.root, "train")
    trained = load_inference_model(ckpt)
    untrained = build_model(cfg.model).float().eval()
    collator = build_collator(cfg.model, trained.mllm)
    size = {"num_frames": cfg.data.num_frames, "img_size": cfg.model.vision.img_size}
    items = prepare(test, cfg)  # decoded once, scored three times
    scores = {
        "untrained": evaluate(Predictor(untrained, collator, **size), items, desc="untrained"),
        "prior only": evaluate_prior(Prior.fit(train), items),
        "stage 3": evaluate(Predictor(trained, collator, **size), items, desc="stage 3"),
    }
    compared = []
    for folder in map(Path, a.compare):
        other = load_inference_model(folder)
        kind = load_saved_config(TPOConfig, folder / "config.yaml").model.heads.temporal
        name = f"stage 3, temporal {kind.kind if kind else 'none'} ({folder})"
        pred = Predictor(other, build_collator(cfg.model, other.mllm), **size)
        scores[name] = evaluate(pred, items, desc=name)
        compared.append(name)
    rows = {name: summarise(s) for name, s in scores.items()}
    metrics = list(METRICS.values())
    counts = ", ".join(f"{k} {len(v)}" for k, v in test.items())
    print(f"toy-world test split ({counts})")
    print(f"| model | {' | '.join(metrics)} |")
    print(f"|---|{'---|' * len(metrics)}")
    for name, res in rows.items():
        print(f"| {name} | {' | '.join(f'{res[m]:.1f}' for m in metrics)} |")
    for m in metrics:
        best = max(("untrained", "prior only"), key=lambda name: rows[name][m])
        diff, lo, hi = paired_difference(scores["stage 3"][m], scores[best][m])
        verdict = "clear" if lo > 0 else "not clear"
        print(f"{m}: stage 3 - {best} = {diff:+.1f} (95% CI {lo:+.1f} to {hi:+.1f}): {verdict}")
    for name in compared:
        for m in metrics:
            diff, lo, hi = paired_difference(scores[name][m], scores["stage 3"][m])
            print(f"{m}: {name} - stage 3 = {diff:+.1f} (95% CI {lo:+.1f} to {hi:+.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
