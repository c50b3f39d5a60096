"""Fine-tuning a converted model: `tpo train --stage 3 train.init_from=DST` on the toy world
starts from every weight of the converted folder, and its checkpoint loads back (the frozen
parts from the folder, the trained groups from the checkpoint)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.toy_manifest import toy_manifest
from safetensors.torch import load_file

import tpo
from tpo.cli import main
from tpo.config import TPOConfig, load_saved_config

MODEL = "model.safetensors"
ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "DS_ACCELERATOR": "cpu",
    "TORCH_EXTENSIONS_DIR": str(ROOT / "build" / "torch_extensions"),
}
SIDE = (
    ("--llm-config", "llm_config.json"),
    ("--qformer-config", "qformer_config.json"),
    ("--sam2-config", "sam2.yaml"),
    ("--cgdetr-config", "cgdetr_config.json"),
)


@pytest.mark.slow
def test_stage3_from_a_converted_folder(parity_reference, tmp_path):
    from tpo.data.toyworld import generate_toyworld

    src = parity_reference / "official-reduced"
    dst = tmp_path / "converted"
    args = ["convert", "videochat-tpo", str(src), "--out", str(dst)]
    for flag, name in SIDE:
        args += [flag, str(src / name)]
    assert main(args) == 0
    world = tmp_path / "world"
    generate_toyworld(world, 2, seed=3, workers=1, test_fraction=0.5)
    manifest = toy_manifest(world, 3, tmp_path / "m3.yaml")
    out = tmp_path / "stage3"
    # in a process of its own: `tpo train` tears its process group down at the end, which
    # would leave DeepSpeed's cached groups stale for later in-process runs of this session
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tpo.cli",
            "train",
            "--stage",
            "3",
            f"train.init_from={dst}",
            f"data.manifest={manifest}",
            f"train.output_dir={out}",
            "train.max_steps=1",
            "train.micro_batch=2",
            "train.save_every=0",
            "train.tensorboard=false",
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_saved_config(TPOConfig, out / "final" / "config.yaml")
    assert cfg.model.base_weights == str(dst.resolve())
    assert cfg.model.llm.arch["vocab_size"] == 32007  # the folder's model, not the YAML's
    model = tpo.load(out / "final", merge_lora=False).model
    # the fine-tuned checkpoint in the official layout: the release's names, shapes, dtypes
    back = tmp_path / "official"
    export = ["export", str(out / "final"), "--format", "videochat-tpo", "--out", str(back)]
    assert main([*export, "--layout", str(dst)]) == 0
    # and as a tpo inference folder, which holds every weight (no base_weights)
    assert main(["export", str(out / "final"), "--out", str(tmp_path / "tpo")]) == 0
    folder = load_saved_config(TPOConfig, tmp_path / "tpo" / "config.yaml")
    assert folder.model.base_weights is None
    official, again = load_file(str(src / "model.safetensors")), load_file(str(back / MODEL))
    assert sorted(official) == sorted(again)
    assert all(
        official[k].dtype == v.dtype and official[k].shape == v.shape for k, v in again.items()
    )
    # CG-DETR is a head of the model now: its (fine-tuned) weights go back under cg_model.*
    anchors = model.state_dict()["heads.temporal.net.query_anchors.weight"]
    assert torch.equal(
        again["cg_model.query_embed.weight"], anchors.to(again["cg_model.query_embed.weight"].dtype)
    )
    converted = load_file(str(dst / "model.safetensors"))
    trained = load_file(str(out / "final" / "weights.safetensors"))
    state = model.state_dict()
    frozen = [k for k in converted if k not in trained]
    assert frozen and all(torch.equal(state[k], converted[k]) for k in frozen)
    assert all(torch.equal(state[k], v.float()) for k, v in trained.items())
    assert any(not torch.equal(v.float(), converted[k]) for k, v in trained.items())
