"""Temporal head, its criterion, post-processing and feature helpers (tiny, CPU)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tpo.config.heads import TemporalHeadConfig
from tpo.heads.criterion import weighted_sum
from tpo.heads.matcher import HungarianMatcher
from tpo.heads.temporal import TemporalHead, TemporalOutput, postprocess_saliency, postprocess_spans
from tpo.heads.temporal_criterion import TemporalCriterion, build_temporal_criterion
from tpo.heads.temporal_features import (
    FrameFeatureCache,
    load_npz_features,
    sample_feature_times,
    save_npz_features,
    vision_frame_encoder,
)

TINY = TemporalHeadConfig(
    hidden=32, num_queries=4, enc_layers=1, dec_layers=2, num_heads=4, dropout=0.0
)
D_LLM, D_FEAT = 24, 16


def _logits(fg: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(fg)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def _giou(a: list[float], b: list[float]) -> float:
    """Plain GIoU of two (centre, width) spans."""
    (s1, e1), (s2, e2) = (a[0] - a[1] / 2, a[0] + a[1] / 2), (b[0] - b[1] / 2, b[0] + b[1] / 2)
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    hull = max(e1, e2) - min(s1, s2)
    return inter / union - (hull - union) / hull


def _batch(n: int = 2, t: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, t, D_FEAT, generator=g)
    timestamps = (torch.arange(t, dtype=torch.float32) + 0.5).expand(n, t).clone()
    duration = torch.full((n,), float(t))
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[1, t - 2 :] = False  # second sample is shorter
    targets = [
        {
            "spans": torch.tensor([[0.25, 0.25]]),
            "saliency": torch.tensor([0, 1, 2, 0, 0, 0, 0, 0.0]),
        },
        {
            "spans": torch.tensor([[0.5, 0.2], [0.15, 0.1]]),
            "saliency": torch.tensor([1.0, 0, 0, 0, 1, 0]),
        },
    ]
    query = torch.randn(n, D_LLM, generator=g)
    return query, feats, timestamps, duration, mask, targets


def test_output_shapes_and_ranges():
    head = TemporalHead(TINY, D_LLM, D_FEAT)
    query, feats, ts, dur, mask, _ = _batch()
    out = head(query, feats, ts, dur, mask)
    assert out.pred_spans.shape == (2, 4, 2) and out.pred_logits.shape == (2, 4, 2)
    assert out.saliency.shape == (2, 8) and torch.equal(out.mask, mask)
    assert ((out.pred_spans >= 0) & (out.pred_spans <= 1)).all()
    assert len(out.aux) == TINY.dec_layers - 1 and out.aux[0]["pred_spans"].shape == (2, 4, 2)
    assert set(head.trainable_groups()) == {"temporal_head"}
    assert len(head.trainable_groups()["temporal_head"]) == len(list(head.parameters()))
    with pytest.raises(ValueError, match="TemporalHead: expected"):
        head(query[:1], feats, ts, dur, mask)


def test_padding_frames_do_not_change_predictions():
    head = TemporalHead(TINY, D_LLM, D_FEAT).eval()
    query, feats, ts, dur, mask, _ = _batch()
    out = head(query, feats, ts, dur, mask)
    feats2 = feats.clone()
    feats2[1, -2:] = 100.0  # garbage in the padded frames of sample 1
    out2 = head(query, feats2, ts, dur, mask)
    assert torch.allclose(out.pred_spans, out2.pred_spans, atol=1e-5)
    assert torch.allclose(out.saliency[1, :-2], out2.saliency[1, :-2], atol=1e-5)


def test_criterion_equals_hand_computed():
    spans = torch.tensor([[[0.3, 0.2], [0.8, 0.1]], [[0.5, 0.4], [0.1, 0.1]]])
    fg = [[0.7, 0.4], [0.6, 0.2]]
    sal = torch.tensor([[0.1, 0.5, 0.3, -0.2], [0.4, 0.45, -0.1, 9.0]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    out = TemporalOutput(spans, _logits(fg), sal, mask, [])
    targets = [
        {"spans": torch.tensor([[0.25, 0.2]]), "saliency": torch.tensor([0.0, 1, 2, 0])},
        {"spans": torch.tensor([[0.6, 0.3], [0.1, 0.2]]), "saliency": torch.tensor([1.0, 0, 0])},
    ]
    weights = {
        "loss_span": 10,
        "loss_giou": 1,
        "loss_label": 4,
        "loss_saliency": 4,
        "loss_saliency_rank": 4,
    }
    crit = TemporalCriterion(
        HungarianMatcher(10, 1, 4), weights, eos_coef=0.1, saliency_margin=0.2, saliency_tau=0.5
    )
    losses = crit(out, targets)

    pairs = [([0.3, 0.2], [0.25, 0.2]), ([0.5, 0.4], [0.6, 0.3]), ([0.1, 0.1], [0.1, 0.2])]
    l1 = sum(abs(p[0] - g[0]) + abs(p[1] - g[1]) for p, g in pairs) / 6
    giou = sum(1 - _giou(p, g) for p, g in pairs) / 3
    # matched (fg target): (0,0), (1,0), (1,1); query (0,1) is no-object with weight 0.1
    ce = (-math.log(0.7) - 0.1 * math.log(1 - 0.4) - math.log(0.6) - math.log(0.2)) / 4
    s0, s1 = sal[0].tolist(), sal[1].tolist()
    hinge = lambda a, b: max(0.0, 0.2 - (a - b))  # noqa: E731
    margin_terms = [hinge(s0[a], s0[b]) for a, b in [(1, 0), (1, 3), (2, 0), (2, 1), (2, 3)]]
    margin_terms += [hinge(s1[0], s1[1]), hinge(s1[0], s1[2])]
    margin = sum(margin_terms) / len(margin_terms)

    def log_softmax(xs: list[float], i: int) -> float:
        return xs[i] / 0.5 - math.log(sum(math.exp(x / 0.5) for x in xs))

    rank = (
        (
            -(log_softmax(s0, 1) + log_softmax(s0, 2)) / 2  # level 1: frames 1, 2
            - log_softmax(s0, 2)  # level 2: frame 2
            - log_softmax(s1[:3], 0)  # sample 1, level 1: frame 0 among the 3 valid frames
        )
        / 3
    )
    expected = {
        "loss_span": l1,
        "loss_giou": giou,
        "loss_label": ce,
        "loss_saliency": margin,
        "loss_saliency_rank": rank,
    }
    assert set(losses) == set(expected) == set(crit.weight_dict)
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-4, abs=1e-6), k
    total = weighted_sum(losses, crit.weight_dict).item()
    assert total == pytest.approx(sum(weights[k] * v for k, v in expected.items()), rel=1e-4)


def test_aux_losses_and_empty_targets():
    crit = build_temporal_criterion(TINY)
    assert {"loss_span_0", "loss_giou_0", "loss_label_0"} <= set(crit.weight_dict)
    assert crit.weight_dict["loss_span_0"] == TINY.span_l1
    spans, logits = torch.rand(2, 4, 2), torch.randn(2, 4, 2)
    aux = [{"pred_spans": spans.clone(), "pred_logits": logits.clone()}]
    out = TemporalOutput(spans, logits, torch.randn(2, 5), torch.ones(2, 5, dtype=torch.bool), aux)
    targets = [{"spans": torch.tensor([[0.5, 0.2]])}, {"spans": torch.zeros(0, 2)}]  # no saliency
    losses = crit(out, targets)
    for k in ("loss_span", "loss_giou", "loss_label"):
        assert losses[f"{k}_0"].item() == pytest.approx(losses[k].item())  # same layer output
    assert losses["loss_saliency"].item() == 0 and losses["loss_saliency_rank"].item() == 0
    none = crit(out, [{"spans": torch.zeros(0, 2)}] * 2)
    assert none["loss_span"].item() == 0 and none["loss_label"].item() > 0
    with pytest.raises(ValueError, match="temporal target 1: 'spans' must be"):
        crit(out, [{"spans": torch.zeros(0, 2)}, {"spans": torch.zeros(3)}])


def test_gradients_reach_query_and_every_parameter():
    head = TemporalHead(TINY, D_LLM, D_FEAT)
    crit = build_temporal_criterion(TINY)
    query, feats, ts, dur, mask, targets = _batch()
    query.requires_grad_(True)
    loss = weighted_sum(crit(head(query, feats, ts, dur, mask), targets), crit.weight_dict)
    loss.backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing


def test_overfits_one_batch():
    head = TemporalHead(TINY, D_LLM, D_FEAT)
    crit = build_temporal_criterion(TINY)
    query, feats, ts, dur, mask, targets = _batch()
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss = weighted_sum(crit(head(query, feats, ts, dur, mask), targets), crit.weight_dict)
        first = first if first is not None else loss.item()
        if loss.item() < 0.5 * first:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_postprocess_seconds_sorted_nms():
    spans = torch.tensor([[[0.5, 0.4], [0.52, 0.4], [0.95, 0.3]]])
    out = TemporalOutput(
        spans, _logits([[0.6, 0.9, 0.3]]), torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    )
    (windows,) = postprocess_spans(out, torch.tensor([20.0]))
    assert [w[2] for w in windows] == pytest.approx([0.9, 0.6, 0.3])
    assert windows[0][:2] == pytest.approx([6.4, 14.4])
    assert windows[2][:2] == pytest.approx([16.0, 20.0])  # clipped to the duration
    assert all(0 <= s <= e <= 20 for s, e, _ in windows)
    (kept,) = postprocess_spans(out, torch.tensor([20.0]), nms_iou=0.7)
    assert [w[2] for w in kept] == pytest.approx([0.9, 0.3])  # the near-duplicate is gone
    (best,) = postprocess_spans(out, torch.tensor([20.0]), max_windows=1)
    assert len(best) == 1


def test_postprocess_saliency_valid_frames_only():
    sal = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = TemporalOutput(torch.rand(2, 1, 2), torch.randn(2, 1, 2), sal, mask)
    assert postprocess_saliency(out) == [[1.0, 2.0, 3.0], [4.0]]


def test_sample_feature_times():
    assert sample_feature_times(3.0, 1.0, 75).tolist() == pytest.approx([0.5, 1.5, 2.5])
    assert sample_feature_times(2.5, 1.0, 75).tolist() == pytest.approx([0.5, 1.5, 2.25])
    assert sample_feature_times(4.0, 2.0, 75).tolist() == pytest.approx(
        [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75]
    )
    capped = sample_feature_times(100.0, 1.0, 4)
    assert capped.tolist() == pytest.approx([12.5, 37.5, 62.5, 87.5])
    with pytest.raises(ValueError, match="duration must be > 0"):
        sample_feature_times(0.0, 1.0, 4)


def test_npz_round_trip_and_errors(tmp_path):
    feats, times = torch.randn(3, 5), torch.tensor([0.5, 1.5, 2.5])
    save_npz_features(tmp_path / "a.npz", feats, times)
    f2, t2 = load_npz_features(tmp_path / "a.npz")
    assert torch.allclose(f2, feats) and torch.allclose(t2, times)
    np.savez(tmp_path / "fps.npz", feats=np.zeros((4, 2)), fps=np.array(2.0))
    assert load_npz_features(tmp_path / "fps.npz")[1].tolist() == [0.25, 0.75, 1.25, 1.75]
    np.savez(tmp_path / "nokey.npz", x=np.zeros((4, 2)))
    with pytest.raises(KeyError, match=r"nokey.npz: expected key 'features'"):
        load_npz_features(tmp_path / "nokey.npz")
    np.savez(tmp_path / "notime.npz", features=np.zeros((4, 2)))
    with pytest.raises(KeyError, match=r"notime.npz: expected key 'timestamps'"):
        load_npz_features(tmp_path / "notime.npz")
    np.savez(tmp_path / "order.npz", features=np.zeros((2, 2)), timestamps=np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        load_npz_features(tmp_path / "order.npz")
    np.savez(tmp_path / "len.npz", features=np.zeros((2, 2)), timestamps=np.array([1.0]))
    with pytest.raises(ValueError, match=r"len.npz: 'timestamps' must be \[2\]"):
        load_npz_features(tmp_path / "len.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz_features(tmp_path / "missing.npz")


def test_frame_feature_cache(tmp_path):
    calls = []

    class StandInVision(torch.nn.Module):  # the real encoder: [b, f, 3, H, W] -> VisionOutput
        def forward(self, clips):
            calls.append(clips.shape)
            return SimpleNamespace(frames=clips.mean(dim=(2, 3, 4))[..., None].repeat(1, 1, 6))

    def read_frames(path, times):
        return times[:, None, None, None].expand(-1, 3, 4, 4).clone()

    cache = FrameFeatureCache(
        vision_frame_encoder(StandInVision()), read_frames, 1.0, 75, tmp_path, batch_size=2
    )
    feats, times = cache("v.mp4", 3.0)
    assert feats.shape == (3, 6) and times.tolist() == [0.5, 1.5, 2.5]
    assert torch.allclose(feats[:, 0], times)  # each frame encoded alone as a one-frame clip
    assert calls == [(2, 1, 3, 4, 4), (1, 1, 3, 4, 4)]
    cache("v.mp4", 3.0)
    assert len(calls) == 2  # memory hit
    fresh = FrameFeatureCache(vision_frame_encoder(StandInVision()), read_frames, 1.0, 75, tmp_path)
    feats2, _ = fresh("v.mp4", 3.0)
    assert len(calls) == 2 and torch.allclose(feats2, feats)  # disk hit


SPATIAL = TemporalHeadConfig(
    hidden=32, num_queries=4, enc_layers=1, dec_layers=2, num_heads=4, dropout=0.0, spatial=True
)


def test_spatial_needs_patches():
    head = TemporalHead(SPATIAL, D_LLM, D_FEAT)
    query, feats, ts, dur, mask, _ = _batch()
    with pytest.raises(ValueError, match=r"feats must be \[n, t, p, d\]"):
        head(query, feats, ts, dur, mask)


def test_spatial_pooling_of_identical_patches_is_their_value():
    head = TemporalHead(SPATIAL, D_LLM, D_FEAT).eval()
    query = torch.randn(2, D_LLM)
    patch = torch.randn(2, 3, 1, D_FEAT)
    pooled = head._pool(query, patch.expand(2, 3, 5, D_FEAT))
    q = head.pool_query(query)
    logit = (head.pool_key(patch[:, :, 0]) * q[:, None]).sum(-1) / math.sqrt(SPATIAL.hidden)
    assert torch.allclose(pooled[..., :-1], head.pool_value(patch[:, :, 0]), atol=1e-5)
    assert torch.allclose(pooled[..., -1], logit, atol=1e-5)


def test_spatial_gradients_reach_query_and_every_parameter():
    head = TemporalHead(SPATIAL, D_LLM, D_FEAT)
    crit = build_temporal_criterion(SPATIAL)
    query, feats, ts, dur, mask, targets = _batch()
    patches = feats[:, :, None].repeat(1, 1, 4, 1) + torch.randn(2, 8, 4, D_FEAT)
    query.requires_grad_(True)
    out = head(query, patches, ts, dur, mask)
    assert out.pred_spans.shape == (2, 4, 2) and out.saliency.shape == (2, 8)
    weighted_sum(crit(out, targets), crit.weight_dict).backward()
    assert query.grad.abs().sum() > 0
    assert not [n for n, p in head.named_parameters() if p.grad is None]


def test_spatial_saliency_finds_the_frames_holding_the_asked_object():
    """Frames where the object the query names sits in one of 16 patches are salient: after
    training, the saliency ranks those frames first on held-out clips."""
    g = torch.Generator().manual_seed(0)
    marks, names = torch.randn(3, D_FEAT, generator=g) * 2, torch.randn(3, D_LLM, generator=g)

    def clips(n: int):
        obj = torch.randint(3, (n,), generator=g)
        patches = torch.randn(n, 8, 16, D_FEAT, generator=g) * 0.3
        start = torch.randint(0, 5, (n,), generator=g)
        sal = torch.zeros(n, 8)
        for i in range(n):
            other = (int(obj[i]) + 1) % 3  # a distractor in every frame
            patches[i, :, int(torch.randint(16, (1,), generator=g))] += marks[other]
            for f in range(int(start[i]), int(start[i]) + 3):
                patches[i, f, int(torch.randint(16, (1,), generator=g))] += marks[obj[i]]
                sal[i, f] = 1.0
        spans = torch.stack([(start + 1.5) / 8, torch.full((n,), 3 / 8)], -1)
        targets = [{"spans": s[None], "saliency": v} for s, v in zip(spans, sal)]
        return names[obj], patches, sal, targets

    torch.manual_seed(0)
    head, crit = TemporalHead(SPATIAL, D_LLM, D_FEAT), build_temporal_criterion(SPATIAL)
    ts = (torch.arange(8.0) + 0.5).expand(16, 8)
    dur, mask = torch.full((16,), 8.0), torch.ones(16, 8, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    for _ in range(150):
        query, patches, _, targets = clips(16)
        loss = weighted_sum(crit(head(query, patches, ts, dur, mask), targets), crit.weight_dict)
        opt.zero_grad()
        loss.backward()
        opt.step()
    query, patches, sal, _ = clips(16)
    with torch.no_grad():
        saliency = head.eval()(query, patches, ts, dur, mask).saliency
    top3 = saliency.topk(3, dim=-1).indices
    hits = sal.gather(1, top3).mean().item()
    assert hits > 0.9, hits
