"""The assembled TPOModel: head losses reach the content-token queries and the LoRA weights."""

from pathlib import Path

import pytest
import torch
from helpers.toy_manifest import toy_manifest

from tpo.config import TPOConfig, load_config
from tpo.model.alignment import VideoTextAlignment
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
        [ROOT / "configs" / "tiny" / "stage3.yaml"],
        [f"data.manifest={manifest}", "train.micro_batch=6"],
    )
    model = build_train_model(cfg, get_stage(3))
    data = build_train_data(cfg, get_stage(3), DistInfo(0, 1, 0, "cpu"))
    return model, data


def _batch_with_all_heads(data):
    for k in range(50):
        batch = next(data.iterate(k))
        heads = {h for t in batch.targets for h in t}
        if heads == {"temporal", "region", "mask"}:
            return batch
    pytest.fail("no micro-batch with all three heads in 50 draws")


def test_head_losses_reach_queries_and_lora(setup):
    model, data = setup
    batch = _batch_with_all_heads(data)
    model.lm_weight = 0.0  # head losses only: every gradient below comes through the heads
    groups = model.trainable_groups()
    for p in model.parameters():
        p.requires_grad_(False)
    for g in ("lora", "task_tokens", "temporal_head", "region_head", "mask_head"):
        for p in groups[g]:
            p.requires_grad_(True)
    model.zero_grad()
    out = model(batch)
    for head in ("temporal", "region", "mask"):
        assert float(out[f"loss/{head}/weighted"]) > 0, head
    out["loss"].backward()

    def grad_norm(params):
        return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)

    assert grad_norm(groups["lora"]) > 0
    content = model.mllm.task_tokens.content  # [3, d]: <temp> <boxes> <tracking>
    assert bool((content.grad.abs().sum(1) > 0).all()), "each content token's query learns"
    for g in ("temporal_head", "region_head", "mask_head"):
        assert grad_norm(groups[g]) > 0, g
    frozen = [p for p in groups["vision"] if p.grad is not None and p.grad.abs().sum() > 0]
    assert not frozen
    model.lm_weight = 1.0


def test_lm_only_batch_gives_lm_loss_and_zero_head_losses(setup):
    model, data = setup
    batch = next(data.iterate(0))
    batch.targets = [{} for _ in batch.targets]  # no head targets: only the LM learns
    out = model(batch)
    assert torch.isclose(out["loss"], out["loss/lm"] * model.lm_weight, atol=1e-5)
    assert float(out["loss/temporal/weighted"]) == 0.0


def test_alignment_loss_trains_the_connector_and_leaves_the_word_embeddings(setup):
    model, data = setup
    model.alignment = VideoTextAlignment(model.mllm.task_tokens.ids.all)
    model.align_weight = 0.5
    batch = next(data.iterate(0))
    # give every row a different worded answer (its last two prompt tokens), no task tokens
    labels = torch.full_like(batch.labels, -100)
    for i in range(len(batch)):
        pos = (batch.attention_mask[i] > 0).nonzero()[-3:-1, 0]
        labels[i, pos] = torch.tensor([1000 + i, 2000 + i])
    batch.labels = labels
    for p in model.parameters():
        p.requires_grad_(False)
    connector = model.trainable_groups()["connector"]
    embeddings = model.mllm.llm.input_embeddings().weight
    for p in [*connector, embeddings]:
        p.requires_grad_(True)
    model.zero_grad()
    model.lm_weight, model.head_losses = 0.0, False
    out = model(batch)
    assert float(out["loss/align"]) > 0
    assert torch.isclose(out["loss"], out["loss/align"] * model.align_weight, atol=1e-5)
    out["loss"].backward()
    assert sum(float(p.grad.abs().sum()) for p in connector if p.grad is not None) > 0
    assert embeddings.grad is None or float(embeddings.grad.abs().sum()) == 0
    model.lm_weight, model.head_losses = 1.0, True
    model.alignment, model.align_weight = None, 0.0
