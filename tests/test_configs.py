"""Config system: every YAML and manifest loads against its schema; errors name file and key."""

from pathlib import Path

import pytest

from tpo.config import ConfigError, TPOConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
MANIFESTS = sorted((ROOT / "data_manifests").glob("*.yaml"))


def test_there_are_configs_and_manifests():
    assert len(CONFIGS) >= 9 and len(MANIFESTS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads(path):
    cfg = load_config(TPOConfig, [path])
    assert isinstance(cfg, TPOConfig)
    if path.name.startswith("stage") and "_" not in path.stem:
        assert cfg.train.stage == int(path.stem[-1])
        assert (ROOT / cfg.data.manifest).is_file(), f"{path}: data.manifest {cfg.data.manifest}"
        assert (ROOT / cfg.train.deepspeed).is_file(), f"{path}: train.deepspeed"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_loads(path):
    from tpo.data.manifest import load_manifest

    manifest = load_manifest(path)
    assert manifest.datasets


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  max_steps: 7\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  max_steps: 9\n")
    cfg = load_config(TPOConfig, [tmp_path / "child.yaml"], ["train.micro_batch=3"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.micro_batch) == (0.5, 9, 3)


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.learning_rate"):
        load_config(TPOConfig, [bad])


def test_wrong_type_names_key(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*train\.max_steps"):
        load_config(TPOConfig, [bad])


def test_schema_check_and_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.stage must be 1, 2 or 3"):
        load_config(TPOConfig, [], ["train.stage=4"])
    with pytest.raises(ConfigError, match="train.align_weight must be >= 0"):
        load_config(TPOConfig, [], ["train.align_weight=-1"])
    with pytest.raises(ConfigError, match="train.keep_checkpoints >= 1, got 0 and 0"):
        load_config(TPOConfig, [], ["train.keep_checkpoints=0"])  # `steps[:-0]` kept them all
    with pytest.raises(ConfigError, match="command line.*key=value"):
        load_config(TPOConfig, [], ["train.stage"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(TPOConfig, [tmp_path / "missing.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TPOConfig, [tmp_path / "list.yaml"])


def test_free_dict_fields_take_new_keys_but_dataclasses_stay_strict(tmp_path):
    cfg_file = tmp_path / "g.yaml"
    cfg_file.write_text("train:\n  lr_groups: {lora: 1.0e-4}\n")
    cfg = load_config(TPOConfig, [cfg_file], ["train.lr_groups.task_tokens=0.1"])
    assert cfg.train.lr_groups == {"lora": 1e-4, "task_tokens": 0.1}
    with pytest.raises(ConfigError, match="train.lrx"):
        load_config(TPOConfig, [], ["train.lrx=1"])


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("model:\n  heads:\n    lm_weight: 0.5\n", "model.heads.lm_weight"),
        ("data:\n  eval_sampling: middle\n", "data.eval_sampling"),
        (
            "model:\n  heads:\n    temporal:\n      feat_source: npz\n",
            "model.heads.temporal.feat_source",
        ),
    ],
)
def test_deleted_settings_in_an_old_yaml_are_unknown_keys(tmp_path, yaml_text, key):
    old = tmp_path / "old.yaml"
    old.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"old\.yaml: key '{key}'.*not in"):
        load_config(TPOConfig, [old])


def test_no_config_or_stage_declares_a_manifest_the_yaml_does_not_set():
    from tpo.stages import STAGES

    assert all(not hasattr(stage, "manifest") for stage in STAGES.values())


def test_saved_configs_of_older_checkpoints_drop_retired_keys(tmp_path, caplog):
    """A checkpoint's config.yaml from before a setting was retired still loads (the key is
    dropped with a warning naming it); the same key in a user's YAML stays an error."""
    from tpo.config import load_saved_config
    from tpo.config.load import RETIRED_KEYS

    old = tmp_path / "config.yaml"
    old.write_text(
        "model:\n  heads:\n    lm_weight: 0.5\n    temporal:\n      feat_source: vision\n"
        "data:\n  eval_sampling: middle\n  num_frames: 8\n"
    )
    with caplog.at_level("WARNING", logger="tpo.config.load"):
        cfg = load_saved_config(TPOConfig, old)
    assert cfg.data.num_frames == 8  # the rest of the file is read
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"'{key}'" in warned for key in RETIRED_KEYS)
    with pytest.raises(ConfigError, match="lm_weight"):
        load_config(TPOConfig, [old])


def test_dot_relative_file_keys_resolve_against_the_yaml_that_sets_them(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"base: {Path('configs/tiny/stage1.yaml').resolve()}\n"
        "model:\n  heads:\n    mask:\n      sam2_config: ./sam2.yaml\n"
    )
    folder = tmp_path / "moved" / "dst"
    folder.mkdir(parents=True)
    child = folder / "config.yaml"
    child.write_text(
        "base: ../../base.yaml\nmodel:\n  llm:\n    tokenizer: ./tokenizer\n    path: ../llm\n"
    )
    cfg = load_config(TPOConfig, child)
    assert cfg.model.llm.tokenizer == str(folder / "tokenizer")
    assert cfg.model.llm.path == str(tmp_path / "moved" / "llm")
    assert cfg.model.heads.mask.sam2_config == str(tmp_path / "sam2.yaml")
    # names and working-folder paths stay as written
    plain = load_config(TPOConfig, "configs/tiny/stage1.yaml")
    assert not plain.model.llm.tokenizer.startswith(str(tmp_path))
    assert load_config(TPOConfig, child, ["model.llm.tokenizer=./x"]).model.llm.tokenizer == "./x"
