"""Native-format annotation loaders: good files give the right Records, bad ones say where."""

import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tpo.data.loaders import FORMATS, load_annotation
from tpo.data.records import FORMAT_TASKS, AnnotationError, LoadReport
from tpo.data.templates import (
    MASK_ANSWER,
    REGION_ANSWER,
    TEMPORAL_ANSWER,
    TEMPORAL_QUESTIONS,
    temporal_question,
)


def qvh_line(**kw):
    obj = {
        "qid": 7,
        "query": "a red square appears",
        "duration": 10,
        "vid": "v0",
        "relevant_windows": [[2, 4], [6, 8]],
        "relevant_clip_ids": [1, 3],
        "saliency_scores": [[2, 3, 4], [1, 1, 1]],
    }
    obj.update(kw)
    return json.dumps({k: v for k, v in obj.items() if v is not None})


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode("ascii")}


def write_mevis(folder, frames, expressions, mask_dict):
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"videos": {"v0": {"expressions": expressions, "frames": frames}}}
    (folder / "meta_expressions.json").write_text(json.dumps(meta))
    (folder / "mask_dict.json").write_text(json.dumps(mask_dict))
    return folder


def test_every_format_has_a_loader_and_a_task():
    assert set(FORMATS) == set(FORMAT_TASKS)


def test_qvh(tmp_path):
    ann = tmp_path / "qvh_train.jsonl"
    ann.write_text(qvh_line() + "\n\n" + qvh_line(qid=8, vid="v1") + "\n")
    recs = load_annotation("qvh", ann, tmp_path / "videos", dataset="qvh")
    assert [r.qid for r in recs] == ["7", "8"]
    r = recs[0]
    assert (
        r.task == "temporal" and r.answer == TEMPORAL_ANSWER == "It happens at <time_begin><temp>."
    )
    assert r.video == str(tmp_path / "videos" / "v0.mp4") and r.duration == 10.0
    assert r.windows == [(2.0, 4.0), (6.0, 8.0)]
    assert r.clip_ids == [1, 3] and r.saliency == [[2, 3, 4], [1, 1, 1]]
    assert r.source == f"{ann}:1" and "a red square appears" in r.question
    assert r.question == temporal_question("a red square appears", "7")  # deterministic by qid
    # the test split has no labels
    test = tmp_path / "qvh_test.jsonl"
    test.write_text(qvh_line(relevant_windows=None, relevant_clip_ids=None, saliency_scores=None))
    assert load_annotation("qvh", test, tmp_path, split="test")[0].windows == []


def test_templates_vary_by_qid_but_not_by_run():
    questions = {temporal_question("x", str(q)) for q in range(40)}
    assert len(questions) == len(TEMPORAL_QUESTIONS)


def test_malformed_jsonl_line_strict_and_skipped(tmp_path, caplog):
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line() + "\n{not json\n" + qvh_line(qid=9) + "\n")
    with pytest.raises(AnnotationError, match=rf"{ann}:2: not valid JSON.*expected a QVHighlights"):
        load_annotation("qvh", ann, tmp_path, strict=True)
    report = LoadReport()
    with caplog.at_level(logging.WARNING):
        recs = load_annotation("qvh", ann, tmp_path, strict=False, report=report)
    assert [r.qid for r in recs] == ["7", "9"]
    assert report.skipped == {"malformed": 1} and f"{ann}:2" in report.examples["malformed"][0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 0  # load_annotation leaves logging to the caller
    report.log()
    assert "skipped 1 bad annotation(s) (malformed: 1)" in caplog.text


def test_missing_key_names_file_line_and_key(tmp_path):
    ann = tmp_path / "qvh.jsonl"
    line = json.loads(qvh_line())
    del line["duration"]
    ann.write_text(qvh_line() + "\n" + json.dumps(line) + "\n")
    with pytest.raises(AnnotationError, match=rf"{ann}:2: missing key 'duration'"):
        load_annotation("qvh", ann, tmp_path)
    report = LoadReport()
    assert len(load_annotation("qvh", ann, tmp_path, strict=False, report=report)) == 1
    assert report.skipped == {"missing_key": 1}


@pytest.mark.parametrize("window", [[8, 12], [5, 3], [-2, 1]])
def test_window_outside_duration(tmp_path, window):
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line(qid=42, relevant_windows=[window]) + "\n")
    pattern = rf"{ann}:1: qid 42: window \[{window[0]}, {window[1]}\] is outside"
    with pytest.raises(AnnotationError, match=pattern) as info:
        load_annotation("qvh", ann, tmp_path)
    assert info.value.reason == "bad_window"


def test_window_within_tolerance_is_clamped(tmp_path):
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line(relevant_windows=[[8, 10.3]]) + "\n")
    assert load_annotation("qvh", ann, tmp_path)[0].windows == [(8.0, 10.0)]


def test_bad_saliency(tmp_path):
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line(relevant_clip_ids=[1, 9]) + "\n")  # 10 s -> 5 clips
    with pytest.raises(AnnotationError, match=r"qid 7: clip 9 .*\[0, 5\)"):
        load_annotation("qvh", ann, tmp_path)


def test_charades(tmp_path):
    ann = tmp_path / "charades_train.txt"
    ann.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\nbroken line\n")
    with pytest.raises(AnnotationError, match=rf"{ann}:2: expected 'vid start end##sentence'"):
        load_annotation("charades", ann, tmp_path)
    report = LoadReport()
    (rec,) = load_annotation("charades", ann, tmp_path / "v", strict=False, report=report)
    assert rec.windows == [(0.0, 6.9)] and rec.video == str(tmp_path / "v" / "AO8RW.mp4")
    assert rec.qid == "1" and "putting a book on a shelf" in rec.question
    assert report.skipped == {"malformed": 1}
    ann.write_text("AO8RW 5.0 2.0##backwards\n")
    with pytest.raises(AnnotationError, match=r"qid 1: window \[5, 2\]"):
        load_annotation("charades", ann, tmp_path)


def test_refcoco_boxes_become_xyxy(tmp_path):
    ann = tmp_path / "refcoco_train.json"
    items = [
        {"id": 3, "video": "v0.mp4", "frame_index": 12, "time": 1.2, "expression": "the blue disc",
         "bbox": [10, 20, 30, 40], "width": 128, "height": 96},
        {"id": 4, "video": "img.jpg", "expression": "the dog", "bbox": [0, 0, 64, 48],
         "width": 64, "height": 48},
    ]  # fmt: skip
    ann.write_text(json.dumps(items))
    video, image = load_annotation("refcoco", ann, tmp_path)
    assert video.box == (10.0, 20.0, 40.0, 60.0) and video.frame_index == 12
    assert video.frame_time == 1.2 and (video.width, video.height) == (128, 96)
    assert video.answer == REGION_ANSWER == "It is here: <box_begin><boxes>."
    assert "1.2" in video.question and "the blue disc" in video.question
    assert image.frame_index == 0 and "seconds" not in image.question and "s." not in image.question


def test_box_outside_frame(tmp_path):
    ann = tmp_path / "refcoco.json"
    bad = {"id": "b7", "video": "v.mp4", "expression": "x", "bbox": [100, 10, 40, 10],
           "width": 128, "height": 96}  # fmt: skip
    ann.write_text(json.dumps([bad]))
    with pytest.raises(
        AnnotationError, match=rf"{ann}:\[0\] \(id b7\): box xyxy \[100, 10, 140, 20\]"
    ):
        load_annotation("refcoco", ann, tmp_path)
    report = LoadReport()
    assert load_annotation("refcoco", ann, tmp_path, strict=False, report=report) == []
    assert report.skipped == {"bad_box": 1}


def test_mevis_union_of_objects(tmp_path):
    a = np.zeros((8, 10), bool)
    a[1:3, 1:4] = True  # 6 px
    b = np.zeros((8, 10), bool)
    b[5:7, 5:9] = True  # 8 px
    exprs = {"0": {"exp": "both shapes", "obj_id": [0, 1], "anno_id": ["10", "11"]},
             "1": {"exp": "the first", "obj_id": [0], "anno_id": ["10"]}}  # fmt: skip
    folder = write_mevis(
        tmp_path / "mevis_train", ["00000", "00001", "00002"], exprs,
        {"10": [rle(a), rle(a), None], "11": [None, rle(b), None]},
    )  # fmt: skip
    both, first = load_annotation("mevis", folder, tmp_path / "videos")
    assert (
        both.task == "mask"
        and both.answer == MASK_ANSWER == "Tracking it: <track_begin><tracking>."
    )
    assert both.video == str(tmp_path / "videos" / "v0.mp4") and both.qid == "v0_0"
    assert sorted(both.masks) == [0, 1] and both.mask_frames == [0, 1, 2]
    assert (both.height, both.width) == (8, 10)
    assert mask_utils.decode(both.masks[0]).sum() == 6
    union = mask_utils.decode(both.masks[1]).astype(bool)
    assert (union == (a | b)).all()
    assert sorted(first.masks) == [0, 1] and mask_utils.decode(first.masks[1]).sum() == 6


def test_mevis_empty_masks(tmp_path):
    a = np.zeros((8, 10), bool)
    a[1:3, 1:4] = True
    empty = np.zeros((8, 10), bool)
    exprs = {"0": {"exp": "x", "anno_id": ["10"]}, "1": {"exp": "y", "anno_id": ["12"]}}
    folder = write_mevis(tmp_path / "m1", ["00000", "00001"], exprs,
                         {"10": [rle(a), rle(empty)], "12": [rle(a), None]})  # fmt: skip
    with pytest.raises(AnnotationError, match=r"mask_dict.json: anno_id 10 frame 1: mask is empty"):
        load_annotation("mevis", folder, tmp_path)
    report = LoadReport()
    (kept,) = load_annotation("mevis", folder, tmp_path, strict=False, report=report)
    assert kept.qid == "v0_1" and report.skipped == {"empty_mask": 1}
    # an expression whose objects never appear
    folder = write_mevis(
        tmp_path / "m2", ["00000"], {"0": {"exp": "x", "anno_id": ["13"]}}, {"13": [None]}
    )
    with pytest.raises(
        AnnotationError, match=r"mask_dict.json: anno_id 13 of .*no mask on any frame"
    ):
        load_annotation("mevis", folder, tmp_path)
    folder = write_mevis(tmp_path / "m3", ["00000"], {"0": {"exp": "x", "anno_id": ["14"]}}, {})
    with pytest.raises(AnnotationError, match=r"mask_dict.json: missing key '14'"):
        load_annotation("mevis", folder, tmp_path)


def test_conversation_turns_and_history(tmp_path):
    ann = tmp_path / "conversation_train.json"
    items = [
        {"video": "v0.mp4", "QA": [{"i": "Watch.", "q": "What moves?", "a": "A square."},
                                   {"i": "", "q": "When?", "a": TEMPORAL_ANSWER}],
         "start": 1.0, "end": 3.0},
        {"video": "v1.mp4", "QA": [{"q": "no answer"}]},
    ]  # fmt: skip
    ann.write_text(json.dumps(items))
    with pytest.raises(AnnotationError, match=rf"{ann}:\[1\]\.QA\[0\]: missing key 'a'"):
        load_annotation("conversation", ann, tmp_path)
    recs = load_annotation("conversation", ann, tmp_path, strict=False)
    assert [r.qid for r in recs] == ["0_0", "0_1"]
    assert recs[0].instruction == "Watch." and recs[0].history == []
    assert recs[1].history == [("What moves?", "A square.")] and recs[1].answer == TEMPORAL_ANSWER
    assert (recs[1].start, recs[1].end) == (1.0, 3.0) and recs[1].task == "conversation"


def test_mvbench(tmp_path):
    ann = tmp_path / "mvbench_test.json"
    items = [
        {"video": "v0.mp4", "question": "What colour?", "candidates": ["red", "blue", "green"],
         "answer": "blue"},
        {"video": "v1.mp4", "question": "Q", "candidates": ["a", "b"], "answer": "c"},
    ]  # fmt: skip
    ann.write_text(json.dumps(items))
    with pytest.raises(AnnotationError, match=r"\[1\]: answer 'c' is not one of the candidates"):
        load_annotation("mvbench", ann, tmp_path)
    (rec,) = load_annotation("mvbench", ann, tmp_path, strict=False)
    assert rec.options == ["red", "blue", "green"] and rec.answer_index == 1
    assert rec.answer == "(B) blue" and rec.task == "mc"


def test_nextgqa(tmp_path):
    folder = tmp_path / "nextgqa_test"
    folder.mkdir()
    gsub = {"100": {"duration": 20.0, "fps": 10, "location": {"3": [[1.0, 4.0], [6.0, 7.5]]}}}
    (folder / "gsub_test.json").write_text(json.dumps(gsub))
    header = "video_id,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
    rows = [
        "100,200,64,64,why did it turn?,2,3,CW,a,b,c,d,e",
        "100,200,64,64,what?,1,4,TN,a,b,c,d,e",
    ]
    (folder / "test.csv").write_text(header + "\n".join(rows) + "\n")
    with pytest.raises(AnnotationError, match=r"gsub_test.json:100.location: missing key '4'"):
        load_annotation("nextgqa", folder, tmp_path / "v", split="test")
    (rec,) = load_annotation("nextgqa", folder, tmp_path / "v", split="test", strict=False)
    assert rec.qid == "100_3" and rec.answer_index == 2 and rec.answer == "(C) c"
    assert rec.windows == [(1.0, 4.0), (6.0, 7.5)] and rec.duration == 20.0
    assert rec.video == str(tmp_path / "v" / "100.mp4") and rec.source == f"{folder / 'test.csv'}:2"
    (folder / "test.csv").write_text("video_id,question\n1,q\n")
    with pytest.raises(AnnotationError, match=r"test.csv:1: header lacks column"):
        load_annotation("nextgqa", folder, tmp_path, split="test")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(AnnotationError, match=r"nope.jsonl: annotation file not found"):
        load_annotation("qvh", tmp_path / "nope.jsonl", tmp_path, strict=False)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"id": 1,\n')
    with pytest.raises(AnnotationError, match=rf"{bad}:3: not valid JSON"):
        load_annotation("refcoco", bad, tmp_path, strict=False)
    with pytest.raises(ValueError, match="unknown annotation format 'avi'"):
        load_annotation("avi", bad, tmp_path)


@pytest.mark.parametrize(
    "line, key",
    [
        (qvh_line(duration=float("nan")), "duration"),
        (qvh_line(duration=float("inf")), "duration"),
        (qvh_line(relevant_windows=[[float("nan"), 5.0]]), "window start"),
    ],
)
def test_nan_and_infinity_are_not_numbers(tmp_path, line, key):
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line() + "\n" + line + "\n")  # json writes NaN / Infinity, and reads them
    with pytest.raises(AnnotationError, match=rf"{ann}:2: .* is not a finite number.*{key}"):
        load_annotation("qvh", ann, tmp_path)
    report = LoadReport()
    assert len(load_annotation("qvh", ann, tmp_path, strict=False, report=report)) == 1
    assert report.skipped == {"bad_value": 1}


def test_non_utf8_file_names_file_line_and_byte(tmp_path):
    ann = tmp_path / "qvh.jsonl"
    text = qvh_line() + "\n" + qvh_line(query="cafe")
    ann.write_bytes(text.encode().replace(b"cafe", b"caf\xe9"))  # a latin-1 e-acute
    with pytest.raises(AnnotationError, match=rf"{ann}:2: byte 0xe9 at offset \d+ is not UTF-8"):
        load_annotation("qvh", ann, tmp_path, strict=False)  # the whole file is unreadable


def test_blank_texts_and_non_text_options(tmp_path):
    ann = tmp_path / "conversation.json"
    items = [{"video": "v0.mp4", "QA": [{"i": "Describe it.", "q": "", "a": "A square."}]},
             {"video": "v1.mp4", "QA": [{"q": "What?", "a": "  "}]}]  # fmt: skip
    ann.write_text(json.dumps(items))
    with pytest.raises(AnnotationError, match=r"\[1\]\.QA\[0\]: key 'a' is '  ', expected"):
        load_annotation("conversation", ann, tmp_path)
    (rec,) = load_annotation("conversation", ann, tmp_path, strict=False)
    assert rec.question == "" and rec.instruction == "Describe it."  # VideoChat2 captions
    ann = tmp_path / "qvh.jsonl"
    ann.write_text(qvh_line(query=" "))
    with pytest.raises(AnnotationError, match=r"key 'query' is ' ', expected the query"):
        load_annotation("qvh", ann, tmp_path)
    ann = tmp_path / "mvbench.json"
    item = {"video": "v.mp4", "question": "Q", "candidates": ["a", None], "answer": "a"}
    ann.write_text(json.dumps([item]))
    with pytest.raises(AnnotationError, match=r"candidates \['a', None\], expected option texts"):
        load_annotation("mvbench", ann, tmp_path)


def test_mevis_rle_sizes_and_counts_are_checked(tmp_path):
    a = np.zeros((8, 10), bool)
    a[1:3, 1:4] = True
    other = rle(np.ones((6, 10), bool))
    exprs = {"0": {"exp": "x", "anno_id": ["10", "11"]}}
    cases = {
        "size": ({"10": [rle(a)], "11": [{"size": [0, 0], "counts": ""}]}, r"size \[0, 0\]"),
        "mixed": ({"10": [rle(a)], "11": [other]}, r"size \[6, 10\], but .* are \[8, 10\]"),
        "counts": (
            {"10": [rle(a)], "11": [{"size": [8, 10], "counts": [10, 5, 3]}]},
            r"uncompressed counts cover 18 pixels, expected h x w = 80",
        ),
    }
    for name, (mask_dict, words) in cases.items():
        folder = write_mevis(tmp_path / name, ["00000"], exprs, mask_dict)
        with pytest.raises(AnnotationError, match=rf"mask_dict.json: anno_id 11 frame 0: {words}"):
            load_annotation("mevis", folder, tmp_path)
