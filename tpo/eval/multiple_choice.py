"""Multiple-choice accuracy as OpenGVLab/Ask-Anything `video_chat2/mvbench.ipynb`.

The prompt ends with "Best option:("; the prediction is "(" + the first line of the stripped
generation; the GT is "(X) answer text". A prediction is right when its first space-separated
token (lowercased, '.' removed) is a substring of the GT's first token "(x)", or that token is a
substring of the prediction's first token.

Notebook quirk: a generation naming no option (empty, or only '.') gives the token "(", which is a
substring of every GT, so it counts as right. Default: wrong; empty_matches=true reproduces it.

Files: GT json list of {video, question, candidates, answer (the right candidate's text),
task_type (optional; default the file name)} with qid = list index as a string (the qid that
`tpo.data` gives MVBench records), or an object {task: [items]} with qid "{task}/{index}".
Predictions jsonl {"qid" (or "id"): qid, "pred": generation text}; raw_generation=false when
"pred" already is the notebook's "(" + first line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tpo.eval.io import ScoreError, check_ids, flag, ident, need, read_json, read_records, text

LETTERS = "ABCDEFGHIJ"
MISSING = ("error", "wrong", "skip")


def gt_option(candidates: Sequence[str], answer: str) -> str:
    """The notebook's GT string "(X) answer" (X: the last candidate equal to `answer`)."""
    index = max(i for i, c in enumerate(candidates) if c == answer)
    return f"({LETTERS[index]}) {answer}"


def prediction_from_generation(generation: str) -> str:
    """The notebook's prediction: "(" + the first line of the stripped generation."""
    return "(" + generation.strip().split("\n")[0]


def check_answer(pred: str, gt: str, *, empty_matches: bool = False) -> bool:
    """Whether prediction `pred` ("(X) ...") matches GT `gt` ("(X) text"), notebook rule."""
    pred_option = pred.lower().split(" ")[0]
    gt_first = gt.lower().split(" ")[0]
    stripped = pred_option.replace(".", "")
    if stripped in ("", "(") and not empty_matches:
        return False
    return stripped in gt_first or gt_first in pred_option


def multiple_choice_accuracy(
    preds: Sequence[str],
    gts: Sequence[str],
    *,
    raw_generation: bool = True,
    empty_matches: bool = False,
) -> float:
    """Fraction of right answers; preds are generations (after "Best option:("), gts "(X) text"."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} questions")
    if not gts:
        return 0.0
    right = 0
    for p, g in zip(preds, gts):
        p = prediction_from_generation(p) if raw_generation else p
        right += check_answer(p, g, empty_matches=empty_matches)
    return right / len(gts)


def _read_gt(path: Path) -> dict[str, tuple[str, str]]:
    """qid -> (task, GT string "(X) text")."""
    data = read_json(path)
    if isinstance(data, list):
        groups = [(None, data)]
    elif isinstance(data, dict):
        groups = list(data.items())
    else:
        raise ScoreError(f"{path}: expected a JSON list of questions or {{task: [questions]}}")
    out: dict[str, tuple[str, str]] = {}
    for task, items in groups:
        if not isinstance(items, list):
            raise ScoreError(f"{path}: task {task}: expected a list of questions")
        for i, obj in enumerate(items):
            where = f"{path}:[{i}]" if task is None else f"{path}:{task}[{i}]"
            candidates = need(obj, "candidates", where, "the list of options")
            answer = text(need(obj, "answer", where, "the right option's text"), where, "text")
            if not isinstance(candidates, list) or not 2 <= len(candidates) <= len(LETTERS):
                raise ScoreError(f"{where}: candidates {candidates!r}, expected 2-10 options")
            options = [str(c) for c in candidates]
            if answer not in options:
                raise ScoreError(f"{where}: answer {answer!r} is not one of {options}")
            name = task if task is not None else str(obj.get("task_type", path.stem))
            qid = str(i) if task is None else f"{task}/{i}"
            out[qid] = (name, gt_option(options, answer))
    if not out:
        raise ScoreError(f"{path}: no questions")
    return out


def score_mvbench(
    gt: Path,
    pred: Path,
    *,
    raw_generation: bool | str = True,
    empty_matches: bool | str = False,
    missing: str = "error",
) -> dict[str, float]:
    """Per-task accuracy (key = task name) and "Avg" over all questions, percent.

    Options: raw_generation (predictions are generations; false: already "(" + first line),
    empty_matches (the notebook quirk, default off), missing = error | wrong | skip for GT
    questions without a prediction.
    """
    if missing not in MISSING:
        raise ScoreError(f"option missing={missing!r}: expected one of {MISSING}")
    raw, quirk = flag(raw_generation, "raw_generation"), flag(empty_matches, "empty_matches")
    truth = _read_gt(Path(gt))
    preds: dict[str, str] = {}
    for where, obj in read_records(Path(pred), '{"qid", "pred": text}'):
        key = "qid" if "qid" in obj else "id"
        qid = ident(need(obj, key, where, "the question id"), where)
        if qid in preds:
            raise ScoreError(f"{where}: qid {qid} repeats")
        generation = text(
            need(obj, "pred", where, "the generated text"), f"{where} (qid {qid})", "text"
        )
        preds[qid] = prediction_from_generation(generation) if raw else generation
    check_ids(truth, preds, Path(pred), allow_missing=missing != "error")
    counts: dict[str, list[int]] = {}
    for qid, (task, answer) in truth.items():
        if qid not in preds and missing == "skip":
            continue
        right = qid in preds and check_answer(preds[qid], answer, empty_matches=quirk)
        tally = counts.setdefault(task, [0, 0])
        tally[0] += right
        tally[1] += 1
    if not counts:
        raise ScoreError(f"{pred}: no predicted question to score")
    out = {task: c[0] / c[1] * 100 for task, c in counts.items()}
    out["Avg"] = sum(c[0] for c in counts.values()) / sum(c[1] for c in counts.values()) * 100
    return out
