"""Trainable groups and their optimizer groups: `train.lr_groups` is checked against them."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from tpo.train.groups import optimizer_groups, select_trainable


class TwoGroups(nn.Module):
    """A module declaring `a` (a linear layer) and `b` (a bias-only norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.LayerNorm(2)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"a": list(self.a.parameters()), "b": list(self.b.parameters())}


def test_lr_groups_set_the_lr_of_their_group_and_decay_skips_1d_tensors():
    chosen = select_trainable(TwoGroups(), ["a", "b"])
    groups = optimizer_groups(chosen, 1e-3, 0.1, {"b": 10.0}, {"a": 5e-4})
    got = [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
    assert got == [("a", 5e-4, 0.1, 1), ("a", 5e-4, 0.0, 1), ("b", 1e-2, 0.0, 2)]
    torch.optim.AdamW(groups)  # a valid optimizer spec


def test_unknown_lr_group_is_an_error_naming_it_and_the_known_groups(caplog):
    chosen = select_trainable(TwoGroups(), ["a"])
    with pytest.raises(
        ValueError, match=r"unknown group\(s\) \['lora_'\]; this run trains \['a'\]"
    ):
        optimizer_groups(chosen, 1e-3, 0.0, lr_override={"lora_": 1e-4})
    with pytest.raises(ValueError, match=r"the stages declare \[.*'connector_proj'.*'lora'"):
        optimizer_groups(chosen, 1e-3, 0.0, lr_override={"lora_": 1e-4})
    # a group some stage trains (an optional group switched off here, a head left out of the
    # config) keeps its lr in a shared YAML: logged, no effect on this run's groups
    with caplog.at_level(logging.INFO, logger="tpo.train.groups"):
        groups = optimizer_groups(chosen, 1e-3, 0.0, lr_override={"llm": 1e-4, "mask_head": 1.0})
    assert {g["name"]: g["lr"] for g in groups} == {"a": 1e-3}
    assert "['llm', 'mask_head']: not trained in this run" in caplog.text
    with pytest.raises(ValueError, match=r"train.lr_groups.a: expected a positive lr, got 'x'"):
        optimizer_groups(chosen, 1e-3, 0.0, lr_override={"a": "x"})
    with pytest.raises(ValueError, match="positive lr, got 0"):
        optimizer_groups(chosen, 1e-3, 0.0, lr_override={"a": 0})
