"""`tpo popen collect --checkpoint DIR --out DIR [--config FILE] [--n 30] [--seed 0] [--limit N]
[--textual OUT.jsonl]`: POPEN's preference sets from a trained model.

The perturbation settings (n, rectangles, noise std, seed) are the `popen` section of `--config`
(e.g. the preference stage's YAML, so collection and training read one file), else of the
checkpoint's config; a flag given on the command line wins over both.

Data: the mask records of the manifest (default: the checkpoint config's `data.manifest`, e.g.
the toy world's stage-3 train split), sampled as at evaluation ('middle', `data.num_frames`
frames). P_s goes to `--out` (resumable: a rerun skips the samples already in its index);
with `--textual`, P_t of the manifest's text-answer records goes to that jsonl.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from tpo.config import TPOConfig, load_config, load_saved_config
from tpo.data.dataset import VideoTaskDataset
from tpo.data.manifest import load_manifest, load_records
from tpo.data.records import AnnotationError
from tpo.data.video import VideoError
from tpo.eval.runner_io import JsonlLog
from tpo.infer.load import load_inference_model
from tpo.model.build import build_collator
from tpo.popen.collect import (
    INDEX_FILE,
    collect_segmentation,
    collect_textual,
    is_text_answer,
    sample_id,
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo popen collect`."""
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="inference/checkpoint folder"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder of the P_s files + index")
    parser.add_argument("--manifest", default=None, help="data manifest (default: the config's)")
    parser.add_argument("--data-root", default=None, help="overrides the manifest's data_root")
    parser.add_argument(
        "--datasets", nargs="+", default=None, metavar="NAME", help="only these manifest datasets"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML whose `popen` section sets the defaults"
    )
    parser.add_argument("--num-frames", type=int, default=None, help="default: data.num_frames")
    parser.add_argument("--n", type=int, default=None, help="perturbed runs per sample (popen.n)")
    parser.add_argument("--seed", type=int, default=None, help="perturbation seed (popen.seed)")
    parser.add_argument("--limit", type=int, default=None, help="at most N samples per set")
    parser.add_argument("--chunk", type=int, default=8, help="rows per model call")
    parser.add_argument("--rects", type=int, default=None, help="rectangles (popen.n_rects)")
    parser.add_argument("--noise-std", type=float, default=None, help="noise (popen.noise_std)")
    parser.add_argument("--textual", type=Path, default=None, help="also write P_t to this jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="P_t answer length limit")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")


def _samples(records: Sequence, num_frames: int, img_size: int) -> Iterator:
    """Samples of `records` ('middle' sampling); unreadable ones are logged and skipped."""

    if not records:
        return
    data = VideoTaskDataset(
        records, num_frames=num_frames, img_size=img_size, sampling="middle", strict=True
    )
    for i in range(len(data)):
        try:
            yield data.build(i)
        except (VideoError, AnnotationError) as err:
            log.warning("skipping %s: %s", records[i].source, err)


def perturbation_settings(args: argparse.Namespace, popen) -> dict:
    """n, n_rects, noise_std and seed: each flag given on the command line, else `popen`'s."""
    flags = {"n": args.n, "n_rects": args.rects, "noise_std": args.noise_std, "seed": args.seed}
    return {k: getattr(popen, k) if v is None else v for k, v in flags.items()}


def run(args: argparse.Namespace) -> int:
    """Collect P_s (and P_t with --textual); print where they went."""

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.checkpoint / "config.yaml").is_file():
        raise SystemExit(f"tpo popen collect: {args.checkpoint} has no config.yaml")
    cfg = load_saved_config(TPOConfig, args.checkpoint / "config.yaml")
    popen = cfg.popen if args.config is None else load_config(TPOConfig, [args.config]).popen
    settings = perturbation_settings(args, popen)
    log.info("perturbations: %s", settings)
    model = load_inference_model(args.checkpoint, args.device)
    collator = build_collator(cfg.model, model.mllm)
    manifest = load_manifest(args.manifest or cfg.data.manifest)
    records, _ = load_records(manifest, strict=False, data_root=args.data_root)
    if args.datasets:
        unknown = sorted(set(args.datasets) - {d.name for d in manifest.datasets})
        if unknown:
            raise SystemExit(f"tpo popen collect: no dataset(s) {unknown} in {manifest.name}")
        records = [r for r in records if r.dataset in args.datasets]
    frames = args.num_frames or cfg.data.num_frames
    img = cfg.model.vision.img_size
    done = JsonlLog(args.out / INDEX_FILE, "id").recover()
    todo = [r for r in records if r.task == "mask" and sample_id(r) not in done]
    log.info("P_s: %d mask samples to do, %d already in %s", len(todo), len(done), args.out)
    index = collect_segmentation(
        model, _samples(todo, frames, img), args.out, collator=collator, limit=args.limit,
        chunk=args.chunk, **settings,
    )  # fmt: skip
    print(f"P_s: {sum(1 for _ in index.open())} samples indexed in {index}")
    if args.textual is not None:
        text = [r for r in records if is_text_answer(r)]
        out = collect_textual(
            model, _samples(text, frames, img), args.textual, collator=collator,
            limit=args.limit, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
        print(f"P_t: {sum(1 for _ in out.open())} preference pairs in {out}")
    return 0
