"""`tpo convert videochat-tpo` and `tpo export --format videochat-tpo`: the official reduced
folder converts into a folder `build_model` fits exactly and that exports back bit for bit;
the full-size release's 2,594 names and shapes convert on the meta device."""

import json
from pathlib import Path

import pytest
import torch
from helpers.release_shapes import meta_device, release_specs
from helpers.sam2_yaml import sam2_on_meta
from safetensors import safe_open

from tpo.cli import main
from tpo.config import TPOConfig, load_saved_config
from tpo.heads import official_layout as layout
from tpo.heads.build import build_model
from tpo.heads.registry import task_pairs
from tpo.infer.convert import (
    OfficialSource,
    check_against_model,
    converted_config,
    plan_conversion,
)
from tpo.infer.official_config import OFFICIAL_MODES

SIDE = ("llm_config.json", "qformer_config.json", "sam2.yaml", "cgdetr_config.json")
FLAGS = ("--llm-config", "--qformer-config", "--sam2-config", "--cgdetr-config")


def convert_args(src: Path, out: Path) -> list[str]:
    """The command line converting the reduced folder with its side configs."""
    args = ["convert", "videochat-tpo", str(src), "--out", str(out)]
    for flag, name in zip(FLAGS, SIDE):
        args += [flag, str(src / name)]
    return args


@pytest.fixture(scope="module")
def converted(converted_reduced) -> Path:
    """The reduced folder converted with `convert_args` (the session's `converted_reduced`)."""
    return converted_reduced


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(file), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_converted_folder_fits_build_model(converted, parity_reference):
    cfg = load_saved_config(TPOConfig, converted / "config.yaml")
    assert cfg.model.llm.tokenizer == str((converted / "tokenizer").resolve())
    assert cfg.model.heads.mask.sam2_config == str((converted / "sam2.yaml").resolve())
    assert cfg.model.heads.mask.image_size == 256
    temporal = cfg.model.heads.temporal  # CG-DETR at the sizes of its tensors and side config
    assert temporal.kind == "cgdetr" and temporal.cgdetr.hidden == 32 and temporal.cgdetr.ffn == 64
    assert (temporal.cgdetr.v_feat_dim, temporal.cgdetr.video_feature_dim) == (34, 32)
    assert temporal.cgdetr.t_feat_dim == 64 and temporal.cgdetr.eos_coef == 0.1
    assert cfg.model.llm.arch["vocab_size"] == 32007 and cfg.model.connector.vocab_size == 101
    model = build_model(cfg.model)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert got == want
    # the task vectors fill the content rows of their heads; the embedding's task rows the delta
    src = _tensors(parity_reference / "official-reduced" / "model.safetensors")
    out = _tensors(converted / "model.safetensors")
    contents = [p.content for p in task_pairs()]
    for name, token in layout.CONTENT_VECTORS.items():
        assert torch.equal(out[layout.CONTENT][contents.index(token)], src[name].reshape(-1))
    assert torch.equal(out[layout.EMBED_DELTA], src[layout.EMBED][32000:32007])
    cg = {k: v for k, v in src.items() if k.startswith("cg_model.")}
    assert len(cg) == 285
    assert all(torch.equal(out[layout.to_tpo(k)], v) for k, v in cg.items())
    kept = _tensors(converted / "unmapped.safetensors")
    assert len(kept) == 17 and all(torch.equal(v, src[k]) for k, v in kept.items())
    # 3 vectors -> 1 content; + the delta; cg_criterion.empty_weight -> eos_coef
    assert len(out) + len(kept) == len(src) - 3 + 1 + 1 - 1


def test_round_trip_is_bit_identical(converted, parity_reference, tmp_path, capsys):
    out = tmp_path / "official"
    assert main(["export", str(converted), "--format", "videochat-tpo", "--out", str(out)]) == 0
    src = parity_reference / "official-reduced"
    a, b = _tensors(src / "model.safetensors"), _tensors(out / "model.safetensors")
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(-1).view(torch.uint8), b[name].view(-1).view(torch.uint8))
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "added_tokens.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_a_folder_of_an_older_converter_is_a_clear_error(converted, tmp_path):
    from tpo.train.export_official import read_layout

    old = tmp_path / "old"
    old.mkdir()
    record = json.loads((converted / "official.json").read_text())
    del record["criterion_weight"]  # before CG-DETR was mapped
    (old / "official.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="convert the release again"):
        read_layout(old)


def test_official_modes_are_recorded(converted):
    record = json.loads((converted / "official.json").read_text())
    cfg = load_saved_config(TPOConfig, converted / "config.yaml")
    for key, value in OFFICIAL_MODES.items():  # set where the config has the field, else pending
        *parents, leaf = key.split(".")
        holder = cfg
        for part in parents:
            holder = getattr(holder, part)
        assert getattr(holder, leaf, None) == value or key in record["modes_pending"]
    assert record["cgdetr"]["hidden_dim"] == 32 and record["cgdetr"]["nheads"] == 8


def test_unknown_or_missing_tensors_are_errors(parity_reference):
    source = OfficialSource(parity_reference / "official-reduced")
    contents = [p.content for p in task_pairs()]
    specs = dict(source.specs)
    specs["extra_head.weight"] = (torch.float32, (4, 4))
    with pytest.raises(ValueError, match="extra_head.weight"):
        plan_conversion(specs, contents, list(range(32000, 32007)), torch.float32)
    specs = {k: v for k, v in source.specs.items() if k != "box_token"}
    with pytest.raises(ValueError, match="box_token"):
        plan_conversion(specs, contents, list(range(32000, 32007)), torch.float32)
    config = json.loads((parity_reference / "official-reduced" / "config.json").read_text())
    specs = {k: v for k, v in source.specs.items() if not k.startswith("loc_decoder.")}
    with pytest.raises(ValueError, match="loc_decoder.0.weight"):
        converted_config(config, specs)
    side = json.loads((parity_reference / "official-reduced" / "llm_config.json").read_text())
    with pytest.raises(ValueError, match="hidden_size is 128"):
        converted_config(config, source.specs, llm_side={**side, "hidden_size": 128})
    # a tensor the built model needs but the checkpoint lacks: named by its official name
    lost = "lm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    specs = {k: v for k, v in source.specs.items() if k != lost}
    qformer = json.loads(
        (parity_reference / "official-reduced" / "qformer_config.json").read_text()
    )
    cfg, _ = converted_config(
        config,
        specs,
        llm_side=side,
        qformer_side=qformer,
        tokenizer=str(parity_reference / "official-reduced"),
    )
    plan = plan_conversion(specs, contents, list(range(32000, 32007)), torch.float32)
    with pytest.raises(ValueError, match=lost.replace(".", r"\.")):
        check_against_model(plan, cfg.model, where="test")


def test_full_size_release_converts_on_meta(parity_reference):
    shared = parity_reference.parent
    names = list(
        json.loads((shared / "videochat-tpo.safetensors.index.json").read_text())["weight_map"]
    )
    assert len(names) == 2594
    reduced = OfficialSource(parity_reference / "official-reduced").specs
    specs = release_specs(names, {k: s for k, (_, s) in reduced.items()})
    config = json.loads((shared / "videochat-tpo.config.json").read_text())
    tokenizer = str(parity_reference / "official-reduced")  # the release's tokenizer files
    cfg, _ = converted_config(config, specs, tokenizer=tokenizer)
    assert cfg.model.llm.arch["vocab_size"] == 32007 and cfg.model.vision.depth == 24
    assert cfg.model.connector.vocab_size == 30523 and cfg.model.heads.region.hidden == 2048
    contents = [p.content for p in task_pairs()]
    plan = plan_conversion(specs, contents, list(range(32000, 32007)), torch.bfloat16)
    assert len(plan.kept) == 17
    cg = cfg.model.heads.temporal.cgdetr  # the release's CG-DETR, read off its tensors
    assert (cg.hidden, cg.ffn, cg.num_queries, cg.num_dummies) == (256, 1024, 10, 45)
    assert (cg.v_feat_dim, cg.video_feature_dim, cg.t_feat_dim) == (770, 768, 4096)
    import sam2

    mask = cfg.model.heads.mask
    mask.sam2_config = str(Path(sam2.__file__).parent / "configs/sam2/sam2_hiera_l.yaml")
    with sam2_on_meta(), meta_device():
        model = build_model(cfg.model)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {name: tuple(shape) for name, _, shape in plan.specs}
    assert got == want
    assert len(names) - len(plan.kept) == 2577  # mapped, cg_criterion.empty_weight included
    # 3 vectors -> 1 content; the embed -> base + delta; the criterion weight -> config
    assert len(got) == 2577 - 3 + 1 + 1 - 1


def test_sharded_release_round_trips(parity_reference, tmp_path):
    """The release layout (index + shards): converted and exported back shard by shard."""
    from safetensors.torch import save_file

    src = parity_reference / "official-reduced"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tensors = _tensors(src / "model.safetensors")
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    weight_map = {n: f for f, part in shards.items() for n in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (sharded / layout.INDEX_FILE).write_text(json.dumps(index))
    for name in (*SIDE, "config.json", "tokenizer.model", "tokenizer_config.json"):
        (sharded / name).write_bytes((src / name).read_bytes())
    out, back = tmp_path / "converted", tmp_path / "back"
    assert main(convert_args(sharded, out)) == 0
    assert main(["export", str(out), "--format", "videochat-tpo", "--out", str(back)]) == 0
    again = json.loads((back / layout.INDEX_FILE).read_text())
    assert again["weight_map"] == weight_map and again["metadata"]["total_size"] == total
    for file, part in shards.items():
        got = _tensors(back / file)
        assert sorted(got) == sorted(part)
        assert all(torch.equal(got[n], tensors[n]) for n in part)


def test_dtype_casts_floats_only(parity_reference):
    """--dtype bf16: every float tensor is written in bf16; integer tensors keep their dtype."""
    source = OfficialSource(parity_reference / "official-reduced")
    contents = [p.content for p in task_pairs()]
    plan = plan_conversion(source.specs, contents, list(range(32000, 32007)), torch.bfloat16)
    assert {d for _, d, _ in plan.specs} == {torch.bfloat16}
    assert source.specs["qformer.bert.embeddings.position_ids"][0] == torch.int64
    assert "qformer.bert.embeddings.position_ids" in plan.kept  # kept as it is (int64)
