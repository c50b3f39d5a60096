"""The toy-world evaluation suite: every runner the toy world supports, one combined table."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from tpo.eval.runner_io import write_json_atomic, write_text_atomic
from tpo.eval.runners import BENCHMARKS, load_predictor, run_benchmark
from tpo.eval.scorers import SCORERS

HEADLINE = {  # metrics shown in the combined toy-world table
    "qvhighlights": (
        "MR-full-R1@0.5",
        "MR-full-R1@0.7",
        "MR-full-mAP",
        "HL-min-VeryGood-mAP",
        "HL-min-VeryGood-Hit1",
    ),
    "charades_sta": ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mIoU"),
    "refcoco": ("Acc@0.5", "mIoU"),
    "mevis": ("J&F", "J", "F"),
    "nextgqa": ("mIoP", "IoP@0.5", "mIoU", "Acc@QA", "Acc@GQA"),
    "mvbench": ("Avg",),
}

TOYWORLD_FILES = {  # benchmark -> annotation under {root}/annotations
    "qvhighlights": "qvh_{split}.jsonl",
    "charades_sta": "charades_{split}.txt",
    "refcoco": "refcoco_{split}.json",
    "mevis": "mevis_{split}",
    "nextgqa": "nextgqa_{split}",
    "mvbench": "mvbench_{split}.json",
}


def suite_markdown(results: dict[str, dict]) -> str:
    """One markdown table of the headline metrics (percent) of every benchmark run; "no head":
    items answered with the runner's fallback because the model fired no head."""
    lines = ["| benchmark | n | no head | metric | value (%) |", "|---|---|---|---|---|"]
    for name, res in results.items():
        if "skipped" in res:
            lines.append(f"| {name} | - | - | skipped: {res['skipped']} | - |")
            continue
        scale, n, none = BENCHMARKS[name].scale, res["n_predicted"], res["no_head"]
        for key in HEADLINE[name]:
            if key in res["metrics"]:
                value = res["metrics"][key] * scale
                lines.append(f"| {name} | {n} | {none} | {key} | {value:.2f} |")
    return "\n".join(lines) + "\n"


def run_toyworld_suite(
    checkpoint: str | Path,
    root: str | Path,
    out: str | Path,
    limit: int | None = None,
    *,
    split: str = "test",
    batch_size: int = 4,
    predictor=None,
) -> dict:
    """Every runner the toy world supports on its `split`; returns {benchmark: metrics.json
    object, or {"skipped": reason}} and writes the combined table to `{out}/metrics.md`."""

    root, out = Path(root), Path(out)
    predictor = predictor or load_predictor(checkpoint)
    results: dict[str, dict] = {}
    for name, file in TOYWORLD_FILES.items():
        annotations = root / "annotations" / file.format(split=split)
        module = SCORERS[name].split(":")[0]
        if importlib.util.find_spec(module) is None:
            results[name] = {"skipped": f"scorer module {module} not available"}
        elif not annotations.exists():
            results[name] = {"skipped": f"{annotations} not found"}
        else:
            results[name] = run_benchmark(
                name,
                predictor,
                annotations,
                root / "videos",
                out / name,
                split=split,
                limit=limit,
                batch_size=batch_size,
                checkpoint=str(checkpoint),
            )
    write_json_atomic(out / "metrics.json", results)
    write_text_atomic(out / "metrics.md", suite_markdown(results))
    return results
