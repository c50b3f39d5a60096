"""Benchmark runners: official prediction files the scorers accept, resuming, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_infer_api import make_checkpoint
from tpo.eval.runner_io import JsonlLog
from tpo.eval.runners import BENCHMARKS, answer_index, load_predictor, run_benchmark
from tpo.eval.scorers import get_scorer
from tpo.eval.suite import TOYWORLD_FILES, run_toyworld_suite
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack, TimeWindow

ID_FILES = {"mevis": "done.jsonl", "nextgqa": "progress.jsonl"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny stage-3 model written as an inference folder."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


def annotations(world: Path, name: str) -> Path:
    return world / "annotations" / TOYWORLD_FILES[name].format(split="test")


class Oracle:
    """A stand-in predictor answering with the ground truth; logs the qids it was asked."""

    num_frames, img_size, resize = 4, 32, "uint8"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def answer_samples(self, samples, questions, *, options, decoding=None, max_new_tokens=64):
        from pycocotools import mask as mask_utils

        out = []
        for i, s in enumerate(samples):
            rec = s.record
            self.asked.append(rec.qid)
            p = GroundedAnswer(text=rec.answer if rec.task in ("mc", "gqa") else "ok")
            p.windows = [TimeWindow(a, b, 1.0) for a, b in rec.windows]  # video seconds
            if s.box is not None:  # pixels, as the predictor answers
                x1, y1, x2, y2 = s.box.tolist()
                w, h = rec.width, rec.height
                p.boxes = [BoxPrediction((x1 * w, y1 * h, x2 * w, y2 * h), 0, 0.0)]
            if rec.masks is not None:
                assert options[i].mask_frames.shape[0] == len(rec.mask_frames)
                empty = np.zeros((rec.height, rec.width), bool)
                masks = np.stack(
                    [
                        mask_utils.decode(rec.masks[f]).astype(bool) if f in rec.masks else empty
                        for f in rec.mask_frames
                    ]
                )
                p.masks = MaskTrack(masks, rec.mask_frames, 1.0)
            out.append(p)
        return out


def ids_in(path: Path, key: str) -> list[str]:
    return [str(json.loads(line)[key]) for line in path.read_text().splitlines()]


EXPECT_PERFECT = {  # metric key -> its value for perfect predictions (scorer's scale)
    "qvhighlights": ("MR-full-R1@0.7", 100.0),
    "charades_sta": ("MR-full-mIoU", 100.0),
    "refcoco": ("Acc@0.5", 1.0),
    "mevis": ("J&F", 1.0),
    "nextgqa": ("Acc@GQA", 100.0),
    "mvbench": ("Avg", 100.0),
}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_oracle_predictions_score_perfectly(world, tmp_path, name):
    """Ground truth passed through the runner's conversions (clip offsets, normalised boxes to
    pixels, answer letters, mask PNG names) must score perfectly: the files are right."""
    res = run_benchmark(
        name, Oracle(), annotations(world, name), world / "videos", tmp_path, batch_size=3
    )
    key, value = EXPECT_PERFECT[name]
    assert res["metrics"][key] == pytest.approx(value)
    assert not res["partial"] and res["no_head"] == 0 and res["n_predicted"] == res["n_gt"]
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == res["metrics"]
    assert f"| {key} |" in (tmp_path / "metrics.md").read_text()


def test_random_model_suite(world, checkpoint, tmp_path):
    """A random tiny model (2 questions per benchmark, one model call each): every runner
    writes files its scorer accepts and one combined table."""
    predictor = load_predictor(checkpoint)
    results = run_toyworld_suite(
        checkpoint, world, tmp_path, limit=2, batch_size=2, predictor=predictor
    )
    assert set(results) == set(BENCHMARKS)
    table = (tmp_path / "metrics.md").read_text()
    for name, res in results.items():
        assert "skipped" not in res, res
        assert res["n_predicted"] == 2 and res["partial"] and res["model_calls"] == 1
        again = get_scorer(name)(Path(res["gt"]), Path(res["predictions"]), **res["scorer_options"])
        assert again == res["metrics"]
        assert f"| {name} |" in table
    # the mask head is off: MeViS gets empty masks, counted as answered without the head
    assert results["mevis"]["no_head"] == 2
    pngs = list((tmp_path / "mevis" / "masks").rglob("*.png"))
    assert pngs and all(np.asarray(Image.open(p)).max() == 0 for p in pngs)


def test_resume_keeps_done_predictions(world, tmp_path):
    name = "mvbench"
    first = Oracle()
    res = run_benchmark(
        name, first, annotations(world, name), world / "videos", tmp_path, limit=2, batch_size=3
    )
    pred = tmp_path / "predictions.jsonl"
    head = pred.read_text()
    assert first.asked == ["0", "1"] and res["partial"] and res["n_predicted"] == 2
    assert res["metrics"]["Avg"] == 100.0  # scored over the 2 predicted questions only
    second = Oracle()
    res = run_benchmark(
        name, second, annotations(world, name), world / "videos", tmp_path, batch_size=3
    )
    n = res["n_gt"]
    assert second.asked == [str(i) for i in range(2, n)]  # the first two were not recomputed
    assert pred.read_text().startswith(head)
    assert sorted(ids_in(pred, "qid"), key=int) == [str(i) for i in range(n)]
    assert not res["partial"] and res["model_calls"] == -(-(n - 2) // 3)
    third = Oracle()
    run_benchmark(name, third, annotations(world, name), world / "videos", tmp_path)
    assert third.asked == []


@pytest.mark.parametrize("name", ["nextgqa", "refcoco"])
def test_truncated_last_line_is_recovered(world, tmp_path, name):
    spec = BENCHMARKS[name]
    run_benchmark(name, Oracle(), annotations(world, name), world / "videos", tmp_path, limit=2)
    log = tmp_path / spec.log_name
    done = ids_in(log, spec.id_key)
    with open(log, "a") as f:  # a crash in the middle of the next write
        f.write('{"' + spec.id_key + '": "x", "window": [0.0, 1')
    oracle = Oracle()
    res = run_benchmark(name, oracle, annotations(world, name), world / "videos", tmp_path)
    ids = ids_in(log, spec.id_key)
    assert ids[:2] == done and len(ids) == len(set(ids)) == res["n_gt"]
    assert not set(done) & set(oracle.asked)
    assert res["metrics"][EXPECT_PERFECT[name][0]] == pytest.approx(EXPECT_PERFECT[name][1])


def test_jsonl_log_rejects_corrupt_complete_lines(tmp_path):
    log = JsonlLog(tmp_path / "p.jsonl", "qid")
    log.append([{"qid": "a"}, {"qid": "b"}])
    assert list(log.recover()) == ["a", "b"]
    with open(log.path, "a") as f:
        f.write("not json\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:3"):
        log.recover()
    log.path.write_text('{"qid": "a"}\n{"qid": "a"}\n')
    with pytest.raises(ValueError, match="repeats"):
        log.recover()


def test_stray_ids_in_out_folder_raise(world, tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"qid": "not-a-question", "pred": "(A)"}\n')
    with pytest.raises(ValueError, match="not-a-question"):
        run_benchmark(
            "mvbench", Oracle(), annotations(world, "mvbench"), world / "videos", tmp_path
        )


def test_answer_index():
    opts = ["red", "blue", "green"]
    assert answer_index("(B) blue", opts) == 1
    assert answer_index("c. green", opts) == 2
    assert answer_index("Green", opts) == 2
    assert answer_index("(E) purple", opts) == -1  # a letter past the options
    assert answer_index("because", opts) == -1


def test_cli_runs_and_reports_errors(world, checkpoint, tmp_path, capsys):
    from tpo.cli import main

    ann = annotations(world, "charades_sta")
    args = [
        "eval",
        "run",
        "charades_sta",
        "--checkpoint",
        str(checkpoint),
        "--annotations",
        str(ann),
        "--videos",
        str(world / "videos"),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| MR-full-mIoU |" in out and (tmp_path / "metrics.json").is_file()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert sorted(int(json.loads(x)["qid"]) for x in lines) == list(range(1, len(lines) + 1))
    assert main(args + ["--limit", "0"]) == 2
    assert main(args[:3] + ["--checkpoint", str(checkpoint)]) == 2
    assert "--annotations and --videos are required" in capsys.readouterr().err
