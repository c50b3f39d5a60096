"""The three stages on the real tiny model and a small generated toy world.

Each stage changes exactly the parameters of its named groups (everything else bit-identical),
starts from the previous stage's checkpoint, and `tpo export` gives a loadable folder.
"""

import json
from pathlib import Path

import pytest
import torch

from tpo.config import TPOConfig, load_config
from tpo.stages import get_stage
from tpo.train.builders import build_train_data, build_train_model
from tpo.train.engine import StageRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tpo.data.toyworld import generate_toyworld

    out = tmp_path_factory.mktemp("world")
    generate_toyworld(out, 5, seed=3, workers=1, test_fraction=0.2)
    return out


def _manifest(tmp: Path, world: Path, n: int) -> Path:
    text = (ROOT / "data_manifests" / f"toyworld_stage{n}.yaml").read_text()
    path = tmp / f"m{n}.yaml"
    path.write_text(text.replace("data_root: data/toyworld", f"data_root: {world}"))
    return path


def _cfg(tmp: Path, world: Path, n: int, extra=()) -> TPOConfig:
    return load_config(
        TPOConfig,
        [ROOT / "configs" / "tiny" / f"stage{n}.yaml"],
        [
            f"data.manifest={_manifest(tmp, world, n)}",
            f"train.output_dir={tmp / f'stage{n}'}",
            "train.max_steps=2",
            "train.micro_batch=4",
            "train.save_every=0",
            "train.tensorboard=false",
            "train.lr=0.01",
            *extra,
        ],
    )


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters()}


@pytest.mark.slow
def test_three_stages_train_exactly_their_groups(tmp_path, world):
    changed_by_stage = {}
    for n in (1, 2, 3):
        cfg = _cfg(tmp_path, world, n)
        stage = get_stage(n)
        runner = StageRunner(cfg, stage, build_train_model, build_train_data)
        runner.setup()
        before = _snapshot(runner.model)
        groups = runner.model.trainable_groups()
        trained = stage.groups(cfg.train.extra_groups)
        named = {id(p) for g in trained if g in groups for p in groups[g]}
        names = {k for k, p in runner.model.named_parameters() if id(p) in named}
        runner.run()  # already set up: trains the same model
        after = _snapshot(runner.model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, f"stage {n} changed nothing"
        assert changed <= names, (
            f"stage {n} changed untrained params: {sorted(changed - names)[:5]}"
        )
        changed_by_stage[n] = changed
        state = json.loads((tmp_path / f"stage{n}" / "final" / "state.json").read_text())
        assert set(trained) & set(groups) <= set(state["trained_groups"])
    assert any(".lora_" in k for k in changed_by_stage[1])  # LoRA learns in stage 1
    assert any(k.startswith("heads.temporal") for k in changed_by_stage[2])
    assert not any(".lora_" in k for k in changed_by_stage[2])  # LoRA is no stage-2 group

    from tpo.train.export import export, load_inference_model

    out = export(tmp_path / "stage3" / "final", tmp_path / "export")
    model = load_inference_model(out)
    stage3 = load_inference_model(tmp_path / "stage3" / "final")
    for (k, a), (_, b) in zip(model.named_parameters(), stage3.named_parameters()):
        assert torch.allclose(a, b, atol=1e-2), k  # bf16-trained weights, stored as fp32
