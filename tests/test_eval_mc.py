"""MVBench multiple-choice answer matching (notebook rule) and the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpo.eval.io import ScoreError
from tpo.eval.multiple_choice import (
    check_answer,
    gt_option,
    multiple_choice_accuracy,
    prediction_from_generation,
    score_mvbench,
)


@pytest.mark.parametrize(
    ("generation", "right"),
    [
        ("A", True),  # "(A" -> "(a" is in "(a)"
        ("A) dog", True),
        ("a", True),
        ("A. dog", True),  # '.' removed: "(a"
        ("(A)", True),  # "((a)" contains "(a)"
        ("  A\nbecause the dog runs", True),  # stripped, first line only
        ("\n\nA", True),
        ("B", False),
        ("B. cat", False),
        ("AB", False),
        ("Answer: A", False),
        ("", False),  # names no option: wrong unless the quirk is on
        (".", False),
    ],
)
def test_check_answer_notebook_rule(generation, right):
    assert check_answer(prediction_from_generation(generation), "(A) dog") is right


def test_empty_generation_quirk_behind_option():
    for generation in ("", ".", "\n"):
        pred = prediction_from_generation(generation)
        assert check_answer(pred, "(C) cat", empty_matches=True)
        assert not check_answer(pred, "(C) cat")


def test_gt_option_and_accuracy():
    assert gt_option(["cat", "dog", "cow"], "dog") == "(B) dog"
    gts = ["(A) x", "(A) y", "(C) z", "(D) w"]
    assert multiple_choice_accuracy(["A", "B", "", "D) w"], gts) == 0.5
    assert multiple_choice_accuracy(["A", "B", "", "D) w"], gts, empty_matches=True) == 0.75
    assert multiple_choice_accuracy(["(A) x", "(B"], gts[:2], raw_generation=False) == 0.5


GT = [
    {"video": "a.mp4", "question": "q", "candidates": ["cat", "dog"], "answer": "dog", "task_type": "Count"},
    {"video": "b.mp4", "question": "q", "candidates": ["red", "blue", "green"], "answer": "red", "task_type": "Count"},
    {"video": "c.mp4", "question": "q", "candidates": ["up", "down"], "answer": "down", "task_type": "Move"},
]  # fmt: skip


def _files(tmp_path: Path, preds: list[dict], gt=GT) -> tuple[Path, Path]:
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return tmp_path / "gt.json", tmp_path / "p.jsonl"


def test_score_mvbench_per_task_and_avg(tmp_path):
    preds = [{"qid": 0, "pred": "B) dog"}, {"id": "1", "pred": "C"}, {"qid": "2", "pred": "B"}]
    out = score_mvbench(*_files(tmp_path, preds))
    assert out == {"Count": 50.0, "Move": 100.0, "Avg": pytest.approx(200 / 3)}


def test_score_mvbench_missing_and_bad_ids(tmp_path):
    preds = [{"qid": 0, "pred": "B"}, {"qid": 2, "pred": "B"}]
    with pytest.raises(ScoreError, match=r"no prediction for id\(s\) 1"):
        score_mvbench(*_files(tmp_path, preds))
    assert score_mvbench(*_files(tmp_path, preds), missing="wrong")["Count"] == 50.0
    assert score_mvbench(*_files(tmp_path, preds), missing="skip")["Count"] == 100.0
    with pytest.raises(ScoreError, match=r"id\(s\) 7 are not in the ground truth"):
        score_mvbench(*_files(tmp_path, [*preds, {"qid": 1, "pred": "A"}, {"qid": 7, "pred": "A"}]))
    with pytest.raises(ScoreError, match=r"p.jsonl:2 \(qid 1\).*not a string"):
        score_mvbench(*_files(tmp_path, [preds[0], {"qid": 1, "pred": 3}, preds[1]]))


def test_score_mvbench_task_dict_ground_truth(tmp_path):
    gt = {"Action": GT[:2], "Scene": GT[2:]}
    preds = [
        {"qid": "Action/0", "pred": "B"},
        {"qid": "Action/1", "pred": "B"},
        {"qid": "Scene/0", "pred": ""},
    ]
    out = score_mvbench(*_files(tmp_path, preds, gt))
    assert out == {"Action": 50.0, "Scene": 0.0, "Avg": pytest.approx(100 / 3)}
    assert score_mvbench(*_files(tmp_path, preds, gt), empty_matches=True)["Scene"] == 100.0
