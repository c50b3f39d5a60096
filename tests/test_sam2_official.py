"""SAM2 as the official release runs it, against what the official code computed on the reduced
checkpoint (`official-reduced/sam2.yaml` + the `sam.*`/`track_embed.*` tensors): frame
preparation, image-encoder FPN levels, mask-decoder inputs/outputs, the embedding-prompted frame
and every propagated frame. Run with `-s` to see the max abs difference per stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tpo.config.heads import MaskHeadConfig
from tpo.heads.mask import MaskHead, build_mask_head
from tpo.heads.sam2_video import to_sam_input

pytestmark = pytest.mark.usefixtures("one_thread")  # SAM2 runs fastest single-threaded

FP32 = 1e-4  # the parity README's fp32 tolerance
IOU = 0.99


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def described(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """`expected/<name>.safetensors`, checked against the shapes its `.json` describes."""
    tensors = load_file(folder / f"{name}.safetensors")
    meta = json.loads((folder / f"{name}.json").read_text())["tensors"]
    for key, (shape, *_rest) in meta.items():
        assert list(tensors[key].shape) == shape, key
    return tensors


def head_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The mask head's tensors of an official checkpoint under the head's names: `sam.*` ->
    `backend.sam.*`, `track_embed.layers.{0,1}` -> `prompt_mlp.{0,2}` (weight-map.md)."""
    out = {}
    for key, value in load_file(checkpoint).items():
        if key.startswith("sam."):
            out["backend." + key] = value
        elif key.startswith("track_embed.layers."):
            layer, rest = key.removeprefix("track_embed.layers.").split(".", 1)
            out[f"prompt_mlp.{2 * int(layer)}.{rest}"] = value
    return out


@pytest.fixture(scope="module")
def ref(parity_reference: Path) -> dict:
    exp = parity_reference / "expected"
    return {
        "sam2": described(exp, "sam2"),
        "heads": described(exp, "heads"),
        "generate": described(exp, "generate"),
        "raw": described(exp, "vision")["in.raw_frames_uint8"],
        "yaml": parity_reference / "official-reduced" / "sam2.yaml",
        "ckpt": parity_reference / "official-reduced" / "model.safetensors",
    }


@pytest.fixture(scope="module")
def official(ref: dict) -> MaskHead:
    """The head built from the YAML with random SAM2 weights, then given the official tensors
    as a state dict (as the converter loads them), strictly."""
    d_llm = ref["generate"]["mask.prompt_token"].shape[-1]
    cfg = MaskHeadConfig(sam2_config=str(ref["yaml"]), train_decoder=False, propagation="embedding")
    head = build_mask_head(cfg, d_llm)
    head.load_state_dict(head_tensors(ref["ckpt"]), strict=True)
    return head.eval()


def test_frames_and_image_encoder_stages(official: MaskHead, ref: dict):
    exp, raw = ref["sam2"], ref["raw"]
    backend = official.backend
    assert backend.image_size == exp["in.frames"].shape[-1]  # from the YAML
    diffs = {"in.frames": (to_sam_input(raw, backend.image_size) - exp["in.frames"][0]).abs()}
    levels = backend._encode(raw[:1])[0]
    for i, level in enumerate(levels):
        diffs[f"stage.backbone_fpn_{i}"] = (level - exp[f"stage.backbone_fpn_{i}"][0]).abs()
    feats = backend.image_features(raw[:1])
    sparse = exp["in.sparse_prompt"]
    dense = backend.no_mask_dense(1)
    pe = backend.sam.sam_prompt_encoder.get_dense_pe()
    inputs = {
        "image_embeddings": feats.embed,
        "image_pe": pe,
        "sparse": sparse,
        "dense": dense,
        "high_res_0": feats.high_res[0],
        "high_res_1": feats.high_res[1],
    }
    for name, value in inputs.items():
        diffs[f"stage.decoder_in_{name}"] = (value - exp[f"stage.decoder_in_{name}"]).abs()
    with torch.no_grad():
        masks, ious, _, obj = backend.sam.sam_mask_decoder(
            image_embeddings=feats.embed,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=feats.high_res,
        )
        low = backend.decode(sparse, feats)
    outputs = {"masks": masks, "ious": ious, "object_score_logits": obj}
    for name, value in outputs.items():
        diffs[f"stage.decoder_out_{name}"] = (value - exp[f"stage.decoder_out_{name}"]).abs()
    diffs["decode"] = (low - exp["stage.decoder_out_masks"][:, 0]).abs()
    for name, d in diffs.items():
        print(f"{name:40s} max abs diff {d.max().item():.2e}")
        assert d.max().item() <= FP32, name


def test_track_embed_gives_the_official_sam_prompt(official: MaskHead, ref: dict):
    query = ref["generate"]["mask.prompt_token"]
    assert torch.equal(query, ref["heads"]["mask.prompt_token"])
    with torch.no_grad():
        sparse, dense = official.prompt(query[None])
    want = ref["heads"]["mask.sam_prompt"]
    d = (sparse - want).abs().max().item()
    print(f"{'mask.sam_prompt (track_embed)':40s} max abs diff {d:.2e}")
    assert dense is None and d <= FP32
    assert torch.allclose(want, ref["sam2"]["in.sparse_prompt"])


def test_embedding_propagation_reproduces_official_masks(
    official: MaskHead, ref: dict, monkeypatch
):
    exp, raw = ref["sam2"], ref["raw"]

    def no_files(*_a, **_k):
        raise AssertionError("tracking wrote an image file")

    monkeypatch.setattr(Image.Image, "save", no_files)
    first, logits = official.propagate_logits(exp["in.sparse_prompt"][0], raw)
    want_first = exp["out.prompt_frame_mask_logits"][0, 0]
    assert first.shape == want_first.shape == raw.shape[-2:]  # the video's own resolution
    d = (first - want_first).abs().max().item()
    print(f"{'out.prompt_frame_mask_logits':40s} max abs diff {d:.2e}")
    assert d <= FP32 and iou(first > 0, want_first > 0) >= IOU
    want = exp["out.mask_logits"][:, 0, 0]
    assert logits.shape == want.shape
    print(f"{'out.mask_logits (every frame)':40s} max abs diff {(logits - want).abs().max():.2e}")
    for t in range(len(want)):
        assert iou(logits[t] > 0, exp["out.masks"][t, 0].bool()) >= IOU, f"frame {t}"
    # the head's query path (track_embed, then the same seeding) gives the same masks
    masks = official.propagate(ref["generate"]["mask.prompt_token"], raw)
    assert masks.dtype == torch.bool
    assert min(iou(masks[t], exp["out.masks"][t, 0].bool()) for t in range(len(masks))) >= IOU


def test_embedding_seed_on_a_later_frame(official: MaskHead, ref: dict):
    """Seeding frame k decodes it as the official seeds frame 0 (a video starting at k), and
    tracks frames before it backward."""
    sparse, raw, k = ref["sam2"]["in.sparse_prompt"][0], ref["raw"][:5], 2
    first, logits = official.propagate_logits(sparse, raw, prompt_frame=k)
    alone, _ = official.propagate_logits(sparse, raw[k : k + 1])
    assert (first - alone).abs().max().item() <= FP32
    assert torch.equal(logits[k], first) and logits.shape == (5, *raw.shape[-2:])
    assert all((logits[t] > 0).any() for t in range(k))  # reached backward


def test_checkpoint_files_load_strictly(official: MaskHead, ref: dict, tmp_path: Path):
    sam = {k.removeprefix("backend.sam."): v for k, v in official.state_dict().items()}
    sam = {k: v for k, v in sam.items() if not k.startswith("prompt_mlp.")}
    cfg = replace(official.cfg, propagation="mask")
    for path in (tmp_path / "sam.safetensors", tmp_path / "sam.pt"):
        if path.suffix == ".pt":
            torch.save({"model": sam}, path)
        else:
            save_file(sam, str(path))
        built = build_mask_head(replace(cfg, checkpoint=str(path)), official.d_llm)
        got = built.backend.sam.state_dict()
        assert all(torch.equal(got[k], v) for k, v in sam.items()), path.suffix
    bad = dict(sam)
    bad.pop("no_mem_embed")
    bad["extra.weight"] = torch.zeros(1)
    bad["no_obj_ptr"] = torch.zeros(3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing: no_mem_embed.*1 unexpected: extra\.weight"):
        build_mask_head(replace(cfg, checkpoint=str(tmp_path / "bad.safetensors")), 8)
    with pytest.raises(ValueError, match=r"no_obj_ptr \(3,\) \(model \(1, 256\)\)"):
        build_mask_head(replace(cfg, checkpoint=str(tmp_path / "bad.safetensors")), 8)


def test_bad_propagation_mode():
    with pytest.raises(ValueError, match="mask.propagation"):
        MaskHeadConfig(propagation="jpeg")
