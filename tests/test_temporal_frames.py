"""The temporal head's frame-foreground option (`windows_from: frames`): runs, loss, decoding."""

from __future__ import annotations

import math

import pytest
import torch

from tpo.config.heads import TemporalHeadConfig
from tpo.heads.temporal import TemporalHead, TemporalOutput, frame_runs, postprocess_spans
from tpo.heads.temporal_criterion import build_temporal_criterion

FRAMES = TemporalHeadConfig(
    hidden=32,
    num_queries=3,
    enc_layers=1,
    dec_layers=1,
    num_heads=4,
    dropout=0.0,
    windows_from="frames",
)


def test_frame_runs_by_hand():
    times = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    probs = torch.tensor([0.1, 0.7, 0.9, 0.2, 0.6, 0.55])
    runs = frame_runs(probs, times, 6.0)
    flat = [v for run in runs for v in run]
    assert flat == pytest.approx([1.0, 3.0, 0.8, 4.0, 6.0, 0.575])  # half a step each side
    edge = frame_runs(torch.tensor([0.8, 0.1]), torch.tensor([0.5, 1.5]), 2.0)
    assert len(edge) == 1 and edge[0] == pytest.approx([0.0, 1.0, 0.8])  # clipped at the start
    # nothing above 0.5: the run around the best frame at half its probability (0.2)
    low = frame_runs(torch.tensor([0.1, 0.3, 0.4, 0.1, 0.25]), times[:5], 5.0)
    assert len(low) == 1 and low[0] == pytest.approx([1.0, 3.0, 0.35])


def test_frame_loss_equals_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [1.0, -2.0, 3.0, 9.0]])
    tau = torch.tensor([[0.1, 0.3, 0.5, 0.7], [0.2, 0.4, 0.6, 0.8]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    out = TemporalOutput(
        torch.rand(2, 3, 2), torch.randn(2, 3, 2), torch.zeros(2, 4), mask, [], logits, tau
    )
    # sample 0: window [0.2, 0.6] holds frames 1, 2; sample 1: [0.5, 0.7] holds frame 2
    targets = [{"spans": torch.tensor([[0.4, 0.4]])}, {"spans": torch.tensor([[0.6, 0.2]])}]
    losses = build_temporal_criterion(FRAMES)(out, targets)

    def bce(x: float, y: int) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    terms = [bce(2.0, 0), bce(-1.0, 1), bce(0.5, 1), bce(0.0, 0)]
    terms += [bce(1.0, 0), bce(-2.0, 0), bce(3.0, 1)]  # the padded frame takes no part
    assert losses["loss_frame_fg"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_queries_head_has_no_frame_output():
    cfg = TemporalHeadConfig(hidden=32, num_queries=3, enc_layers=1, dec_layers=1, num_heads=4)
    head = TemporalHead(cfg, 24, 16)
    out = head(torch.randn(2, 24), torch.randn(2, 5, 16), torch.rand(2, 5), torch.ones(2))
    assert out.frame_logits is None and head.frame_embed is None
    assert "loss_frame_fg" not in build_temporal_criterion(cfg).weight_dict
    with pytest.raises(ValueError, match="windows_from"):
        TemporalHeadConfig(windows_from="clips")


def test_frame_head_learns_windows_first_in_postprocess():
    """Frames whose feature carries the query's marker are the moment: the frame classifier
    learns them, and its run is the top window (before the decoder's spans)."""
    torch.manual_seed(0)
    head = TemporalHead(FRAMES, 8, 8)
    crit = build_temporal_criterion(FRAMES)
    n, t = 16, 10
    query = torch.eye(8)[torch.randint(8, (n,))]  # [n, 8] one-hot markers
    start = torch.randint(0, 6, (n,))
    inside = (torch.arange(t)[None] >= start[:, None]) & (
        torch.arange(t)[None] < start[:, None] + 4
    )
    feats = 0.3 * torch.randn(n, t, 8) + inside[..., None] * query[:, None]  # [n, t, 8]
    times = (torch.arange(t) + 0.5).expand(n, t).float()
    dur = torch.full((n,), float(t))
    spans = torch.stack([(start + 2.0) / t, torch.full((n,), 0.4)], -1)[:, None]  # [n, 1, 2]
    targets = [{"spans": s} for s in spans]
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = crit(head(query, feats, times, dur), targets)["loss_frame_fg"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    head.eval()
    with torch.no_grad():
        out = head(query, feats, times, dur)
    windows = postprocess_spans(out, dur)
    hits = [w[0][:2] == pytest.approx([float(s), float(s) + 4.0]) for w, s in zip(windows, start)]
    assert sum(hits) >= 14, windows
    assert all(len(w) >= 1 + FRAMES.num_queries for w in windows)  # the runs, then the spans


def test_postprocess_ranks_runs_first_and_keeps_scores_in_that_order():
    # frames at 0.5..3.5 s of a 4-s video; frames 1-2 foreground (sigmoid(2) = 0.8808)
    frame_logits = torch.tensor([[-3.0, 2.0, 2.0, -3.0]])
    tau = torch.tensor([[0.125, 0.375, 0.625, 0.875]])
    spans = torch.tensor([[[0.5, 0.5], [0.25, 0.5]]])  # (centre, width)
    logits = torch.log(torch.tensor([[[0.99, 0.01], [0.6, 0.4]]]))  # decoder more sure than run
    out = TemporalOutput(
        spans, logits, torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), [], frame_logits, tau
    )
    (windows,) = postprocess_spans(out, torch.tensor([4.0]))
    run = torch.sigmoid(torch.tensor(2.0)).item()
    assert windows[0] == pytest.approx([1.0, 3.0, run])  # the run still comes first
    # the decoder's spans follow, scaled to half the lowest run score: 0.99 * run / 2, 0.6 * run / 2
    assert windows[1] == pytest.approx([1.0, 3.0, 0.99 * run / 2])
    assert windows[2] == pytest.approx([0.0, 2.0, 0.6 * run / 2])
    scores = [w[2] for w in windows]
    assert scores == sorted(scores, reverse=True)
