"""`tpo popen evaluate`: mask quality of checkpoints with and without the preference ensemble.

For each checkpoint, the MeViS runner (`tpo.eval.runners.run_benchmark`) runs twice on the
split: "greedy" (the one predictor with its greedy decoding) and "ensemble K=k" (the same
predictor handed the `tpo.infer.ensemble.PreferenceEnsemble` strategy: the answer is the
best-scored of k sampled responses, the mask query the preference-attention combination of
their `<tracking>` embeddings). Masks are SAM2's propagation through the annotated frames. Each setting reports the MeViS J&F, J and F (the runner's
scorer, tpo.eval.video_masks) and gIoU / cIoU (tpo.eval.image_masks), where every (expression,
frame) counts as one image mask against the union of the expression's objects.

    tpo popen evaluate --checkpoint A [--checkpoint B ...] [--annotations DIR] [--videos DIR]
        [--limit N] [--ensemble K] --out DIR

Writes OUT/{i}-{checkpoint}/greedy/ and .../ensemble_k{K}/ (the runner's masks, done.jsonl,
metrics.json; a rerun resumes there), then OUT/metrics.json (rows; ensemble rows also give the
mean number of the K responses that said `<tracking>`) and OUT/table.md (both atomically), and
prints the table. The ensemble's DPO beta is the config's popen.beta_t.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from tpo.config import TPOConfig, load_saved_config
from tpo.eval.image_masks import giou_ciou, intersection_union
from tpo.eval.io import read_json
from tpo.eval.runner_io import JsonlLog, write_json_atomic, write_text_atomic
from tpo.eval.runners import BENCHMARKS, load_predictor, run_benchmark
from tpo.eval.video_masks import read_mask_png
from tpo.infer.ensemble import EnsembleOptions, PreferenceEnsemble, default_k

COLUMNS = ("J&F", "J", "F", "gIoU", "cIoU")
GREEDY = "greedy"


def mask_ious(annotations: Path, masks: Path, done: dict[str, dict]) -> dict[str, float]:
    """gIoU / cIoU (fractions) of the runner's PNGs `masks/{vid}/{eid}/{frame}.png` for the
    expressions in `done` ({qid: {vid, eid}}), one image mask per (expression, frame)."""
    # function-level: pycocotools only when masks are (de)coded
    from pycocotools import mask as mask_utils

    videos = read_json(annotations / "meta_expressions.json")["videos"]
    rles = read_json(annotations / "mask_dict.json")
    inters, unions = [], []
    for line in done.values():
        entry = videos[line["vid"]]
        anno_ids = np.atleast_1d(entry["expressions"][line["eid"]]["anno_id"])
        for j, name in enumerate(entry["frames"]):
            pred = read_mask_png(masks / line["vid"] / line["eid"] / f"{name}.png")
            gt = np.zeros(pred.shape, dtype=np.uint8)
            for anno in anno_ids:
                rle = rles[str(anno)][j]
                if rle is not None:
                    counts = rle["counts"]
                    coded = {"size": rle["size"], "counts": counts}
                    if isinstance(counts, str):
                        coded["counts"] = counts.encode("ascii")
                    gt |= mask_utils.decode(coded).astype(np.uint8)
            i, u = intersection_union(pred, gt)
            inters.append(i)
            unions.append(u)
    return giou_ciou(inters, unions)


def checkpoint_tag(index: int, folder: Path) -> str:
    """A folder name for checkpoint `index`: its number and its last two path parts."""
    parts = "_".join(Path(folder).resolve().parts[-2:])
    return f"{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', parts)}"


def evaluate_setting(predictor, annotations: Path, videos: Path, out: Path, **kwargs) -> dict:
    """One MeViS run (resumable) -> {n, no_head, J&F, J, F, gIoU, cIoU (fractions), ...};
    `kwargs` go to `run_benchmark` (e.g. `decoding`)."""

    res = run_benchmark("mevis", predictor, annotations, videos, out, **kwargs)
    done = JsonlLog(out / BENCHMARKS["mevis"].log_name, BENCHMARKS["mevis"].id_key).recover()
    row = {"n": res["n_predicted"], "no_head": res["no_head"], "partial": res["partial"]}
    row.update({k: res["metrics"][k] for k in ("J&F", "J", "F")})
    row.update(mask_ious(Path(annotations), out / "masks", done))
    return row


def evaluate(
    checkpoints: list[Path],
    annotations: Path,
    videos: Path,
    out: Path,
    *,
    ensemble: int | None = None,
    temperature: float = 0.7,
    score: str = "logp",
    seed: int | None = 0,
    limit: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
) -> list[dict]:
    """Rows {checkpoint, setting, k, n, no_head, J&F, J, F, gIoU, cIoU} for every checkpoint
    with and without the ensemble (`ensemble` K; None: each config's popen.ensemble_k or 3);
    writes OUT/metrics.json and OUT/table.md."""

    annotations, videos, out = Path(annotations), Path(videos), Path(out)
    rows: list[dict] = []
    for index, folder in enumerate(checkpoints):
        folder = Path(folder)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{folder}: not a tpo checkpoint (no config.yaml inside)")
        cfg = load_saved_config(TPOConfig, folder / "config.yaml")
        k = ensemble or default_k(cfg)
        opts = EnsembleOptions(k, temperature, score, beta=cfg.popen.beta_t, seed=seed)
        predictor = load_predictor(folder, device=device)
        ens = PreferenceEnsemble(opts, new_draws=True)  # seed + batch number
        tag = checkpoint_tag(index, folder)
        settings = ((GREEDY, GREEDY, None, 1), (f"ensemble K={k}", f"ensemble_k{k}", ens, k))
        for setting, name, decoding, kk in settings:
            row = evaluate_setting(
                predictor, annotations, videos, out / tag / name, limit=limit,
                batch_size=batch_size, checkpoint=str(folder), decoding=decoding,
            )  # fmt: skip
            row = {"checkpoint": str(folder), "setting": setting, "k": kk, **row}
            recs = decoding.records if decoding is not None else []
            if recs:  # how many of the K responses said <tracking> (items predicted this run)
                row["mean_tracking_responses"] = float(np.mean([sum(r.used) for r in recs]))
            rows.append(row)
    options = {"temperature": temperature, "score": score, "seed": seed, "limit": limit}
    result = {"annotations": str(annotations), "options": options, "rows": rows}
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "table.md", table_markdown(rows))
    return rows


def table_markdown(rows: list[dict]) -> str:
    """One markdown table: checkpoint, setting, n, no head, then J&F J F gIoU cIoU in percent."""
    lines = [
        f"| checkpoint | setting | n | no head | {' | '.join(COLUMNS)} |",
        f"|---|---|---|---|{'---|' * len(COLUMNS)}",
    ]
    for r in rows:
        cells = " | ".join(f"{100 * r[c]:.2f}" for c in COLUMNS)
        lines.append(
            f"| {r['checkpoint']} | {r['setting']} | {r['n']} | {r['no_head']} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo popen evaluate`."""
    parser.add_argument(
        "--checkpoint", action="append", required=True, type=Path,
        help="inference folder or training checkpoint (repeat for several)",
    )  # fmt: skip
    parser.add_argument(
        "--annotations", type=Path, default=Path("data/toyworld/annotations/mevis_test"),
        help="MeViS-style folder (meta_expressions.json + mask_dict.json)",
    )  # fmt: skip
    parser.add_argument("--videos", type=Path, default=Path("data/toyworld/videos"))
    parser.add_argument("--limit", type=int, default=None, help="first N expressions only")
    parser.add_argument(
        "--ensemble", type=int, default=None,
        help="K sampled responses (default: the config's popen.ensemble_k, else 3)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--score", choices=("logp", "dpo"), default="logp", help="preference score")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per model call")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table; errors on stderr, exit 2."""
    prog = "tpo popen evaluate"
    for name, value in (("--limit", args.limit), ("--ensemble", args.ensemble)):
        if value is not None and value < 1:
            print(f"{prog}: error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        rows = evaluate(
            args.checkpoint, args.annotations, args.videos, args.out, ensemble=args.ensemble,
            temperature=args.temperature, score=args.score, seed=args.seed, limit=args.limit,
            batch_size=args.batch_size, device=args.device,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, KeyError) as err:  # AnnotationError/ScoreError too
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(table_markdown(rows), end="")
    return 0
