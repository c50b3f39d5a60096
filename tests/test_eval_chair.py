"""CHAIR: mention extraction with synonyms, plurals and compounds; CHAIR_i / CHAIR_s by hand."""

from __future__ import annotations

import json

import pytest

from tpo.eval.chair import chair, extract_objects, load_vocabulary, plural, score_chair
from tpo.eval.io import ScoreError


def test_vocabulary_covers_the_80_coco_categories():
    categories = {c for c in load_vocabulary().values() if c is not None}
    assert len(categories) == 80
    assert {"person", "hot dog", "teddy bear", "dining table", "hair drier"} <= categories


def test_plural_rules():
    irregular = {"man": "men"}
    assert plural("bus", irregular) == "buses"
    assert plural("pony", irregular) == "ponies"
    assert plural("toy", irregular) == "toys"
    assert plural("wine glass", irregular) == "wine glasses"
    assert plural("police man", irregular) == "police men"


def test_extract_objects_compounds_plurals_synonyms():
    text = "Two men ride bikes past a hot dog stand; a baby dog sits by the toilet seat."
    assert extract_objects(text) == [
        ("men", "person"),
        ("bikes", "bicycle"),
        ("hot dog", "hot dog"),  # not a dog
        ("baby dog", "dog"),  # not a person
        ("toilet seat", "toilet"),  # not a chair
    ]
    assert [c for _, c in extract_objects("People, mice, knives and a Teddy Bear.")] == [
        "person",
        "mouse",
        "knife",
        "teddy bear",
    ]
    assert extract_objects("The scene is calm.") == []


def test_chair_hand_computed():
    responses = ["A man and a dog on a couch.", "A cat.", "Two cats and a dog."]
    out = chair(responses, [{"person", "dog"}, {"cat"}, {"cat"}])
    assert out["CHAIRi"] == pytest.approx(100 * 2 / 6)  # couch, dog of 6 mentions
    assert out["CHAIRs"] == pytest.approx(100 * 2 / 3)
    repeated = chair(["A dog. The dog barks."], [set()])
    assert repeated == {"CHAIRs": 100.0, "CHAIRi": 100.0}  # every mention counts
    assert chair(["Nothing here."], [{"cat"}]) == {"CHAIRs": 0.0, "CHAIRi": 0.0}


def test_score_chair_files(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {"1": ["person", "Dog"], "2": {"objects": ["cat"], "captions": ["A kitten on a sofa."]}}
        )
    )
    pred = tmp_path / "p.jsonl"
    pred.write_text(
        json.dumps({"id": 1, "response": "A man and a dog on a couch."})
        + "\n"
        + json.dumps({"id": "2", "caption": "A cat on a couch next to a laptop."})
        + "\n"
    )
    out = score_chair(gt, pred)
    assert out["CHAIRi"] == pytest.approx(100 * 2 / 6)  # couch (1), laptop (2)
    assert out["CHAIRs"] == 100.0
    pred.write_text(json.dumps({"id": 1, "response": "A man."}) + "\n")
    with pytest.raises(ScoreError, match=r"no prediction for id\(s\) 2"):
        score_chair(gt, pred)
    assert score_chair(gt, pred, allow_missing=True) == {"CHAIRs": 0.0, "CHAIRi": 0.0}
    pred.write_text(json.dumps({"id": 5, "response": "A man."}) + "\n")
    with pytest.raises(ScoreError, match=r"id\(s\) 5 are not in the ground truth"):
        score_chair(gt, pred, allow_missing=True)
    gt.write_text(json.dumps({"1": ["spaceship"]}))
    with pytest.raises(ScoreError, match="id 1: object 'spaceship' is not a COCO category"):
        score_chair(gt, pred)
