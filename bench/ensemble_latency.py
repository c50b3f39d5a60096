"""`TPOPipeline.ask` latency with the POPEN preference ensemble (K sampled responses) vs without.

Builds a random tiny stage-3 model (no mask head, as bench/ask_latency.py), renders a 3-video
toy world into a temp dir and times `ask` greedy, `ask(ensemble=K)` with the "logp" score and
with the "dpo" score (one more teacher-forced pass, adapters off). Prints medians and ratios.
Run: `.venv/bin/python bench/ensemble_latency.py [--repeats 5] [--tokens 32] [--k 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from ask_latency import build_pipeline


def main() -> None:
    """Print a table of median seconds per setting and the ratio to greedy."""
    from tpo.data.toyworld import generate_toyworld
    from tpo.infer.decoding import Greedy
    from tpo.infer.ensemble import EnsembleOptions, PreferenceEnsemble

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="max_new_tokens")
    ap.add_argument("--k", type=int, default=3, help="ensemble size K")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = {  # decoding strategies handed to the one predictor
        "greedy": Greedy(),
        f"ensemble K={args.k} logp": PreferenceEnsemble(EnsembleOptions(args.k, seed=0)),
        f"ensemble K={args.k} dpo": PreferenceEnsemble(
            EnsembleOptions(args.k, score="dpo", seed=0)
        ),
    }
    with tempfile.TemporaryDirectory(prefix="tpo_ens_bench_") as tmp:
        tmp = Path(tmp)
        generate_toyworld(tmp / "world", 3, seed=0, workers=1)
        video = str(tmp / "world" / "videos" / "toy_00000.mp4")
        pipe = build_pipeline(tmp / "ckpt")
        question = "When does the red circle appear?"
        pipe.ask(video, question, max_new_tokens=args.tokens)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in settings}
        tokens: dict[str, list[int]] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, decoding in settings.items():  # interleaved: load drifts hit all alike
                t0 = time.perf_counter()
                pipe.ask(video, question, max_new_tokens=args.tokens, decoding=decoding)
                times[name].append(time.perf_counter() - t0)
                tokens[name].append(pipe.timings.new_tokens)
    base = statistics.median(times["greedy"])
    print(
        f"tiny ask() latency, median of {args.repeats}, {args.threads} thread(s), "
        f"max_new_tokens={args.tokens}"
    )
    print(f"{'setting':<22}{'median s':>10}{'x greedy':>10}{'answer tokens':>15}")
    for name, vals in times.items():
        med = statistics.median(vals)
        print(f"{name:<22}{med:>10.4f}{med / base:>10.2f}{statistics.median(tokens[name]):>15}")


if __name__ == "__main__":
    main()
