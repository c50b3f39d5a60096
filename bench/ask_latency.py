"""End-to-end `TPOPipeline.ask` latency at tiny size, split into decode, vision, generate, heads.

Builds a random tiny stage-3 model (no mask head), renders a 3-video toy world into a temp dir
and times `ask` on it: decode (video read + sample + normalise), vision (encoder + connector,
timed on the same frames), generate (LLM with KV cache, vision excluded), heads (every head
forced once through `ground` with a random query), plus generated tokens/s.
Run: `.venv/bin/python bench/ask_latency.py [--repeats 5] [--tokens 32]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_pipeline(folder: Path):
    """A random tiny model saved as an inference folder and loaded with `tpo.load`."""
    import tpo
    from tpo.config import TPOConfig, load_config
    from tpo.heads.build import build_model
    from tpo.train.export import save_inference_folder

    cfg = load_config(TPOConfig, ["configs/tiny/stage3.yaml"], ["model.heads.mask=null"])
    return tpo.load(save_inference_folder(build_model(cfg.model), cfg, folder))


def main() -> None:
    """Print a table of median seconds per stage and tokens/s."""
    from tpo.data.toyworld import generate_toyworld
    from tpo.model.generate import GenerationOutput

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="max_new_tokens")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tpo_ask_bench_") as tmp:
        tmp = Path(tmp)
        generate_toyworld(tmp / "world", 3, seed=0, workers=1)
        video = str(tmp / "world" / "videos" / "toy_00000.mp4")
        pipe = build_pipeline(tmp / "ckpt")
        index = pipe.model.mllm.task_tokens.index
        question = "When does the red circle appear?"
        pipe.ask(video, question, max_new_tokens=args.tokens)  # warm-up (feature cache filled)
        rows: dict[str, list[float]] = {
            k: [] for k in ("decode", "vision", "generate", "heads", "total", "tok/s")
        }
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pipe.ask(video, question, max_new_tokens=args.tokens)
            total = time.perf_counter() - t0
            tm = pipe.timings
            inp = pipe.load_input(video)
            frames = inp.frames[None].to(pipe.dtype)
            with torch.no_grad():
                t1 = time.perf_counter()
                vision, _ = pipe.model.mllm.encode_visual(frames)
                vis = time.perf_counter() - t1
                gen = GenerationOutput(
                    text=[""], token_ids=[[]], vision=vision,
                    task_hidden=torch.randn(2, pipe.model.mllm.llm.width),
                    task_head=torch.tensor([index("temporal"), index("region")]),
                    task_sample=torch.zeros(2, dtype=torch.long),
                )  # fmt: skip
                pipe.model.temporal_features._memory.clear()  # time the feature encoding too
                t2 = time.perf_counter()
                pipe.ground(gen, [inp], [question])
                heads = time.perf_counter() - t2
            llm = max(tm.generate - vis, 1e-9)
            rows["decode"].append(tm.decode)
            rows["vision"].append(vis)
            rows["generate"].append(llm)
            rows["heads"].append(heads)
            rows["total"].append(total)
            rows["tok/s"].append(tm.new_tokens / llm)
    print(
        f"tiny ask() latency, median of {args.repeats}, {args.threads} thread(s), "
        f"max_new_tokens={args.tokens}"
    )
    print(f"{'stage':<10}{'median':>12}")
    for name, vals in rows.items():
        unit = "" if name == "tok/s" else " s"
        print(f"{name:<10}{statistics.median(vals):>10.4f}{unit}")
    print("heads: temporal (incl. per-frame features of the whole video) + region, forced once")


if __name__ == "__main__":
    main()
