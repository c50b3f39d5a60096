"""Multi-task criterion routing and the heads builder (tiny, CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from tpo.config.heads import HeadsConfig, MaskHeadConfig, RegionHeadConfig, TemporalHeadConfig
from tpo.config.schema import ModelConfig
from tpo.heads import registry
from tpo.heads.build import build_criterion, build_heads
from tpo.heads.criterion import MultiTaskCriterion, token_indices, weighted_sum

D_LLM, D_V, T = 16, 8, 6
TEMPORAL = TemporalHeadConfig(
    hidden=16, num_queries=3, enc_layers=1, dec_layers=2, num_heads=2, dropout=0.0
)
REGION = RegionHeadConfig(hidden=16)


class StandInMaskCriterion:
    """The mask criterion's conventions (H6's lives in tpo.heads.mask): dict + weight_dict."""

    weight_dict = {"loss_bce": 2.0, "loss_dice": 0.5}

    def __call__(self, outputs, targets):
        raise AssertionError("no mask token in these batches")


def _setup(task_weights=None, lm_weight=0.5):
    cfg = HeadsConfig(
        temporal=TEMPORAL,
        region=REGION,
        mask=None,
        task_weights=task_weights or {"temporal": 0.05, "region": 2.0},
    )
    heads = build_heads(ModelConfig(heads=cfg), D_LLM, D_V)
    crit = build_criterion(heads, ModelConfig(heads=cfg), lm_weight=lm_weight)
    heads["mask"] = nn.Linear(3, 3)  # stand-in mask head: trainable parameters, never used
    crit = MultiTaskCriterion(
        crit.criteria | {"mask": StandInMaskCriterion()}, crit.weight, lm_weight
    )
    return heads, crit


def _run_heads(heads, hidden, task_head, feats):
    idx = token_indices(task_head)
    out = {}
    if len(idx["temporal"]):
        n = len(idx["temporal"])
        ts = (torch.arange(T) + 0.5).expand(n, T)
        out["temporal"] = heads["temporal"](
            hidden[idx["temporal"]], feats[:n], ts, torch.full((n,), float(T))
        )
    if len(idx["region"]):
        out["region"] = heads["region"](hidden[idx["region"]])
    return out


def test_head_ids_are_the_registry_order():
    assert registry.names()[:3] == ("temporal", "region", "mask")
    assert [p.content for p in registry.task_pairs()[:3]] == ["<temp>", "<boxes>", "<tracking>"]


def test_token_indices_and_bad_ids():
    got = token_indices(torch.tensor([1, 0, 1, 2]))
    assert (
        got["temporal"].tolist() == [1]
        and got["region"].tolist() == [0, 2]
        and got["mask"].tolist() == [3]
    )
    with pytest.raises(ValueError, match="task_head ids must lie in 0..2"):
        token_indices(torch.tensor([0, 3]))


def test_mixed_batch_total_is_lm_plus_weighted_sums():
    heads, crit = _setup()
    # 4 samples: 0 temporal; 1 region; 2 no task (LM only); 3 region then temporal
    task_head = torch.tensor([0, 1, 1, 0])
    hidden = torch.randn(4, D_LLM, requires_grad=True)
    feats = torch.randn(2, T, D_V)
    targets = [
        {"spans": torch.tensor([[0.3, 0.2]]), "saliency": torch.tensor([0.0, 1, 2, 0, 0, 0])},
        {"boxes": torch.tensor([0.1, 0.1, 0.3, 0.4])},
        {"boxes": torch.tensor([0.6, 0.5, 0.9, 0.9])},
        {
            "spans": torch.tensor([[0.7, 0.3], [0.2, 0.1]]),
            "saliency": torch.tensor([1.0, 0, 0, 0, 0, 1]),
        },
    ]
    lm = torch.tensor(2.5, requires_grad=True)
    outputs = _run_heads(heads, hidden, task_head, feats)
    total, losses = crit(outputs, targets, task_head, lm_loss=lm, heads=heads)

    t_losses = crit.criteria["temporal"](outputs["temporal"], [targets[0], targets[3]])
    r_losses = crit.criteria["region"](outputs["region"], [targets[1], targets[2]])
    t_w, r_w = crit.criteria["temporal"].weight_dict, crit.criteria["region"].weight_dict
    expected = 0.5 * 2.5
    expected += 0.05 * sum(t_w[k] * t_losses[k].item() for k in t_w)
    expected += 2.0 * sum(r_w[k] * r_losses[k].item() for k in r_w)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert losses["lm"].item() == 2.5
    for k, v in r_losses.items():  # routed in token order: targets[1] then targets[2]
        assert losses[f"region/{k}"].item() == pytest.approx(v.item())
    swapped = crit.criteria["region"](outputs["region"], [targets[2], targets[1]])
    assert swapped["loss_l1"].item() != pytest.approx(r_losses["loss_l1"].item())
    assert losses["temporal/weighted"].item() == pytest.approx(
        0.05 * weighted_sum(t_losses, t_w).item(), rel=1e-5
    )
    # the absent mask head: zero losses under its usual keys, zero (but defined) grads
    assert losses["mask/loss_bce"].item() == 0 and losses["mask/weighted"].item() == 0
    total.backward()
    assert lm.grad.item() == pytest.approx(0.5)
    assert hidden.grad[[0, 1, 2, 3]].abs().sum(-1).gt(0).all()
    for name in ("temporal", "region"):
        assert all(p.grad is not None for p in heads[name].parameters())
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in heads["mask"].parameters())


def test_lm_only_batch_adds_exact_zero_with_grads_defined():
    heads, crit = _setup()
    lm = torch.tensor(1.75, requires_grad=True)
    total, losses = crit({}, [], torch.zeros(0, dtype=torch.long), lm_loss=lm, heads=heads)
    assert total.item() == 0.5 * 1.75
    assert all(losses[f"{h}/weighted"].item() == 0 for h in ("temporal", "region", "mask"))
    assert losses["temporal/loss_span"].item() == 0 and losses["region/loss_giou"].item() == 0
    total.backward()
    for head in heads.values():
        assert all(p.grad is not None and torch.all(p.grad == 0) for p in head.parameters())


def test_routing_errors():
    heads, crit = _setup()
    with pytest.raises(ValueError, match="1 'region' tokens but no 'region' outputs"):
        crit({}, [{"boxes": torch.zeros(4)}], torch.tensor([1]))
    with pytest.raises(ValueError, match="2 targets for 1 content tokens"):
        crit({}, [{}, {}], torch.tensor([1]))
    only_region = MultiTaskCriterion({"region": crit.criteria["region"]})
    with pytest.raises(ValueError, match="1 'temporal' tokens but no temporal criterion"):
        only_region({}, [{}], torch.tensor([0]))
    with pytest.raises(TypeError, match="criterion 'region' has no weight_dict"):
        MultiTaskCriterion({"region": lambda o, t: {}})
    with pytest.raises(ValueError, match="unknown heads"):
        MultiTaskCriterion({"audio": crit.criteria["region"]})


def test_build_heads_keys_groups_and_lazy_mask(monkeypatch):
    cfg = HeadsConfig(temporal=TEMPORAL, region=None, mask=MaskHeadConfig())
    calls = []

    class StandInMask(nn.Linear):
        def criterion(self):
            return StandInMaskCriterion()

    def from_config(mcfg, d_llm, d_vision):
        calls.append((mcfg.heads.mask, d_llm))
        return StandInMask(d_llm, 2)

    monkeypatch.setattr(registry.get("mask"), "from_config", from_config)
    heads = build_heads(ModelConfig(heads=cfg), D_LLM, D_V)
    assert list(heads) == ["temporal", "mask"] and calls == [(cfg.mask, D_LLM)]
    assert set(heads["temporal"].trainable_groups()) == {"temporal_head"}
    crit = build_criterion(heads, ModelConfig(heads=cfg))
    assert set(crit.criteria) == {"temporal", "mask"}
    assert crit.criteria["temporal"].weight_dict["loss_span"] == TEMPORAL.span_l1
    npz = HeadsConfig(
        temporal=TemporalHeadConfig(hidden=16, num_heads=2, feat_dim=5), region=None, mask=None
    )
    built = build_heads(ModelConfig(heads=npz), D_LLM, D_V)
    assert built["temporal"].feat_proj[-1].in_features == 5


def test_no_mask_head_never_imports_sam2():
    code = (
        "import sys\n"
        "from tpo.config.heads import HeadsConfig, RegionHeadConfig, TemporalHeadConfig\n"
        "from tpo.config.schema import ModelConfig\n"
        "from tpo.heads.build import build_criterion, build_heads\n"
        "cfg = ModelConfig(heads=HeadsConfig(temporal=TemporalHeadConfig(hidden=16, num_heads=2),\n"
        "                  region=RegionHeadConfig(hidden=8), mask=None))\n"
        "heads = build_heads(cfg, 16, 8)\n"
        "assert set(heads) == {'temporal', 'region'}\n"
        "build_criterion(heads, cfg)\n"
        "assert 'sam2' not in sys.modules  # the registry lists MaskHead; only building imports sam2\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_task_weights_name_registered_heads_and_are_finite():
    """The config checks the values; the criterion checks the names against the registry, so a
    registered head may be weighted and an unknown name is an error naming the known heads."""
    with pytest.raises(ValueError, match="expected finite weights >= 0"):
        HeadsConfig(task_weights={"region": -1.0})
    with pytest.raises(ValueError, match=r"task_weights: unknown heads \['audio'\]"):
        _setup(task_weights={"audio": 2.0})
    criteria = {"region": _setup()[1].criteria["region"]}
    names = (*registry.names(), "audio")
    crit = MultiTaskCriterion(criteria, {"audio": 3.0}, names=names)
    assert crit.weight == {"region": 1.0, "audio": 3.0}
