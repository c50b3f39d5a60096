"""Mask head (SAM2 hiera-t, 256 px, random weights, CPU): prompts, hand-computed losses,
gradients, frozen parts, feature cache, overfitting a toy video, propagation, building."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tpo.config.heads import MaskHeadConfig
from tpo.heads.criterion import weighted_sum
from tpo.heads.mask import MaskOutput, build_mask_criterion, build_mask_head
from tpo.heads.mask_criterion import MaskCriterion, gt_box
from tpo.heads.sam2_backend import FeatureCache

pytestmark = pytest.mark.usefixtures("one_thread")  # SAM2 runs fastest single-threaded

D_LLM = 32
TINY = MaskHeadConfig(
    sam2_config="configs/sam2.1/sam2.1_hiera_t.yaml",
    image_size=256,
    prompt_hidden=64,
    dense_prompt=True,
    box_embed_l1=1.0,
)
T, H, W = 3, 64, 80  # toy video: a red square moving right and down on blue


def toy_video() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames `[T, 3, H, W]` uint8 and their ground-truth masks `[T, H, W]` bool."""
    frames = torch.zeros(T, 3, H, W, dtype=torch.uint8)
    frames[:, 2] = 60
    masks = torch.zeros(T, H, W, dtype=torch.bool)
    for t in range(T):
        x, y = 8 + 16 * t, 10 + 8 * t
        frames[t, 0, y : y + 20, x : x + 20] = 230
        frames[t, 1, y : y + 20, x : x + 20] = 40
        frames[t, 2, y : y + 20, x : x + 20] = 0
        masks[t, y : y + 20, x : x + 20] = True
    return frames, masks


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return build_mask_head(TINY, D_LLM)


@pytest.fixture(scope="module")
def trained(head):
    """The head after overfitting the toy video with one fixed query: (head, query, losses)."""
    torch.manual_seed(1)
    frames, masks = toy_video()
    crit = build_mask_criterion(TINY)
    query = torch.randn(1, D_LLM)
    opt = torch.optim.AdamW(head.trainable_groups()["mask_head"], lr=1e-3, weight_decay=0.0)
    head.train()
    losses = []
    for _ in range(8):
        out = head(query, [frames], ["toy"], [list(range(T))])
        loss = weighted_sum(crit(out, [{"masks": masks}]), crit.weight_dict)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    return head, query, losses


def test_import_builds_nothing():
    code = (
        "import sys, tpo.heads.mask, tpo.heads.tracking\n"
        "from hydra.core.global_hydra import GlobalHydra\n"
        "assert 'sam2' not in sys.modules, 'sam2 imported'\n"
        "assert not GlobalHydra.instance().is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_prompt_shapes(head):
    sparse, dense = head.prompt(torch.randn(5, D_LLM))
    assert sparse.shape == (5, 3, 256)
    assert dense.shape == (5, 256, 16, 16)  # 256 px / 16
    # the dense projection starts at zero: the dense prompt is SAM2's no-mask embedding
    assert torch.equal(dense, head.backend.no_mask_dense(5))
    with pytest.raises(ValueError, match=r"query must be \[n, 32\]"):
        head.prompt(torch.randn(5, 7))


def test_criterion_equals_hand_computed():
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    l1 = [[[2.0, -1.0], [0.5, -3.0]], [[1.0, 1.0], [-2.0, 0.0]]]  # token 0: 2 frames of 2x2
    g1 = [[[1, 0], [1, 0]], [[0, 1], [0, 0]]]
    l2 = [[[-0.5, 4.0], [3.0, -1.5]]]  # token 1: 1 frame
    g2 = [[[0, 1], [1, 1]]]
    out = MaskOutput(logits=[torch.tensor(l1), torch.tensor(l2)], sparse=torch.zeros(2, 3, 256))
    targets = [{"masks": torch.tensor(g1).bool()}, {"masks": torch.tensor(g2).bool()}]
    bces, dices = [], []
    for logits, gts in zip(l1 + l2, g1 + g2):
        zs, gs = sum(logits, []), sum(gts, [])
        ps = [sig(z) for z in zs]
        bces.append(-sum(g * math.log(p) + (1 - g) * math.log(1 - p) for p, g in zip(ps, gs)) / 4)
        num = 2 * sum(p / 1000 * g for p, g in zip(ps, gs))
        den = sum(p / 1000 for p in ps) + sum(g / 1000 for g in gs)
        dices.append(1 - (num + 1e-6) / (den + 1e-6))
    crit = MaskCriterion(bce=2.0, dice=0.5)
    losses = crit(out, targets)
    assert set(losses) == {"loss_mask_bce", "loss_mask_dice"}
    assert losses["loss_mask_bce"].item() == pytest.approx(sum(bces) / 3, rel=1e-5)
    assert losses["loss_mask_dice"].item() == pytest.approx(sum(dices) / 3, rel=1e-5)
    assert weighted_sum(losses, crit.weight_dict).item() == pytest.approx(
        2.0 * sum(bces) / 3 + 0.5 * sum(dices) / 3, rel=1e-5
    )


def test_criterion_upsamples_to_ground_truth():
    # a constant 2x2 logit map upsampled to 6x4 stays constant: BCE by hand on 24 pixels
    gt = torch.zeros(1, 6, 4, dtype=torch.bool)
    gt[0, :3] = True  # 12 foreground pixels
    out = MaskOutput(logits=[torch.full((1, 2, 2), 0.7)], sparse=torch.zeros(1, 3, 256))
    p = 1 / (1 + math.exp(-0.7))
    expected = -(12 * math.log(p) + 12 * math.log(1 - p)) / 24
    got = MaskCriterion()(out, [{"masks": gt}])["loss_mask_bce"].item()
    assert got == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"mask target 0: 'masks' must be bool \[k=1, H, W\]"):
        MaskCriterion()(out, [{"masks": torch.zeros(2, 6, 4, dtype=torch.bool)}])


def test_box_embedding_and_l1(head):
    sam = head.backend.sam
    box = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    emb = head.backend.box_embedding(box)
    assert emb.shape == (1, 3, 256)
    with torch.no_grad():  # SAM2's own box path: 2 corner tokens in pixels of the 256 px input
        corners, _ = sam.sam_prompt_encoder(points=None, boxes=box * 256, masks=None)
    assert torch.allclose(emb[:, :2], corners, atol=1e-5)
    assert torch.allclose(emb[0, 2], sam.sam_prompt_encoder.not_a_point_embed.weight[0])
    # ground-truth box: the first non-empty mask's tight box, normalised (edges, x2 exclusive)
    masks = torch.zeros(2, 8, 10, dtype=torch.bool)
    masks[1, 2:6, 5:10] = True
    assert gt_box({}, masks).tolist() == pytest.approx([0.5, 0.25, 1.0, 0.75])
    target_box = gt_box({}, masks)[None]
    crit = MaskCriterion(bce=2.0, dice=0.5, box_embed_l1=1.0)
    logits = [torch.zeros(2, 4, 5)]
    target = head.backend.box_embedding(target_box)
    for shift in (0.0, 0.5):
        out = MaskOutput(logits, target + shift, embed_box=head.backend.box_embedding)
        got = crit(out, [{"masks": masks}])["loss_box_embed"].item()
        assert got == pytest.approx(shift, abs=1e-6)


def test_gradients_reach_query_and_prompt_mlp_not_encoder(head):
    frames, masks = toy_video()
    query = torch.randn(2, D_LLM, requires_grad=True)
    head.zero_grad(set_to_none=True)
    head.train()
    out = head(query, [frames[:2], frames[2:3]], ["g0", "g1"])
    assert [tuple(x.shape) for x in out.logits] == [(2, 64, 64), (1, 64, 64)]
    crit = build_mask_criterion(TINY)
    losses = crit(out, [{"masks": masks[:2]}, {"masks": masks[2:3]}])
    weighted_sum(losses, crit.weight_dict).backward()
    head.eval()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.prompt_mlp.parameters())
    assert head.dense_proj.weight.grad.abs().sum() > 0
    decoder = head.backend.sam.sam_mask_decoder
    assert decoder.conv_s0.weight.grad.abs().sum() > 0  # the cached features' projection trains
    assert decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0
    sam = head.backend.sam
    for frozen in (
        sam.image_encoder,
        sam.memory_attention,
        sam.memory_encoder,
        sam.sam_prompt_encoder,
    ):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    group = {id(p) for p in head.trainable_groups()["mask_head"]}
    assert {id(p) for p in decoder.parameters()} <= group
    assert not {id(p) for p in sam.image_encoder.parameters()} & group


def test_frozen_decoder_gets_no_grad():
    cfg = MaskHeadConfig(
        sam2_config=TINY.sam2_config, image_size=256, prompt_hidden=64, train_decoder=False
    )
    frozen = build_mask_head(cfg, D_LLM)  # a second build in this process
    frames, masks = toy_video()
    frozen.train()
    assert not frozen.backend.sam.sam_mask_decoder.training
    assert not frozen.backend.sam.image_encoder.training
    out = frozen(torch.randn(1, D_LLM), [frames[:1]])
    crit = build_mask_criterion(cfg)
    weighted_sum(crit(out, [{"masks": masks[:1]}]), crit.weight_dict).backward()
    assert all(p.grad is None for p in frozen.backend.sam.parameters())
    assert all(p.grad is not None for p in frozen.prompt_mlp.parameters())
    assert len(frozen.trainable_groups()["mask_head"]) == 4  # two linear layers


def test_feature_cache_avoids_recomputation(head):
    frames, _ = toy_video()
    backend = head.backend
    backend.cache.clear()
    query = torch.randn(1, D_LLM)
    with torch.no_grad():
        calls = backend.encoder_calls
        first = head(query, [frames[:2]], ["cache_vid"], [[0, 1]]).logits[0]
        assert backend.encoder_calls - calls == 2
        again = head(query, [frames[1:3]], ["cache_vid"], [[1, 2]]).logits[0]
        assert backend.encoder_calls - calls == 3  # only frame 2 is new
        assert backend.cache.hits == 1
        assert torch.allclose(again[0], first[1], atol=1e-5)
        head(query, [frames[2:3]], ["cache_vid"])  # keyed by pixels: computed once, then hit
        head(query, [frames[2:3].clone()], ["cache_vid"])
        assert backend.encoder_calls - calls == 4
    lru = FeatureCache(max_items=2)
    for key in "abc":
        lru.put(key, (torch.zeros(1),))
    assert len(lru) == 2 and lru.get("a") is None and lru.get("c") is not None


def test_head_overfits_toy_video(trained):
    head, query, losses = trained
    assert losses[-1] < 0.5 * losses[0], losses
    frames, masks = toy_video()
    with torch.no_grad():
        logits = head(query, [frames], ["toy"], [list(range(T))]).logits[0]
    pred = F.interpolate(logits[:, None], size=(H, W), mode="bilinear")[:, 0] > 0
    assert all(iou(pred[t], masks[t]) > 0.6 for t in range(T))


@pytest.mark.parametrize("prompt_frame", [0, 1])
def test_propagation_one_bool_mask_per_frame(trained, prompt_frame):
    head, query, _ = trained
    frames, masks = toy_video()
    # frame 0: the <tracking> query; frame 1 (propagates backward too): a sparse prompt
    prompt = query[0] if prompt_frame == 0 else head.prompt(query)[0][0].detach()
    out = head.propagate(prompt, frames, prompt_frame=prompt_frame)
    assert out.shape == (T, H, W) and out.dtype == torch.bool
    # the prompted frame's mask is the one decoded from the learnt prompt (seeded, not tracked)
    assert iou(out[prompt_frame], masks[prompt_frame]) > 0.6


def test_bad_build_inputs(tmp_path):
    with pytest.raises(ValueError, match="mask.sam2_config"):
        build_mask_head(MaskHeadConfig(sam2_config="configs/none.yaml", image_size=256), D_LLM)
    with pytest.raises(FileNotFoundError, match="mask.checkpoint"):
        build_mask_head(MaskHeadConfig(TINY.sam2_config, str(tmp_path / "missing.pt"), 256), D_LLM)
    with pytest.raises(ValueError, match="prompt_tokens 3"):
        MaskHeadConfig(prompt_tokens=2, box_embed_l1=1.0)


def test_building_restores_foreign_hydra_state(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    (tmp_path / "mine.yaml").write_text("a: 1\n")
    backup = get_gh_backup()  # importing sam2 initialised Hydra on its own configs
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(tmp_path), version_base="1.2"):
            build_mask_head(MaskHeadConfig(TINY.sam2_config, None, 256, prompt_hidden=8), D_LLM)
            assert compose(config_name="mine").a == 1  # the foreign config search path is back
    finally:
        restore_gh_from_backup(backup)


def test_bf16_cast_keeps_frozen_sam2_in_fp32():
    bf16 = build_mask_head(TINY, D_LLM).to(torch.bfloat16)
    for p in bf16.parameters():  # DeepSpeed's bf16 mode casts parameters in place like this
        p.data = p.data.to(torch.bfloat16)
    frames, masks = toy_video()
    query = torch.randn(1, D_LLM, dtype=torch.bfloat16, requires_grad=True)
    bf16.train()
    out = bf16(query, [frames[:1]])
    crit = build_mask_criterion(TINY)
    weighted_sum(crit(out, [{"masks": masks[:1]}]), crit.weight_dict).backward()
    sam = bf16.backend.sam
    assert query.grad.abs().sum() > 0
    assert sam.sam_mask_decoder.iou_token.weight.dtype == torch.bfloat16  # trainable: as cast
    assert all(p.dtype == torch.float32 for p in sam.image_encoder.parameters())
    masks_out = bf16.propagate(query[0].detach(), frames[:2])
    assert masks_out.shape == (2, H, W)
    assert sam.sam_mask_decoder.iou_token.weight.dtype == torch.bfloat16  # put back after
