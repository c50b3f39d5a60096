"""`tpo eval score` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tpo.eval.score_cli import parse_option

TPO = Path(sys.executable).with_name("tpo")
GT = [
    {"qid": 1, "duration": 10, "relevant_windows": [[2, 8]], "relevant_clip_ids": [1, 2, 3],
     "saliency_scores": [[4, 2, 0], [3, 3, 1], [1, 4, 0]]},
    {"qid": 2, "duration": 4.9, "relevant_windows": [[0, 4]], "relevant_clip_ids": [0, 1],
     "saliency_scores": [[4, 4, 4], [4, 4, 2]]},
]  # fmt: skip
PRED = [
    {"qid": 1, "pred_relevant_windows": [[2, 8, 0.9]], "pred_saliency_scores": [0.1, 0.9, 0.2, 0.5, 0.5]},
    {"qid": 2, "pred_relevant_windows": [[0, 2, 1.0]], "pred_saliency_scores": [0.3]},
]  # fmt: skip


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TPO), "eval", *args], capture_output=True, text=True, timeout=60)


def test_parse_option_reads_json_values():
    assert parse_option("match_number=false") == ("match_number", False)
    assert parse_option("max_pred_windows=5") == ("max_pred_windows", 5)
    assert parse_option("missing=skip") == ("missing", "skip")
    assert parse_option("qa=/data/x.json") == ("qa", "/data/x.json")


def test_score_qvhighlights_prints_one_json_object_with_official_keys(tmp_path):
    gt, pred = _jsonl(tmp_path / "gt.jsonl", GT), _jsonl(tmp_path / "p.jsonl", PRED)
    done = _tpo("score", "qvhighlights", "--gt", str(gt), "--pred", str(pred))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)  # the whole stdout is one JSON object
    official = {
        "MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP", "MR-full-R1@0.5",
        "MR-full-R1@0.7", "MR-full-R1@0.3", "MR-full-mIoU", "HL-min-Fair-mAP", "HL-min-Fair-Hit1",
        "HL-min-Good-mAP", "HL-min-Good-Hit1", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1",
    }  # fmt: skip
    assert official <= set(out)
    assert out["MR-full-R1@0.7"] == 50.0 and out["HL-min-VeryGood-mAP"] == 72.22
    assert out["HL-min-VeryGood-Hit1"] == 100.0  # both top clips lie in their videos here


def test_score_errors_name_the_bad_id_and_exit_2(tmp_path):
    gt = _jsonl(tmp_path / "gt.jsonl", GT)
    bad = [PRED[0], {**PRED[1], "pred_relevant_windows": [[3, 1, 0.5]]}]
    done = _tpo(
        "score", "qvhighlights", "--gt", str(gt), "--pred", str(_jsonl(tmp_path / "b.jsonl", bad))
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "qid 2" in done.stderr and "end < start" in done.stderr
    extra = [*PRED, {**PRED[0], "qid": 77}]
    pred = _jsonl(tmp_path / "e.jsonl", extra)
    done = _tpo("score", "qvhighlights", "--gt", str(gt), "--pred", str(pred))
    assert done.returncode == 2 and "77" in done.stderr and "match_number" in done.stderr
    done = _tpo(
        "score",
        "qvhighlights",
        "--gt",
        str(gt),
        "--pred",
        str(pred),
        "--option",
        "match_number=false",
    )
    assert done.returncode == 0 and json.loads(done.stdout)["MR-full-R1@0.5"] == 100.0


def test_unknown_option_and_benchmark(tmp_path):
    gt, pred = _jsonl(tmp_path / "gt.jsonl", GT), _jsonl(tmp_path / "p.jsonl", PRED)
    done = _tpo(
        "score", "qvhighlights", "--gt", str(gt), "--pred", str(pred), "--option", "tolerance=1"
    )
    assert done.returncode == 2 and "unknown option(s) ['tolerance']" in done.stderr
    assert "match_number" in done.stderr
    done = _tpo("score", "imagenet", "--gt", str(gt), "--pred", str(pred))
    assert done.returncode != 0 and "invalid choice" in done.stderr


@pytest.mark.parametrize("benchmark", ["mvbench", "chair"])
def test_other_benchmarks_dispatch_through_the_registry(tmp_path, benchmark):
    if benchmark == "mvbench":
        (tmp_path / "gt.json").write_text(json.dumps([{"candidates": ["a", "b"], "answer": "b"}]))
        pred = _jsonl(tmp_path / "p.jsonl", [{"qid": 0, "pred": "B"}])
        want = {"gt": 100.0, "Avg": 100.0}
    else:
        (tmp_path / "gt.json").write_text(json.dumps({"0": ["dog"]}))
        pred = _jsonl(tmp_path / "p.jsonl", [{"id": 0, "response": "A dog and a cat."}])
        want = {"CHAIRs": 100.0, "CHAIRi": 50.0}
    done = _tpo("score", benchmark, "--gt", str(tmp_path / "gt.json"), "--pred", str(pred))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == want
