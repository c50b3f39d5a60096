"""POPEN preference collection: perturbations, P_s files (deterministic, resumable, scored by
IoU, ranked), the loader and the clean-input rebuild, and the textual set P_t."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.toy_manifest import toy_manifest
from pycocotools import mask as mask_utils
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tpo.config import TPOConfig, load_config, to_yaml
from tpo.data.dataset import VideoTaskDataset
from tpo.data.manifest import load_manifest, load_records
from tpo.data.templates import question_text
from tpo.data.video import open_source
from tpo.model.build import build_collator
from tpo.popen.collect import (
    INDEX_FILE,
    clean_batch,
    collect_segmentation,
    collect_textual,
    corrupt_answer,
    is_text_answer,
    load_segmentation_preferences,
    mask_iou_score,
    sample_id,
)
from tpo.popen.perturb import perturb_frames, random_rects
from tpo.popen.textual import edited_token_indices
from tpo.stages import get_stage
from tpo.train.builders import build_train_model

ROOT = Path(__file__).resolve().parents[1]
FRAMES, N = 4, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tpo.data.toyworld import generate_toyworld

    world = tmp_path_factory.mktemp("world")
    generate_toyworld(world, 2, seed=5, workers=1)
    manifest = toy_manifest(world, 3, world / "m.yaml")
    cfg = load_config(TPOConfig, [ROOT / "configs" / "tiny" / "stage3.yaml"])
    model = build_train_model(cfg, get_stage(3)).eval()
    records, _ = load_records(load_manifest(manifest))
    cfg.data.manifest, cfg.data.num_frames = str(manifest), FRAMES
    (world / "ckpt").mkdir()
    (world / "ckpt" / "config.yaml").write_text(to_yaml(cfg))  # for the CLI (model patched in)
    return model, build_collator(cfg.model, model.mllm), records


def samples(records):
    data = VideoTaskDataset(records, num_frames=FRAMES, img_size=64, sampling="middle", strict=True)
    return (data.build(i) for i in range(len(data)))


@pytest.fixture(scope="module")
def collected(setup, tmp_path_factory):
    """One run over the first 3 mask samples, and one interrupted + resumed in another order."""
    model, collator, records = setup
    first = [r for r in records if r.task == "mask"][:3]
    one = tmp_path_factory.mktemp("one")
    collect_segmentation(model, samples(first), one, collator=collator, n=N, seed=3, chunk=3)
    two = tmp_path_factory.mktemp("two")
    collect_segmentation(
        model, samples(first[::-1]), two, collator=collator, n=N, seed=3, chunk=3, limit=1
    )
    collect_segmentation(model, samples(first), two, collator=collator, n=N, seed=3, chunk=3)
    return one, two, first


def test_perturbation_is_seeded_and_stays_inside_the_same_rectangles():
    frames = torch.randn(3, 3, 40, 60)
    out = perturb_frames(frames, torch.Generator().manual_seed(7), noise_std=2.0)
    again = perturb_frames(frames, torch.Generator().manual_seed(7), noise_std=2.0)
    other = perturb_frames(frames, torch.Generator().manual_seed(8), noise_std=2.0)
    assert torch.equal(out, again) and not torch.equal(out, other)
    rects = random_rects(40, 60, torch.Generator().manual_seed(7))  # drawn first, as inside
    assert len(rects) == 3
    inside = torch.zeros(40, 60, dtype=torch.bool)
    for y0, x0, y1, x1 in rects:
        assert 4 <= y1 - y0 <= 16 and 6 <= x1 - x0 <= 24  # 0.1-0.4 of 40 and 60
        assert 0 <= y0 and y1 <= 40 and 0 <= x0 and x1 <= 60
        inside[y0:y1, x0:x1] = True
    diff = out - frames
    assert bool((diff[..., ~inside] == 0).all())
    assert bool((diff[..., inside] != 0).all())  # on every frame and channel
    assert 1.8 < float(diff[..., inside].std()) < 2.2


def test_mask_iou_score_by_hand():
    gt = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]]])
    pred = torch.tensor([[[1, 0, 0], [1, 0, 0]], [[1, 1, 1], [1, 1, 1]], [[0, 0, 1], [0, 0, 1]]])
    # visible on frames 0 and 2: IoU 1/3 and 1; the empty frame 1 does not count
    assert mask_iou_score(pred.bool(), gt.bool()) == pytest.approx((1 / 3 + 1) / 2)
    empty = torch.zeros(2, 2, 3, dtype=torch.bool)
    assert mask_iou_score(empty, empty) == 1.0
    one_empty = torch.stack([empty[0], pred[1].bool()])  # frame 1 predicts pixels: 0
    assert mask_iou_score(one_empty, empty) == 0.5


def test_collection_is_deterministic_resumable_and_order_free(collected):
    one, two, first = collected
    lines = [json.loads(x) for x in (two / INDEX_FILE).read_text().splitlines()]
    ids = [x["id"] for x in lines]
    assert len(ids) == 3 and set(ids) == {sample_id(r) for r in first}
    assert ids[0] == sample_id(first[2])  # the interrupted run did the last one first
    by_id = {
        x["id"]: x for x in (json.loads(y) for y in (one / INDEX_FILE).read_text().splitlines())
    }
    for line in lines:
        assert line == by_id[line["id"]]
        a, b = str(one / line["file"]), str(two / line["file"])
        ta, tb = load_file(a), load_file(b)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
            assert fa.metadata() == fb.metadata()  # (the header's byte order is not fixed)


def test_stored_scores_are_the_iou_of_the_heads_masks(setup, collected):
    model, _, _ = setup
    one, _, first = collected
    prefs = load_segmentation_preferences(one)
    assert [p.id for p in prefs] == [sample_id(r) for r in first]
    pref, rec = prefs[0], first[0]
    assert pref.embeddings.shape == (N, model.mllm.llm.width)
    assert pref.expression in rec.question and pref.expression != rec.question
    empty = np.zeros((rec.height, rec.width), np.uint8)  # frames absent from masks: empty
    gt = np.stack([mask_utils.decode(rec.masks[int(i)]) if int(i) in rec.masks else empty
                   for i in pref.frame_indices]) > 0  # fmt: skip
    visible = gt.reshape(FRAMES, -1).any(1)
    assert visible.any()
    assert pref.mask_frame_indices.tolist() == pref.frame_indices[visible].tolist()
    gt = gt[visible]
    frames = open_source(rec.video).read(pref.mask_frame_indices.numpy())
    queries = torch.cat([pref.clean_embedding[None], pref.embeddings[:2]])
    with torch.no_grad():
        idx = pref.mask_frame_indices.tolist()
        logits = model.heads["mask"](queries, [frames] * 3, [rec.video] * 3, [idx] * 3).logits
    for got, lg in zip([pref.clean_score, *pref.scores[:2].tolist()], logits):
        up = F.interpolate(lg[:, None], size=gt.shape[-2:], mode="bilinear", align_corners=False)
        pred = up[:, 0].numpy() > 0
        iou = [(p & g).sum() / (p | g).sum() for p, g in zip(pred, gt)]
        assert got == pytest.approx(float(np.mean(iou)), abs=1e-6)


def test_tiers_rank_the_scores(collected):
    for pref in load_segmentation_preferences(collected[0]):
        assert sorted(pref.tiers) == ["high", "low", "medium", "medium"]  # n = 4: 1 / 2 / 1
        s = {t: [float(x) for x, u in zip(pref.scores, pref.tiers) if u == t] for t in pref.tiers}
        assert min(s["high"]) >= max(s["medium"]) and min(s["medium"]) >= max(s["low"])
        assert not torch.allclose(pref.embeddings[0], pref.embeddings[1])  # the noise acts


def test_clean_batch_rebuilds_the_clean_embedding(setup, collected):
    model, collator, records = setup
    prefs = load_segmentation_preferences(collected[0])
    batch = clean_batch(prefs, records, collator, img_size=64)
    with torch.no_grad():
        out = model.mllm(batch.frames, batch.input_ids, batch.attention_mask)
        hidden, rows = out.for_head(model.mllm.task_tokens.index("mask"))
    assert rows.tolist() == [0, 1, 2]
    assert torch.allclose(hidden, torch.stack([p.clean_embedding for p in prefs]), atol=1e-4)
    with pytest.raises(ValueError, match=prefs[0].file.name):
        clean_batch(prefs, records[:1], collator, img_size=64)


def test_loader_and_rerun_errors(setup, collected, tmp_path):
    model, collator, _ = setup
    with pytest.raises(ValueError, match="'n': 4, 'seed': 3"):
        collect_segmentation(model, iter(()), collected[0], collator=collator, n=5, seed=3)
    folder = tmp_path / "copy"
    shutil.copytree(collected[0], folder)
    entry = json.loads((folder / INDEX_FILE).read_text().splitlines()[1])
    path = folder / entry["file"]
    tensors = load_file(str(path))
    save_file({**tensors, "scores": tensors["scores"][:2]}, str(path), metadata={"format": "x"})
    with pytest.raises(ValueError, match=entry["file"]):
        load_segmentation_preferences(folder)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{entry['file']}: not a readable"):
        load_segmentation_preferences(folder)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=entry["file"]):
        load_segmentation_preferences(folder)
    (folder / INDEX_FILE).write_text('{"id": "a", "file": "b"}\n{broken\n')
    with pytest.raises(ValueError, match=f"{INDEX_FILE}:2"):
        load_segmentation_preferences(folder)


def test_corrupt_answer_swaps_one_toy_word():
    assert corrupt_answer("Green.") == "Blue."
    assert corrupt_answer("It moves down.") == "It moves left."
    assert corrupt_answer("(B) red") == "(B) green"
    assert corrupt_answer("The yellow triangle.") == "The red triangle."
    assert corrupt_answer("Three.") == "Four."
    assert corrupt_answer("Bored, not shaped.") is None


def test_textual_pairs_and_synthetic_fallback(setup, tmp_path, monkeypatch):
    model, collator, records = setup
    text = [r for r in records if is_text_answer(r)][:3]
    assert {r.task for r in text} <= {"mc", "conversation"} and len(text) == 3

    def tokenize(s):
        return collator.tokenizer(s, add_special_tokens=False)["input_ids"]

    out = collect_textual(
        model, samples(text), tmp_path / "pt.jsonl", collator=collator, max_new_tokens=8
    )
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got, "a random model answers wrongly"
    by_id = {sample_id(r): r for r in text}
    for g in got:
        rec = by_id[g["id"]]
        assert g["y_c"] == rec.answer and g["y"] != g["y_c"] and not g["synthetic"]
        assert g["instruction"] == question_text(rec) and g["video"] == rec.video
        assert (g["L_y"], g["L_yc"]) == edited_token_indices(tokenize(g["y"]), tokenize(g["y_c"]))
    # a model right on every sample: the pairs are corrupted ground truths, flagged synthetic
    monkeypatch.setattr(
        "tpo.popen.collect_text._answer_batch", lambda m, ss, c, k: [s.record.answer for s in ss]
    )
    out = collect_textual(model, samples(text), tmp_path / "syn.jsonl", collator=collator)
    got = [json.loads(x) for x in out.read_text().splitlines()]
    want = [(r.answer, corrupt_answer(r.answer)) for r in text if corrupt_answer(r.answer)]
    assert [(g["y_c"], g["y"]) for g in got] == want and want
    assert all(g["synthetic"] for g in got)


def test_cli_collects_both_sets(setup, tmp_path, monkeypatch, capsys):
    from tpo.cli import main

    model, _, records = setup
    ckpt = Path(records[0].video).parents[1] / "ckpt"
    monkeypatch.setattr("tpo.popen.collect_cli.load_inference_model", lambda folder, device: model)
    out, text = tmp_path / "ps", tmp_path / "pt.jsonl"
    argv = [
        "popen",
        "collect",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--n",
        "2",
        "--limit",
        "1",
    ]
    assert main([*argv, "--textual", str(text), "--max-new-tokens", "8"]) == 0
    prefs = load_segmentation_preferences(out)
    mask = [r for r in records if r.task == "mask"]
    assert [p.id for p in prefs] == [sample_id(mask[0])] and prefs[0].embeddings.shape[0] == 2
    assert len(prefs[0].frame_indices) == FRAMES  # the config's data.num_frames
    lines = text.read_text().splitlines()
    assert len(lines) <= 1 and "P_s: 1 samples" in capsys.readouterr().out
    assert main(argv) == 0  # a rerun finds the sample done
    assert len((out / INDEX_FILE).read_text().splitlines()) == 1


def test_cli_perturbations_come_from_the_config_unless_flagged(setup, tmp_path, monkeypatch):
    from tpo.cli import main
    from tpo.popen.collect_cli import perturbation_settings

    model, _, records = setup
    ckpt = Path(records[0].video).parents[1] / "ckpt"
    monkeypatch.setattr("tpo.popen.collect_cli.load_inference_model", lambda folder, device: model)
    yaml = tmp_path / "popen.yaml"
    yaml.write_text("popen:\n  n: 3\n  n_rects: 1\n  noise_std: 0.5\n  seed: 7\n")
    out = tmp_path / "ps"
    argv = ["popen", "collect", "--checkpoint", str(ckpt), "--out", str(out), "--limit", "1"]
    assert main([*argv, "--config", str(yaml)]) == 0
    assert load_segmentation_preferences(out)[0].embeddings.shape[0] == 3  # popen.n of the YAML
    with pytest.raises(ValueError, match="collected with .*'n': 3"):  # the index has n=3
        main([*argv, "--config", str(yaml), "--n", "2"])
    popen = load_config(TPOConfig, [yaml]).popen
    flags = SimpleNamespace(n=None, rects=2, noise_std=None, seed=None)
    assert perturbation_settings(flags, popen) == {
        "n": 3,
        "n_rects": 2,
        "noise_std": 0.5,
        "seed": 7,
    }
    defaults = perturbation_settings(flags, TPOConfig().popen)  # the checkpoint's (default) popen
    assert defaults == {"n": 30, "n_rects": 2, "noise_std": 1.0, "seed": 0}
