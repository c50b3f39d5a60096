"""CG-DETR criterion: each loss by hand on tiny cases, both saliency branches against a plain
re-computation, gradients to every predicted field, a short optimisation, the weight names."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tpo.config.heads import CGDETRConfig
from tpo.heads.cgdetr_criterion import (
    CGDETRCriterion,
    build_cgdetr_criterion,
    pair_margin_loss,
    rank_contrastive_loss,
)
from tpo.heads.cgdetr_output import CGDETROutput
from tpo.heads.criterion import weighted_sum
from tpo.heads.matcher import HungarianMatcher

WEIGHTS = {
    "loss_span": 10.0,
    "loss_giou": 1.0,
    "loss_label": 4.0,
    "loss_saliency": 4.0,
    "loss_ms_align": 1.0,
    "loss_distill": 1.0,
    "loss_orthogonal_dummy": 1.0,
}


def _criterion(wattn: float = 1.0, aux_layers: int = 0) -> CGDETRCriterion:
    return CGDETRCriterion(HungarianMatcher(10.0, 1.0, 4.0), WEIGHTS, 0.1, 0.2, wattn, aux_layers)


def _fg_logits(fg: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(fg)
    return torch.stack([p.log(), (1 - p).log()], dim=-1)


def _output(n=3, q=4, t=6, dummies=3, text=4, h=8, neg_rows=None, train=False, seed=0):
    """Random CGDETROutput; `neg_rows` [n] bool: rows with a real negative (None: no negatives)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    video_mask = torch.ones(n, t, dtype=torch.bool)
    video_mask[-1, -2:] = False  # the last row is padded
    fields = dict(
        pred_logits=r(n, q, 2),
        pred_spans=torch.rand(n, q, 2, generator=g) * 0.5 + 0.25,
        saliency=r(n, t),
        t2v_attn=torch.sigmoid(r(n, t)),
        attn=r(n, t, dummies + text).softmax(-1),
        video_mask=video_mask,
        text_mask=torch.ones(n, dummies + text),
        dummy_tokens=r(n, dummies, h),
        global_tokens=r(5, h),
    )
    if neg_rows is not None:
        m = int(torch.tensor(neg_rows).sum())
        fields.update(
            saliency_neg=r(m, t),
            t2v_attn_neg=torch.sigmoid(r(m, t)),
            real_neg=torch.tensor(neg_rows),
        )
    if train:
        fields.update(
            memory_moment=r(n, h),
            nmemory_moment=r(n, h),
            sentence_txt=r(n, h),
            sentence_dummy=r(n, h),
            moment2txt=r(n, t, dummies + text),
            nmoment2txt=r(n, t, dummies + text),
            moment_mask=torch.arange(t).expand(n, t) % 3 == 1,
            src_vid=r(n, t, h),
        )
    return CGDETROutput(**fields)


def _targets(n=3, t=6, p=2, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    out = []
    for i in range(n):
        scores = torch.zeros(t)
        scores[1:4] = torch.randint(1, 12, (3,), generator=g).float()  # levels 1..11
        out.append(
            {
                "spans": torch.tensor([[0.4, 0.3]] if i % 2 else [[0.4, 0.3], [0.8, 0.1]]),
                "relevant_clips": (scores > 0).float(),
                "saliency_all": scores,
                "saliency_pos": torch.tensor([1, 2, 3][:p]),
                "saliency_neg": torch.tensor([0, 4, 5][:p]),
            }
        )
    return out


# ---- plain re-computations (loops, no vectorisation) ----


def _ref_rank(scores, labels, valid) -> torch.Tensor:
    total = torch.tensor(0.0)
    for level in range(1, 12):
        row_terms = []
        for s, y, v in zip(scores, labels, valid):
            x = torch.where(v.bool(), s, torch.tensor(-1e3)) / 0.5
            x = x - x.max()
            log_p = x - torch.log(x.exp().sum() + 1e-6)
            pos = y >= level
            row_terms.append(-log_p[pos & v.bool()].sum() / (pos.sum() + 1e-6))
        total = total + torch.stack(row_terms).mean()
    return total / 12


def _ref_margin(scores, targets, margin=0.2) -> torch.Tensor:
    terms = [
        max(0.0, margin + float(s[j]) - float(s[i]))
        for s, tgt in zip(scores, targets)
        for i, j in zip(tgt["saliency_pos"].tolist(), tgt["saliency_neg"].tolist())
    ]
    return torch.tensor(2 * sum(terms) / len(terms))


def _ref_saliency(out: CGDETROutput, targets, wattn=1.0) -> torch.Tensor:
    labels = torch.stack([tgt["saliency_all"] for tgt in targets])
    valid = out.video_mask.float()

    def part(s, s_neg, is_attn):
        loss = _ref_margin(s, targets)
        if s_neg is None:
            return loss + _ref_rank(s, labels, valid)
        r = out.real_neg
        loss = loss + _ref_rank(
            torch.cat([s[r], s_neg], 1),
            torch.cat([labels[r], 0 * labels[r]], 1),
            torch.cat([valid[r], valid[r]], 1),
        )
        if not is_attn and (~r).sum() >= 2:
            loss = loss + _ref_rank(s[~r], labels[~r], valid[~r])
        p = s_neg if is_attn else torch.sigmoid(s_neg)
        return loss + (-torch.log(1 - p) * valid[r]).sum(1).mean()

    y = labels.clamp(0, 1)
    a = out.t2v_attn
    bce = -(y * a.log() + (1 - y) * (1 - a).log()).mean()
    return part(out.saliency, out.saliency_neg, False) + wattn * (
        part(a, out.t2v_attn_neg, True) + bce
    )


# ---- tests ----


def test_set_losses_by_hand_one_row_three_queries():
    out = _output(n=1, q=3, t=4)
    out.pred_spans = torch.tensor([[[0.52, 0.2], [0.1, 0.05], [0.9, 0.05]]])
    out.pred_logits = _fg_logits([[0.8, 0.3, 0.4]])
    targets = [{"spans": torch.tensor([[0.5, 0.2]])}]
    losses = _criterion()(out, targets)
    # query 0 matches: weight 1 on its fg CE, eos 0.1 on the two no-object ones, mean over 3
    expected_ce = (-math.log(0.8) - 0.1 * math.log(0.7) - 0.1 * math.log(0.6)) / 3
    assert losses["loss_label"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert losses["loss_span"].item() == pytest.approx(0.02 / 2, rel=1e-4)
    # [0.42, 0.62] vs [0.40, 0.60]: inter 0.18, union = hull = 0.22
    assert losses["loss_giou"].item() == pytest.approx(1 - 0.18 / 0.22, rel=1e-4)


def test_pair_margin_by_hand_one_row_four_clips():
    scores = torch.tensor([[0.3, 0.2, 0.1, 0.4]])
    pos, neg = torch.tensor([[0, 2]]), torch.tensor([[1, 3]])
    # (0.2 + 0.2 - 0.3) + (0.2 + 0.4 - 0.1) = 0.6, / (1 row * 2 pairs) * 2
    assert pair_margin_loss(scores, pos, neg, 0.2).item() == pytest.approx(0.6, rel=1e-6)
    # swapped: (0.2 + 0.3 - 0.2) + max(0, 0.2 + 0.1 - 0.4) = 0.3
    assert pair_margin_loss(scores, neg, pos, 0.2).item() == pytest.approx(0.3, rel=1e-6)


def test_rank_contrastive_by_hand_and_padding():
    a, b = 0.7, -0.4
    loss = rank_contrastive_loss(
        torch.tensor([[a, b]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2)
    )
    # only level 1 has a positive (clip 0): -log softmax(2a, 2b)[0] (with the 1e-6), / 12
    x0, x1 = 0.0, 2 * b - 2 * a
    expected = -(x0 - math.log(math.exp(x0) + math.exp(x1) + 1e-6)) / (1 + 1e-6) / 12
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a padded clip (any score) barely changes it; unpadded it is a strong negative
    padded = rank_contrastive_loss(
        torch.tensor([[a, b, 5.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1, 0]])
    )
    assert padded.item() == pytest.approx(expected, rel=1e-5)
    unpadded = rank_contrastive_loss(
        torch.tensor([[a, b, 5.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 3)
    )
    assert unpadded.item() > expected + 0.5


def test_rank_contrastive_matches_loop_on_many_levels():
    g = torch.Generator().manual_seed(3)
    scores, labels = torch.randn(4, 7, generator=g), torch.randint(0, 13, (4, 7), generator=g)
    valid = (torch.rand(4, 7, generator=g) > 0.2).float()
    labels = labels.float() * valid
    got = rank_contrastive_loss(scores, labels, valid)
    assert got.item() == pytest.approx(_ref_rank(scores, labels, valid).item(), rel=1e-5)


def test_saliency_batch_of_one_branch_by_hand_and_loop():
    # one row of 4 clips, no negatives: margin + rank of both streams + wattn * BCE
    out = _output(n=1, t=4)
    out.video_mask = torch.ones(1, 4, dtype=torch.bool)
    out.saliency = torch.tensor([[0.3, 0.2, 0.1, 0.4]])
    out.t2v_attn = torch.tensor([[0.6, 0.2, 0.5, 0.3]])
    targets = [
        {
            "spans": torch.tensor([[0.3, 0.4]]),
            "saliency_all": torch.tensor([2.0, 0.0, 1.0, 0.0]),
            "saliency_pos": torch.tensor([0, 2]),
            "saliency_neg": torch.tensor([1, 3]),
        }
    ]
    labels = targets[0]["saliency_all"][None]
    a = out.t2v_attn
    bce = -(labels.clamp(0, 1) * a.log() + (1 - labels.clamp(0, 1)) * (1 - a).log()).mean()
    # t2v margin: (0.2 + 0.2 - 0.6)+ = 0, (0.2 + 0.3 - 0.5) = 0 -> 0
    attn_part = 0.0 + _ref_rank(a, labels, torch.ones(1, 4)) + bce
    expected = 0.6 + _ref_rank(out.saliency, labels, torch.ones(1, 4)) + 0.5 * attn_part
    got = _criterion(wattn=0.5)(out, targets)["loss_saliency"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)

    out3, targets3 = _output(n=3), _targets(n=3)
    got3 = _criterion()(out3, targets3)["loss_saliency"]
    assert got3.item() == pytest.approx(_ref_saliency(out3, targets3).item(), rel=1e-5)


@pytest.mark.parametrize(
    "neg_rows", [[True, True, True], [True, True, False], [True, False, False]]
)
def test_saliency_neg_pair_branch_matches_loop(neg_rows):
    # all real, one lone false negative (no rank term of its own), two false negatives
    out, targets = _output(n=3, neg_rows=neg_rows), _targets(n=3)
    got = _criterion()(out, targets)["loss_saliency"]
    assert got.item() == pytest.approx(_ref_saliency(out, targets).item(), rel=1e-5)
    # the negative pairs change the loss: it differs from the batch-of-one branch
    plain = dataclasses.replace(out, saliency_neg=None, t2v_attn_neg=None, real_neg=None)
    assert abs(_criterion()(plain, targets)["loss_saliency"].item() - got.item()) > 1e-3


def test_saliency_needs_consistent_negatives_and_pairs():
    out, targets = _output(n=3, neg_rows=[True, True, False]), _targets(n=3)
    with pytest.raises(ValueError, match="real_neg"):
        _criterion()(dataclasses.replace(out, real_neg=torch.tensor([True, True, True])), targets)
    with pytest.raises(ValueError, match="t2v_attn_neg"):
        _criterion()(dataclasses.replace(out, t2v_attn_neg=None), targets)
    targets[1]["saliency_pos"] = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="target 1: 'saliency_pos' must be \\[2\\]"):
        _criterion()(out, targets)
    no_pairs = [{"spans": tgt["spans"]} for tgt in _targets(n=3)]
    assert _criterion()(out, no_pairs)["loss_saliency"].item() == 0.0


def test_ms_align_by_hand():
    out = _output(n=2, t=2, h=2, train=True)
    out.video_mask = torch.ones(2, 2, dtype=torch.bool)
    out.memory_moment = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out.nmemory_moment = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    out.sentence_txt = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    out.sentence_dummy = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    out.src_vid = torch.tensor([[[0.5, 0.0], [-1.0, 2.0]], [[0.0, 0.25], [1.0, 1.0]]])
    targets = [
        {"spans": torch.tensor([[0.25, 0.5]]), "relevant_clips": torch.tensor([1.0, 0.0])},
        {"spans": torch.tensor([[0.75, 0.5]]), "relevant_clips": torch.tensor([0.0, 1.0])},
    ]

    def unit(v):
        return [x / math.hypot(*v) for x in v]

    def ce(row, label):
        return -row[label] + math.log(sum(math.exp(x) for x in row))

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    m = [unit(v) for v in out.memory_moment.tolist()]
    nm = [unit(v) for v in out.nmemory_moment.tolist()]
    expected = 0.0
    for sentences, labels in ((out.sentence_txt, [0, 1]), (out.sentence_dummy, [1, 0])):
        s = [unit(v) for v in sentences.tolist()]
        rows = [
            [dot(m[i], s[j]) for j in range(2)] + [dot(nm[i], s[j]) for j in range(2)]
            for i in range(2)
        ]
        expected += (ce(rows[0], labels[0]) + ce(rows[1], labels[1])) / 2
    bce = []
    for i in range(2):
        for c in range(2):
            p = 1 / (1 + math.exp(-dot(out.memory_moment[i].tolist(), out.src_vid[i, c].tolist())))
            y = targets[i]["relevant_clips"][c].item()
            bce.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
    expected += sum(bce) / 4
    got = _criterion()(out, targets)["loss_ms_align"]
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_distill_by_hand():
    out = _output(n=1, t=2, dummies=1, text=1, train=True)
    out.attn = torch.tensor([[[0.7, 0.3], [0.5, 0.5]]])
    out.moment2txt = torch.tensor([[[0.0, math.log(3.0)], [1.0, 0.0]]])  # softmax [0.25, 0.75]
    out.moment_mask = torch.tensor([[True, False]])  # only clip 0 counts
    out.memory_moment = None  # ms_align off (no relevant_clips in this target)
    kl = 0.25 * (math.log(0.25) - math.log(0.7 + 1e-6)) + 0.75 * (
        math.log(0.75) - math.log(0.3 + 1e-6)
    )
    got = _criterion()(out, [{"spans": torch.tensor([[0.5, 0.5]])}])["loss_distill"]
    assert got.item() == pytest.approx(kl / 2, rel=1e-5)


def test_orthogonal_dummy_orthonormal_vs_identical():
    crit, tgt = _criterion(), [{"spans": torch.tensor([[0.5, 0.5]])}]
    out = _output(n=1, dummies=3, h=3)
    out.global_tokens = torch.eye(3)[:2] * 2.0  # orthogonal bank: 0
    out.dummy_tokens = torch.eye(3)[None] * 3.0
    assert crit(out, tgt)["loss_orthogonal_dummy"].item() == pytest.approx(0.0, abs=1e-7)
    out.dummy_tokens = torch.tensor([[[1.0, 2.0, 0.0]] * 3])  # 6 of 9 entries have |cos| 1
    assert crit(out, tgt)["loss_orthogonal_dummy"].item() == pytest.approx(6 / 9, rel=1e-6)
    out.global_tokens = torch.tensor([[1.0, 1.0, 0.0], [-2.0, -2.0, 0.0]])  # 2 of 4: |cos| 1
    assert crit(out, tgt)["loss_orthogonal_dummy"].item() == pytest.approx(6 / 9 + 0.5, rel=1e-6)
    single = _output(n=1, dummies=1, h=3)  # one dummy: only the bank counts
    single.global_tokens = out.global_tokens
    assert crit(single, tgt)["loss_orthogonal_dummy"].item() == pytest.approx(0.5, rel=1e-6)


def test_training_only_terms_zero_without_their_fields():
    losses = _criterion()(_output(), _targets())
    assert losses["loss_ms_align"].item() == 0.0 and losses["loss_distill"].item() == 0.0
    trained = _criterion()(_output(train=True), _targets())
    assert trained["loss_ms_align"].item() > 0 and trained["loss_distill"].item() > 0
    with pytest.raises(ValueError, match="src_vid"):
        _criterion()(dataclasses.replace(_output(train=True), src_vid=None), _targets())


def test_gradients_reach_every_predicted_field():
    out = _output(neg_rows=[True, True, False], train=True)
    names = [
        "pred_logits", "pred_spans", "saliency", "t2v_attn", "attn", "dummy_tokens",
        "global_tokens", "saliency_neg", "t2v_attn_neg", "memory_moment", "nmemory_moment",
        "sentence_txt", "sentence_dummy", "src_vid",
    ]  # fmt: skip
    for name in names:
        getattr(out, name).requires_grad_(True)
    crit = _criterion()
    weighted_sum(crit(out, _targets()), crit.weight_dict).backward()
    for name in names:
        grad = getattr(out, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_few_adam_steps_lower_the_total_loss():
    torch.manual_seed(0)
    base, targets = _output(neg_rows=[True, True, False], train=True), _targets()
    raw = {
        "pred_logits": base.pred_logits.clone(),
        "pred_spans": torch.logit(base.pred_spans),
        "saliency": base.saliency.clone(),
        "t2v_attn": torch.logit(base.t2v_attn),
        "t2v_attn_neg": torch.logit(base.t2v_attn_neg),
        "saliency_neg": base.saliency_neg.clone(),
        "dummy_tokens": base.dummy_tokens.clone(),
        "memory_moment": base.memory_moment.clone(),
    }
    params = {k: torch.nn.Parameter(v) for k, v in raw.items()}
    squash = {"pred_spans", "t2v_attn", "t2v_attn_neg"}
    crit, opt = _criterion(aux_layers=1), torch.optim.Adam(params.values(), lr=0.05)

    def total():
        fields = {k: torch.sigmoid(p) if k in squash else p for k, p in params.items()}
        aux = [{"pred_logits": fields["pred_logits"], "pred_spans": fields["pred_spans"]}]
        out = dataclasses.replace(base, aux=aux, **fields)
        return weighted_sum(crit(out, targets), crit.weight_dict)

    start = total().item()
    for _ in range(50):
        opt.zero_grad()
        loss = total()
        loss.backward()
        opt.step()
    assert total().item() < 0.6 * start


def test_weight_dict_names_aux_and_buffer():
    cfg = CGDETRConfig()
    crit = build_cgdetr_criterion(cfg)
    out = _output(train=True)
    out.aux = [{"pred_logits": out.pred_logits, "pred_spans": out.pred_spans}] * (
        cfg.dec_layers - 1
    )
    losses = crit(out, _targets())
    assert set(losses) == set(crit.weight_dict)
    for i in range(cfg.dec_layers - 1):
        assert {f"loss_span_{i}", f"loss_giou_{i}", f"loss_label_{i}"} <= set(losses)
    assert "loss_saliency_0" not in losses and "loss_ms_align_0" not in losses
    assert crit.weight_dict["loss_orthogonal_dummy"] == cfg.orthogonal
    assert torch.equal(crit.state_dict()["empty_weight"], torch.tensor([1.0, cfg.eos_coef]))
    # zero weights are dropped; without aux_loss no aux names; too few aux layers is an error
    crit = build_cgdetr_criterion(dataclasses.replace(cfg, distill=0.0, aux_loss=False))
    assert "loss_distill" not in crit(out, _targets()) and "loss_span_0" not in crit.weight_dict
    with pytest.raises(ValueError, match="2 aux layers expected, got 0"):
        build_cgdetr_criterion(cfg)(_output(), _targets())


def test_bad_targets_name_the_key():
    out = _output()
    with pytest.raises(ValueError, match="target 0: 'spans' must be \\[k, 2\\]"):
        _criterion()(out, [{"spans": torch.zeros(2)}] * 3)
    targets = _targets()
    targets[2]["saliency_all"] = torch.zeros(5)
    with pytest.raises(ValueError, match="target 2: 'saliency_all' must be \\[6\\]"):
        _criterion()(out, targets)
    with pytest.raises(ValueError, match="3 targets for 2 query rows"):
        _criterion()(_output(n=2), _targets())
    with pytest.raises(ValueError, match="unknown loss weights"):
        CGDETRCriterion(HungarianMatcher(), {"loss_typo": 1.0})
