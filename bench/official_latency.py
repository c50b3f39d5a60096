"""`ask` latency of a converted VideoChat-TPO folder against the release's own figures.

Loads `--model DIR` (a converted folder, e.g. the parity reference's reduced checkpoint after
`tpo convert videochat-tpo`) with `tpo.load` and answers the reference's four questions (temporal,
region, mask, plain: `expected/run.json`) about its raw frames (`expected/vision.safetensors`
`in.raw_frames_uint8`) at 20 new tokens, 1 torch thread, CPU. As in the official figures
(`expected/timing.json`), the frame transforms are excluded: the frames are decoded, sampled and
normalised once beforehand, then each answer (prompt, generate, heads) is timed. Prints the
median seconds per question (and its generate / heads split), the official median, their ratio
(goal: <= 0.5x) and the heads that fired. Run: `.venv/bin/python bench/official_latency.py
[--model DIR] [--reference DIR]`; without `--model` it converts the reference's
`official-reduced/` into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import tpo
from tpo.infer.predictor import Timings

GOAL = 0.5  # tpo's time per answer / the official one
MAX_NEW_TOKENS = 20  # the release's limit


def find_reference(given: str | None) -> Path:
    """The parity reference folder: `given`, else TPO_REFERENCE, else a `shared/reference/
    parity` above this checkout."""
    if given or os.environ.get("TPO_REFERENCE"):
        return Path(given or os.environ["TPO_REFERENCE"])
    for up in Path(__file__).resolve().parents:
        cand = up / "shared" / "reference" / "parity"
        if cand.is_dir():
            return cand
    raise SystemExit("official_latency: no parity reference found; give --reference DIR")


def main() -> None:
    """Print one row per question: tpo s, official s, ratio, heads fired."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="converted folder (config.yaml + weights) for tpo.load")
    ap.add_argument("--reference", help="parity reference folder (expected/, official-reduced/)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ref = find_reference(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else convert_reference(ref, Path(tmp) / "reduced")
        if not (model / "config.yaml").is_file():
            sys.exit(f"official_latency: --model {model}: not a converted folder (no config.yaml)")
        measure(model, ref, args.repeats, args.threads)


def convert_reference(ref: Path, out: Path) -> Path:
    """`tpo convert videochat-tpo` of the reference's reduced checkpoint (with its side configs)."""
    from tpo.infer.convert import convert_videochat_tpo

    src = ref / "official-reduced"
    report = convert_videochat_tpo(
        src,
        out,
        llm_config=src / "llm_config.json",
        qformer_config=src / "qformer_config.json",
        sam2_config=src / "sam2.yaml",
        cgdetr_config=src / "cgdetr_config.json",
    )
    print("\n".join(report.lines()))
    return out


def measure(model: Path, ref: Path, repeats: int, threads: int) -> None:
    """Time `repeats` answers per question of the converted folder `model`; print the table."""
    for need in ("expected/run.json", "expected/timing.json", "expected/vision.safetensors"):
        if not (ref / need).is_file():
            sys.exit(f"official_latency: {ref / need}: missing from the parity reference")

    torch.set_num_threads(threads)
    run = json.loads((ref / "expected/run.json").read_text())
    official = json.loads((ref / "expected/timing.json").read_text())["runs"]
    frames = load_file(ref / "expected/vision.safetensors")["in.raw_frames_uint8"]
    pipe = tpo.load(model)
    inp = pipe.load_input(frames)  # decode, sample, normalise: outside the timing, as official

    print(
        f"{'question':10s} {'tpo s':>8s} {'generate':>9s} {'heads':>7s} {'official s':>11s}"
        f" {'ratio':>7s}  heads"
    )
    worst = 0.0
    for name, question in run["prompts"].items():
        pipe.predictor.answer([inp], [question], max_new_tokens=MAX_NEW_TOKENS)  # warm-up
        times, gen, head, heads = [], [], [], []
        for _ in range(repeats):
            pipe.predictor.timings = Timings()
            t0 = time.perf_counter()
            (ans,) = pipe.predictor.answer([inp], [question], max_new_tokens=MAX_NEW_TOKENS)
            times.append(time.perf_counter() - t0)
            gen.append(pipe.predictor.timings.generate)
            head.append(pipe.predictor.timings.heads)
            heads = ans.heads
        ours, theirs = statistics.median(times), official[name]["total_s_median"]
        ratio = ours / theirs
        worst = max(worst, ratio)
        print(
            f"{name:10s} {ours:8.3f} {statistics.median(gen):9.3f} {statistics.median(head):7.3f}"
            f" {theirs:11.3f} {ratio:6.2f}x  {','.join(heads) or '-'}"
        )
    verdict = "meets" if worst <= GOAL else "misses"
    print(f"worst ratio {worst:.2f}x: {verdict} the goal <= {GOAL}x (same machine assumed)")


if __name__ == "__main__":
    main()
