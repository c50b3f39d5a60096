"""Benchmark runners: a model over a benchmark's native annotations -> the official prediction
file -> the registry scorer -> `metrics.json` + `metrics.md`.

| benchmark | annotations | predictions written under --out |
|---|---|---|
| qvhighlights | QVHighlights jsonl | `predictions.jsonl` {qid, vid, pred_relevant_windows, pred_saliency_scores} |
| charades_sta | Charades-STA txt | `predictions.jsonl` {qid (line number), vid, pred_relevant_windows} |
| refcoco | RefCOCO-style json | `predictions.jsonl` {id, bbox: [x1, y1, x2, y2] pixels} |
| mevis | MeViS folder | `masks/{vid}/{eid}/{frame}.png` (+ `done.jsonl`) |
| nextgqa | NExT-GQA folder | `predictions.json` {"{vid}_{qid}": {window, prediction}} (+ `progress.jsonl`) |
| mvbench | MVBench json list | `predictions.jsonl` {qid, pred} |

Resumable: each batch's lines are appended with one fsync'd write; a restart skips the ids
already written (a truncated last line is dropped, `tpo.eval.runner_io.JsonlLog`).
Every runner answers through the one predictor (`tpo.infer.predictor.Predictor`, as `ask`
does): MeViS masks are SAM2's propagation through the annotated frames, prompted on the first.
When the model does not fire the head a benchmark needs, the runner writes the official
"no answer": the whole clip for moments (the official files require a window), an empty box
for RefCOCO (IoU 0, as an unparseable answer), empty masks for MeViS. These items are counted
under "no_head" in metrics.json. Predictions that cover only part of the ground truth (--limit)
are scored over the predicted items only (`partial: true`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tpo.data.dataset import VideoTaskDataset
from tpo.data.loaders import load_annotation
from tpo.data.records import LoadReport, Record
from tpo.data.templates import mc_prompt, question_text
from tpo.data.video import open_source
from tpo.eval.io import read_json
from tpo.eval.runner_io import (
    JsonlLog,
    metrics_markdown,
    save_mask_png,
    scorer_inputs,
    write_json_atomic,
    write_text_atomic,
)
from tpo.eval.scorers import get_scorer
from tpo.infer.answer import GroundedAnswer
from tpo.infer.api import load
from tpo.infer.decoding import Decoding
from tpo.infer.predictor import AskOptions, Predictor

CLIP_SECONDS = 2.0  # QVHighlights saliency clips
ANSWER_LETTER = re.compile(r"^\s*\(?([A-Ja-j])\)?(?:[\s.:,]|$)")


MAX_NEW_TOKENS = 32  # answer length of the benchmark questions


def load_predictor(folder: str | Path, device: str = "cpu") -> Predictor:
    """The one predictor (`tpo.infer.predictor.Predictor`) of an inference folder or a training
    checkpoint (with its config.yaml's frames and image size)."""
    return load(folder, device=device).predictor


# ----------------------------------------------------------------------------- per benchmark


def _windows(sample, pred: GroundedAnswer) -> tuple[list[list[float]], bool]:
    """Predicted windows [[s, e, score]] in video seconds; the whole clip when none."""
    if pred.windows:
        return [[float(w.start), float(w.end), float(w.score)] for w in pred.windows], False
    return [[sample.clip_start, sample.clip_start + sample.duration, 0.0]], True


def _clip_saliency(record: Record, sample, pred: GroundedAnswer) -> list[float]:
    """Saliency per 2-s clip (int(duration / 2) clips), read off the head's frame scores."""
    n = max(1, int((record.duration or sample.duration) / CLIP_SECONDS))
    if pred.saliency is None or not len(pred.saliency):
        return [0.0] * n
    centres = sample.clip_start + (np.arange(n) + 0.5) * CLIP_SECONDS
    times = np.asarray(pred.saliency_times, dtype=float)
    return np.interp(centres, times, np.asarray(pred.saliency, dtype=float)).round(4).tolist()


def _vid(record: Record) -> str:
    return Path(record.video).stem


def _moment_line(sample, pred, ctx) -> dict:
    windows, missing = _windows(sample, pred)
    line = {"qid": sample.record.qid, "vid": _vid(sample.record), "pred_relevant_windows": windows}
    if ctx.get("saliency"):
        line["pred_saliency_scores"] = _clip_saliency(sample.record, sample, pred)
    return dict(line, no_head=True) if missing else line


def _box_line(sample, pred: GroundedAnswer, ctx) -> dict:
    rec = sample.record
    if not pred.boxes:
        return {"id": rec.qid, "bbox": [0.0, 0.0, 0.0, 0.0], "no_head": True}
    x1, y1, x2, y2 = pred.boxes[0].box  # pixels of the asked frame, as the RefCOCO files
    x1, x2 = sorted(np.clip((x1, x2), 0.0, rec.width))
    y1, y2 = sorted(np.clip((y1, y2), 0.0, rec.height))
    return {"id": rec.qid, "bbox": [round(float(v), 2) for v in (x1, y1, x2, y2)]}


def answer_index(text: str, options: list[str]) -> int:
    """The option a generation names: its leading letter "(B)", else an option's exact text;
    -1 when it names none (never equal to a GT answer)."""
    m = ANSWER_LETTER.match(text)
    if m and "ABCDEFGHIJ".index(m.group(1).upper()) < len(options):
        return "ABCDEFGHIJ".index(m.group(1).upper())
    lowered = [o.strip().lower() for o in options]
    return lowered.index(text.strip().lower()) if text.strip().lower() in lowered else -1


def _gqa_line(sample, pred, ctx) -> dict:
    windows, missing = _windows(sample, pred)
    line = {
        "key": sample.record.qid,
        "window": windows[0][:2],
        "prediction": answer_index(pred.text, sample.record.options),
    }
    return dict(line, no_head=True) if missing else line


def _mc_line(sample, pred, ctx) -> dict:
    return {"qid": sample.record.qid, "pred": pred.text}


def _mask_line(sample, pred, ctx) -> dict:
    # function-level: PIL only when an image is read or drawn
    from PIL import Image

    rec = sample.record
    vid, eid, names = ctx["expressions"][rec.qid]
    shape = (rec.height, rec.width)
    masks = None if pred.masks is None else pred.masks.masks  # propagated over the GT frames
    if masks is None:
        masks = np.zeros((len(names), *shape), dtype=bool)
    folder = ctx["out"] / "masks" / vid / eid
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(names, np.asarray(masks, dtype=bool)):
        if mask.shape != shape:  # the head predicted at another size: nearest resize
            img = Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)
            mask = np.asarray(img) > 0
        save_mask_png(folder / f"{name}.png", mask)
    line = {"qid": rec.qid, "vid": vid, "eid": eid}
    return dict(line, no_head=True) if pred.masks is None else line


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark is read, asked, written and scored."""

    fmt: str  # tpo.data.loaders format
    id_key: str  # id field of the progress lines
    log_name: str  # progress jsonl under --out (the prediction file itself where jsonl)
    line: Callable  # (sample, prediction, ctx) -> progress line
    scale: float = 1.0  # display factor to percent (scorers giving fractions: 100)


BENCHMARKS: dict[str, Benchmark] = {
    "qvhighlights": Benchmark("qvh", "qid", "predictions.jsonl", _moment_line),
    "charades_sta": Benchmark("charades", "qid", "predictions.jsonl", _moment_line),
    "refcoco": Benchmark("refcoco", "id", "predictions.jsonl", _box_line, 100.0),
    "mevis": Benchmark("mevis", "qid", "done.jsonl", _mask_line, 100.0),
    "nextgqa": Benchmark("nextgqa", "key", "progress.jsonl", _gqa_line),
    "mvbench": Benchmark("mvbench", "qid", "predictions.jsonl", _mc_line),
}


def _context(name: str, annotations: Path, out: Path) -> dict:
    ctx: dict = {"out": out}
    if name == "qvhighlights":
        ctx["saliency"] = True
    if name == "mevis":  # qid "{vid}_{eid}" -> (vid, eid, frame names) from the GT itself
        videos = read_json(annotations / "meta_expressions.json")["videos"]
        ctx["expressions"] = {
            f"{vid}_{eid}": (vid, str(eid), [str(f) for f in v["frames"]])
            for vid, v in videos.items()
            for eid in v["expressions"]
        }
    return ctx


def _question(record: Record) -> str:
    if record.task == "gqa":  # the answer is an option: the question lists them as MVBench's
        return mc_prompt(record.question, record.options)
    return question_text(record)


def _options(name: str, sample) -> AskOptions:
    """The evaluation options of one benchmark question: the asked frame (the annotated one,
    else the middle sampled frame); for MeViS, SAM2 propagates through the annotated frames."""
    asked = len(sample.frames) // 2 if sample.box_frame is None else sample.box_frame
    if name != "mevis":
        return AskOptions(asked_frame=asked)
    indices = np.asarray(sample.record.mask_frames)
    return AskOptions(asked, open_source(sample.record.video).read(indices), indices)


def predict_pending(
    name: str,
    predictor: Predictor,
    records: list[Record],
    log: JsonlLog,
    ctx: dict,
    batch_size: int,
    decoding: Decoding | None = None,
) -> int:
    """Predict `records` in batches with the one predictor (and `decoding`, default the
    predictor's), appending each batch's lines to `log`; returns model calls."""

    if not records:
        return 0
    spec = BENCHMARKS[name]
    data = VideoTaskDataset(
        records,
        num_frames=predictor.num_frames,
        img_size=predictor.img_size,
        resize=predictor.resize,
        sampling="middle",
        seed=0,
        strict=True,
    )
    calls = 0
    for start in tqdm(range(0, len(records), batch_size), desc=f"eval {name}", unit="batch"):
        samples = [data[i] for i in range(start, min(start + batch_size, len(records)))]
        preds = predictor.answer_samples(
            samples, [_question(s.record) for s in samples],
            options=[_options(name, s) for s in samples], decoding=decoding,
            max_new_tokens=MAX_NEW_TOKENS,
        )  # fmt: skip
        calls += 1
        log.append([spec.line(s, p, ctx) for s, p in zip(samples, preds)])
    return calls


# ----------------------------------------------------------------------------- scoring


def _prediction_path(name: str, out: Path, done: dict) -> Path:
    if name == "mevis":
        return out / "masks"
    if name == "nextgqa":
        preds = {k: {"window": v["window"], "prediction": v["prediction"]} for k, v in done.items()}
        return write_json_atomic(out / "predictions.json", preds)
    return out / BENCHMARKS[name].log_name


def run_benchmark(
    name: str,
    predictor,
    annotations: str | Path,
    videos: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 4,
    checkpoint: str | None = None,
    decoding: Decoding | None = None,
) -> dict:
    """Run `predictor` (with `decoding`, default its own), write predictions (resuming), score;
    writes metrics.json/.md under `out`.

    Returns the metrics.json object: {benchmark, metrics, n_gt, n_predicted, partial, no_head,
    model_calls, predictions, scorer_options, ...}.
    """

    if name not in BENCHMARKS:
        raise KeyError(f"no runner for benchmark {name!r}; runners: {', '.join(BENCHMARKS)}")
    spec, annotations, out = BENCHMARKS[name], Path(annotations), Path(out)
    scorer = get_scorer(name)  # fails early when the scorer module is missing
    records = load_annotation(
        spec.fmt, annotations, videos, split=split, strict=True, report=LoadReport(), dataset=name
    )
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / spec.log_name, spec.id_key)
    done = log.recover()
    known = {r.qid for r in records}
    stray = [k for k in done if k not in known]
    if stray:
        raise ValueError(f"{log.path}: ids {stray[:5]} are not in {annotations}; use another --out")
    wanted = records[:limit] if limit is not None else records
    ctx = _context(name, annotations, out)
    calls = predict_pending(
        name, predictor, [r for r in wanted if r.qid not in done], log, ctx, batch_size, decoding
    )
    done = log.recover()
    partial = len(done) < len(records)
    gt, options = scorer_inputs(name, annotations, split, out, done, partial)
    pred_path = _prediction_path(name, out, done)
    metrics = scorer(gt, pred_path, **options)
    result = {
        "benchmark": name,
        "metrics": metrics,
        "n_gt": len(records),
        "n_predicted": len(done),
        "partial": partial,
        "no_head": sum(bool(v.get("no_head")) for v in done.values()),
        "model_calls": calls,
        "predictions": str(pred_path),
        "gt": str(gt),
        "scorer_options": options,
        "checkpoint": checkpoint,
        "split": split,
    }
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "metrics.md", metrics_markdown(name, metrics))
    return result
