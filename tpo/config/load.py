"""Load typed configs: YAML files (with `base:` inheritance) + CLI `key=value` overrides.

Every error names the file and the dotted key that is wrong and what was expected.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

log = logging.getLogger(__name__)

# Keys that earlier versions wrote into every checkpoint's config.yaml and that no code reads
# any more. A saved config (`load_saved_config`) drops them with a warning, so older checkpoints
# keep loading; in a YAML a user writes they stay unknown-key errors.
RETIRED_KEYS: dict[str, str] = {
    "model.heads.lm_weight": "the stage's lm_weight sets the LM loss weight",
    "model.heads.temporal.feat_source": "features come from the vision encoder",
    "data.eval_sampling": "evaluation samples frames as the predictor does",
}


# Keys naming local files or folders. A value written "./x" or "../x" is relative to the YAML
# file that sets it (so a converted or exported folder can be moved); other values are used as
# given (names such as "mistral-common", sam2 config names, or paths from the working folder).
FILE_RELATIVE_KEYS: tuple[str, ...] = (
    "model.vision.checkpoint",
    "model.connector.bert_init",
    "model.llm.path",
    "model.llm.tokenizer",
    "model.heads.mask.sam2_config",
    "model.heads.mask.checkpoint",
    "model.base_weights",
)


def _resolve_file_keys(node: DictConfig, folder: Path) -> None:
    """Rewrite the "./"- and "../"-relative values of FILE_RELATIVE_KEYS against `folder`."""
    for key in FILE_RELATIVE_KEYS:
        parent, _, leaf = key.rpartition(".")
        holder = OmegaConf.select(node, parent, default=None)
        if not isinstance(holder, DictConfig) or leaf not in holder:
            continue
        value = holder[leaf]
        if isinstance(value, str) and value.startswith(("./", "../")):
            holder[leaf] = str((folder / value).resolve())


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


def _read_yaml(path: Path) -> DictConfig:
    """Read one YAML file and, recursively, the files its `base:` key names (relative paths)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report with the file name
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got a list")
    bases = node.pop("base", None)
    _resolve_file_keys(node, path.parent)
    if bases is None:
        return node
    merged: DictConfig | ListConfig = OmegaConf.create({})
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _read_yaml((path.parent / str(base)).resolve()))
    out = OmegaConf.merge(merged, node)
    assert isinstance(out, DictConfig)  # a merge of mappings is a mapping
    return out


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def _open_free_dicts(node: DictConfig) -> None:
    """Let plain `dict` fields take any keys while dataclass fields stay strict."""
    for key in list(node.keys()):
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                _open_free_dicts(child)


def merge_into(schema: type[T], sources: list[tuple[str, Any]]) -> T:
    """Merge (label, mapping) sources into `schema` in order and build the dataclass.

    `label` names where each source came from (a file path or 'command line') for errors.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_free_dicts(cfg)
    for label, source in sources:
        try:
            cfg = OmegaConf.merge(cfg, source)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{label}: {_describe(err)}") from err
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        where = ", ".join(label for label, _ in sources) or schema.__name__
        raise ConfigError(f"{where}: {_describe(err)}") from err
    except (TypeError, ValueError) as err:  # raised by a schema's __post_init__ check
        where = ", ".join(label for label, _ in sources) or schema.__name__
        raise ConfigError(f"{where}: {err}") from err
    return obj  # type: ignore[return-value]


def load_config(
    schema: type[T],
    paths: Sequence[str | Path] | str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build `schema` from YAML files (later ones win) and `key=value` overrides.

    >>> cfg = load_config(TPOConfig, ["configs/tiny/stage1.yaml"], ["train.max_steps=10"])
    """
    if paths is None:
        paths = []
    elif isinstance(paths, str | Path):
        paths = [paths]
    sources: list[tuple[str, Any]] = [(str(p), _read_yaml(Path(p))) for p in paths]
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        try:
            sources.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command line: {_describe(err)}") from err
    return merge_into(schema, sources)


def load_saved_config(schema: type[T], path: str | Path) -> T:
    """Build `schema` from a checkpoint's saved `config.yaml`, dropping `RETIRED_KEYS`."""
    node = _read_yaml(Path(path))
    for key, why in RETIRED_KEYS.items():
        parent, _, leaf = key.rpartition(".")
        holder = OmegaConf.select(node, parent) if parent else node
        if isinstance(holder, DictConfig) and leaf in holder:
            holder.pop(leaf)
            log.warning("%s: ignoring the retired key '%s' (%s)", path, key, why)
    return merge_into(schema, [(str(path), node)])


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (stored beside every checkpoint)."""
    node = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else OmegaConf.create(cfg)
    return OmegaConf.to_yaml(node)


def to_dict(cfg: Any) -> dict:
    """The config as plain Python containers."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict | list | ListConfig)
    return out  # type: ignore[return-value]
