"""The CG-DETR temporal head trains inside the assembled model (`configs/tiny/cgdetr`): on tpo's
own features (vision encoder clips, the LLM's query embeddings) its losses reach the head and
the `<temp>` query, and a few optimiser steps on one batch lower them."""

from pathlib import Path

import pytest
import torch
from helpers.toy_manifest import toy_manifest

from tpo.config import TPOConfig, load_config
from tpo.heads.cgdetr import CGDETRHead
from tpo.stages import get_stage
from tpo.train.builders import build_train_model
from tpo.train.data import build_train_data
from tpo.train.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tpo.data.toyworld import generate_toyworld

    world = tmp_path_factory.mktemp("world")
    generate_toyworld(world, 4, seed=5, workers=1)
    manifest = toy_manifest(world, 2, world / "m.yaml")
    cfg = load_config(
        TPOConfig,
        [ROOT / "configs" / "tiny" / "cgdetr" / "stage2.yaml"],
        [f"data.manifest={manifest}", "train.micro_batch=4", "train.stage=2"],
    )
    model = build_train_model(cfg, get_stage(2))
    data = build_train_data(cfg, get_stage(2), DistInfo(0, 1, 0, "cpu"))
    for k in range(50):
        batch = next(data.iterate(k))
        if sum("temporal" in t for t in batch.targets) >= 2:
            return model, batch
    pytest.fail("no micro-batch with two temporal questions in 50 draws")


def _only(model, groups: tuple[str, ...]) -> None:
    trainable = model.trainable_groups()
    for p in model.parameters():
        p.requires_grad_(False)
    for g in groups:
        for p in trainable[g]:
            p.requires_grad_(True)


def test_losses_reach_the_head_and_the_temp_query(setup):
    model, batch = setup
    assert isinstance(model.heads["temporal"], CGDETRHead)
    _only(model, ("temporal_head", "task_tokens"))
    model.lm_weight = 0.0
    model.zero_grad()
    out = model(batch)
    names = [k for k in out if k.startswith("loss/temporal/")]
    for term in ("span", "giou", "label", "saliency"):  # the release's loss names
        assert f"loss/temporal/loss_{term}" in names, (term, names)
    out["loss"].backward()
    net = model.heads["temporal"].net
    for part in ("class_embed", "span_embed", "saliency_clip", "vid_proj", "txt_proj", "t2v"):
        grads = [p.grad for p in getattr(net, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    content = model.mllm.task_tokens.content  # row 0: <temp>
    assert float(content.grad[0].abs().sum()) > 0
    model.lm_weight = 1.0


def test_a_few_steps_lower_the_temporal_loss(setup):
    model, batch = setup
    _only(model, ("temporal_head",))
    model.lm_weight = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    state = {id(p): p.detach().clone() for p in params}
    losses = []
    torch.manual_seed(0)
    for _ in range(6):
        opt.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss))
    print("cgdetr temporal loss:", [round(x, 2) for x in losses])
    assert losses[-1] < 0.7 * losses[0], losses
    with torch.no_grad():  # leave the module's model as it was
        for p in params:
            p.copy_(state[id(p)])
    model.lm_weight = 1.0
