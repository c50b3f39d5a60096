"""POPEN curriculum: tiers from mask quality, coarse / fine pairs, the phase switch."""

import pytest
import torch

from tpo.popen.curriculum import Curriculum, preference_pairs, rank_tiers


def test_rank_tiers_thirds_for_30():
    scores = [(7 * i) % 30 / 30 for i in range(30)]  # a permutation of 0/30 .. 29/30
    tiers = rank_tiers(scores)
    assert [tiers.count(t) for t in ("high", "medium", "low")] == [10, 10, 10]
    for s, t in zip(scores, tiers):
        expected = "high" if s >= 20 / 30 else "low" if s < 10 / 30 else "medium"
        assert t == expected


@pytest.mark.parametrize(
    ("n", "counts"), [(31, [10, 11, 10]), (32, [11, 10, 11]), (2, [1, 0, 1]), (1, [0, 1, 0])]
)
def test_rank_tiers_uneven_sizes(n, counts):
    tiers = rank_tiers([float(i) for i in range(n)])
    assert [tiers.count(t) for t in ("high", "medium", "low")] == counts


def test_rank_tiers_ties_broken_by_index():
    assert rank_tiers([0.5, 0.5, 0.5]) == ["high", "medium", "low"]
    assert rank_tiers([0.1, 0.9, 0.9, 0.1, 0.5, 0.5]) == [
        "low", "high", "high", "low", "medium", "medium"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        rank_tiers([0.1, float("nan")])


def test_pairs_counts_for_30_and_order():
    tiers = rank_tiers([float(i) for i in range(30)])  # 0-9 low, 10-19 medium, 20-29 high
    coarse = preference_pairs(tiers, "coarse")
    fine = preference_pairs(tiers, "fine")
    assert len(coarse) == 100 and len(fine) == 200
    assert all(tiers[w] == "high" and tiers[lo] == "low" for w, lo in coarse)
    assert fine[:100] == [(w, m) for w in range(20, 30) for m in range(10, 20)]
    assert fine[100:] == [(m, lo) for m in range(10, 20) for lo in range(10)]
    assert coarse == sorted(coarse)
    assert not set(coarse) & set(fine)


def test_pairs_bad_input():
    with pytest.raises(ValueError, match="phase"):
        preference_pairs(["high", "low"], "medium")
    with pytest.raises(ValueError, match="'top'"):
        preference_pairs(["high", "top"], "coarse")


def test_curriculum_switch_by_step_and_epoch():
    by_step = Curriculum(switch_step=5)
    assert [by_step.phase(s, epoch=9) for s in (0, 4, 5, 100)] == [
        "coarse", "coarse", "fine", "fine"
    ]  # fmt: skip
    by_epoch = Curriculum(switch_epoch=2)
    assert [by_epoch.phase(1000, e) for e in (0, 1, 2, 3)] == ["coarse", "coarse", "fine", "fine"]
    assert Curriculum().phase(10**6, 10**3) == "coarse"
    assert Curriculum(switch_step=0).phase(0) == "fine"
    with pytest.raises(ValueError, match="not both"):
        Curriculum(switch_step=1, switch_epoch=1)
    with pytest.raises(ValueError, match="switch_step"):
        Curriculum(switch_step=-1)


def test_curriculum_pairs_from_scores():
    scores = torch.tensor([0.9, 0.1, 0.5])
    cur = Curriculum(switch_step=1)
    assert cur.pairs(scores, step=0) == [(0, 1)]
    assert cur.pairs(scores, step=1) == [(0, 2), (2, 1)]
