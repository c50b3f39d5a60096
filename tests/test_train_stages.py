"""The three stages on the real tiny model and a small generated toy world.

Each stage changes exactly the parameters of its named groups (everything else bit-identical),
starts from the previous stage's checkpoint, and `tpo export` gives a loadable folder.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers.toy_manifest import toy_manifest

from tpo.config import TPOConfig, load_config
from tpo.stages import get_stage
from tpo.train.builders import build_train_model
from tpo.train.data import build_train_data
from tpo.train.engine import StageRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tpo.data.toyworld import generate_toyworld

    out = tmp_path_factory.mktemp("world")
    generate_toyworld(out, 5, seed=3, workers=1, test_fraction=0.2)
    return out


def _manifest(tmp: Path, world: Path, n: int) -> Path:
    return toy_manifest(world, n, tmp / f"m{n}.yaml")


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

    from tpo.infer.load import load_inference_model
    from tpo.train.export import export

    out = export(tmp_path / "stage3" / "final", tmp_path / "export")
    model = load_inference_model(out)
    stage3 = load_inference_model(tmp_path / "stage3" / "final")
    for (k, a), (_, b) in zip(model.named_parameters(), stage3.named_parameters()):
        assert torch.allclose(a, b, atol=1e-2), k  # bf16-trained weights, stored as fp32
    assert export(tmp_path / "stage3" / "final", out) == out  # an earlier export is replaced
    # an export never replaces a folder that holds anything else, such as the checkpoint
    with pytest.raises(FileExistsError, match="is not an inference folder"):
        export(tmp_path / "stage3" / "final", tmp_path / "stage3" / "final")
    assert (tmp_path / "stage3" / "final" / "state.json").is_file()


@pytest.mark.slow
def test_three_stages_under_zero3_save_whole_weights(tmp_path, world):
    """ZeRO-3 with every tensor sharded: the heads and SAM2 read some weights outside their
    own forward, and checkpoints must gather the shards."""
    from safetensors.torch import load_file

    from tests.helpers.toy_engine import zero3_all_sharded
    from tpo.train.checkpoint import load_trained_weights

    zero3 = zero3_all_sharded(tmp_path)
    weights = {}
    for n in (1, 2, 3):
        cfg = _cfg(tmp_path, world, n, [f"train.deepspeed={zero3}"])
        runner = StageRunner(cfg, get_stage(n), build_train_model, build_train_data)
        final = runner.run()
        losses = [r["loss"] for r in map(json.loads, (final.parent / "metrics.jsonl").open())]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
        weights[n] = load_file(str(final / "weights.safetensors"))
        assert all(t.numel() > 0 for t in weights[n].values())
        fresh = build_train_model(cfg, get_stage(n))
        load_trained_weights(fresh, final)  # whole tensors; the base fingerprint matches
    lora = [k for k in weights[1] if ".lora_" in k]
    assert lora and all(torch.equal(weights[1][k], weights[2][k]) for k in lora)  # frozen in 2
    temporal = [k for k in weights[2] if k.startswith("heads.temporal")]
    assert any(not torch.equal(weights[2][k], weights[3][k]) for k in temporal)  # trains in 3
    decoder = [k for k in weights[2] if "sam_mask_decoder" in k and "token" in k]
    assert decoder  # SAM2's output tokens, read directly by its decoder, are stored whole
