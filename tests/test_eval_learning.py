"""The learning benchmark's scoring (tpo.eval.learning): the prior fitted by hand, item scores by
hand, the paired bootstrap interval, and the prior scored end to end on a generated world."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from tpo.data.records import Record
from tpo.eval.learning import (
    METRICS,
    Prior,
    evaluate_prior,
    item_scores,
    load_split,
    paired_difference,
    prepare,
    summarise,
)
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack, TimeWindow

ROOT = Path(__file__).resolve().parents[1]


def rec(task: str, **kw) -> Record:
    return Record(
        video="v.mp4",
        question="q",
        answer=kw.pop("answer", "a"),
        task=task,
        qid="0",
        source="test",
        **kw,
    )


def rle(a) -> dict:
    return mask_utils.encode(np.asfortranarray(np.array(a, np.uint8)))


def test_prior_fit_by_hand():
    train = {
        "temporal": [
            rec("temporal", duration=10.0, windows=[(2.0, 4.0)]),  # centre 0.3, width 0.2
            rec("temporal", duration=20.0, windows=[(0.0, 10.0), (12.0, 14.0)]),  # first: .25, .5
        ],
        "region": [
            rec("region", box=(0, 0, 50, 100), width=100, height=100),  # [0, 0, .5, 1]
            rec("region", box=(10, 20, 30, 40), width=100, height=200),  # [.1, .1, .3, .2]
        ],
        "mask": [  # pixel means [[2/3, 1/3], [0, 1/3]]: only the top-left reaches one half
            rec("mask", masks={0: rle([[1, 0], [0, 0]]), 3: rle([[1, 1], [0, 0]])}),
            rec("mask", masks={1: rle([[0, 0], [0, 1]])}),
        ],
        "mc": [rec("mc", answer=a) for a in ("(B) red", "(B) up", "(A) two")],
    }
    prior = Prior.fit(train)
    assert prior.span == pytest.approx((0.275, 0.35))
    assert prior.box == pytest.approx([0.05, 0.05, 0.4, 0.6])
    assert prior.mask.tolist() == [[True, False], [False, False]]
    assert prior.answer_letter == "B"


def sample(record, box=None):
    return SimpleNamespace(record=record, box=None if box is None else torch.tensor(box))


def test_item_scores_by_hand():
    gt = sample(rec("temporal", windows=[(2.0, 5.0)]))
    preds = [
        GroundedAnswer("", windows=[TimeWindow(2.0, 4.0, 0.9), TimeWindow(0.0, 1.0, 0.1)]),  # 2/3
        GroundedAnswer("", windows=[TimeWindow(3.5, 7.0, 0.9)]),  # IoU 1.5 / 5 = 0.3
        GroundedAnswer(""),  # no window
    ]
    assert item_scores("temporal", preds, [gt] * 3).tolist() == [1.0, 0.0, 0.0]

    gt = sample(rec("region", width=200, height=100), box=[0.0, 0.0, 0.5, 1.0])
    preds = [
        GroundedAnswer("", boxes=[BoxPrediction((0, 0, 100, 50), 0, 0.0)]),
        GroundedAnswer("", boxes=[BoxPrediction((0, 0, 100, 49), 0, 0.0)]),
        GroundedAnswer(""),
    ]  # pixels of a 200 x 100 frame: IoU exactly 0.5 counts; 0.49 does not; no box is wrong
    assert item_scores("region", preds, [gt] * 3).tolist() == [1.0, 0.0, 0.0]

    gt_mask = np.zeros((2, 8, 8), bool)
    gt_mask[:, 2:6, 2:6] = True
    preds = [
        GroundedAnswer("", masks=MaskTrack(gt_mask.copy(), [0, 1], 1.0)),
        GroundedAnswer(""),
        GroundedAnswer("", masks=MaskTrack(np.zeros_like(gt_mask), [0, 1], 1.0)),
    ]
    got = item_scores("mask", preds, [None] * 3, [gt_mask] * 3)
    assert got.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one GT mask stack per prediction"):
        item_scores("mask", preds, [None] * 3, [gt_mask])

    gt = sample(rec("mc", answer="(B) red"))
    preds = [GroundedAnswer(t) for t in ("(B) red", "(B)", "(A) red", "")]
    assert item_scores("mc", preds, [gt] * 4).tolist() == [1.0, 1.0, 0.0, 0.0]

    with pytest.raises(ValueError, match="2 predictions for 1 samples"):
        item_scores("mc", preds[:2], [gt])
    with pytest.raises(ValueError, match="unknown task 'caption'"):
        item_scores("caption", [], [])
    assert summarise({"m": np.array([1.0, 0.0, 0.0, 1.0])}) == {"m": 50.0}


def test_paired_difference_interval():
    better, worse = np.r_[np.ones(30), np.zeros(10)], np.zeros(40)
    diff, lo, hi = paired_difference(better, worse)
    assert diff == pytest.approx(75.0)
    assert 0 < lo < 75 < hi <= 100  # 30 of 40 items won: the whole interval is above zero
    assert paired_difference(better, worse) == (diff, lo, hi)  # seeded

    # the same mean from items that disagree both ways: no clear winner
    a, b = np.tile([1.0, 0.0], 20), np.tile([0.0, 1.0], 20)
    diff, lo, hi = paired_difference(a, b)
    assert diff == 0.0 and lo < 0 < hi

    # pairing matters: a constant lead on every item is certain, however noisy the items are
    rng = np.random.default_rng(0)
    base = rng.random(50)
    assert paired_difference(base + 0.1, base)[1:] == pytest.approx((10.0, 10.0))

    assert paired_difference(np.ones(4), np.ones(4)) == (0.0, 0.0, 0.0)  # all ties: no NaN
    with pytest.raises(ValueError, match="two \\[n\\] arrays"):
        paired_difference(np.ones(3), np.ones(4))


def test_prior_scored_end_to_end_on_a_generated_world(world):
    from tpo.config import TPOConfig, load_config
    from tpo.eval.learning import _samples, visible_mask_frames
    from tpo.eval.mask_ops import video_jf
    from tpo.eval.moments import temporal_iou

    cfg = load_config(TPOConfig, [ROOT / "configs/tiny/stage3.yaml"])
    train, test = load_split(world, "train"), load_split(world, "test")
    assert all(test[t] for t in METRICS)
    prior = Prior.fit(train)
    scores = evaluate_prior(prior, prepare(test, cfg))
    assert set(scores) == set(METRICS.values())

    right = [r.answer.startswith(f"({prior.answer_letter})") for r in test["mc"]]
    assert scores["MC accuracy"].tolist() == [float(x) for x in right]

    c, w = prior.span
    want = []
    for r in test["temporal"]:
        d = r.duration
        span = np.array([max(0.0, (c - w / 2) * d), min(d, (c + w / 2) * d)])
        best = max(temporal_iou(span[None], np.array([g]))[0] for g in r.windows)  # best GT
        want.append(float(best >= 0.5))
    assert scores["temporal R1@0.5"].tolist() == want

    data = _samples(test["mask"], cfg)
    for k in range(len(data)):  # the prior's mask on the frames the model is scored on
        _, gt = visible_mask_frames(data[k])
        assert gt.any()  # visible frames: the object is there to be found
        j, f = video_jf(np.broadcast_to(prior.mask, gt.shape), gt.numpy())
        assert scores["mask J&F"][k] == pytest.approx((j + f) / 2)
