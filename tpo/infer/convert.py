"""`tpo convert videochat-tpo`: the official VideoChat-TPO release folder -> a tpo inference
folder that `tpo.load` reads.

The source (`model.safetensors`, or `model.safetensors.index.json` + shards) is streamed shard
by shard and tensor by tensor (`safe_open`) straight into the output file, so the checkpoint is
never in memory twice. Names follow `tpo.heads.official_layout`; an official tensor the layout
does not know is an error naming it. The tensors without a home are kept losslessly in
`unmapped.safetensors`, and `official.json` records every official name, dtype, shape and shard
(and the release's `config.json`), so `tpo export --format videochat-tpo` writes the official
layout back. The destination holds:

    config.yaml          the tpo config (file values "./"-relative: the folder can move)
    model.safetensors    every tpo weight
    unmapped.safetensors the official tensors without a home, as they were
    official.json        the official layout (names, dtypes, shapes, shards, config.json)
    sam2.yaml            the SAM2 Hydra config the mask head is built from
    tokenizer/           the release's tokenizer files
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from tpo.config import TPOConfig, to_yaml
from tpo.config.load import merge_into
from tpo.config.schema import ModelConfig
from tpo.heads import official_layout as layout
from tpo.heads.build import build_model
from tpo.heads.registry import task_pairs
from tpo.infer import official_config
from tpo.infer.official_source import OfficialSource, Spec
from tpo.model.folder import (
    CONFIG_FILE,
    MODEL_FILE,
    StreamedSafetensors,
    commit_folder,
    replace_folder,
)
from tpo.model.tokens import TaskTokenIds, load_tokenizer

UNMAPPED_FILE = layout.UNMAPPED_FILE
OFFICIAL_FILE = layout.OFFICIAL_FILE
SAM2_FILE = "sam2.yaml"
TOKENIZER_DIR = layout.TOKENIZER_DIR
TOKENIZER_FILES = layout.TOKENIZER_FILES
FOLDER_FILES = {CONFIG_FILE, MODEL_FILE, UNMAPPED_FILE, OFFICIAL_FILE, SAM2_FILE, TOKENIZER_DIR}
INDEX_FILE = layout.INDEX_FILE
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MASK_PREFIX = "heads.mask."  # the mask head: its prompt MLP and SAM2


@dataclass
class ConversionReport:
    """What a conversion did: official tensors mapped and kept (by group), tpo tensors
    written, the official modes the config could not switch on yet."""

    out: Path
    mapped: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    written: int = 0
    dtype: str = ""
    modes_pending: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        kept = sum(self.kept.values())
        out = [
            f"converted into {self.out} ({self.dtype})",
            f"  {self.mapped} official tensors mapped -> {self.written} tpo tensors",
            f"  {kept} kept without a home in {UNMAPPED_FILE}:",
        ]
        out += [f"    {group}: {n}" for group, n in sorted(self.kept.items())]
        out.append("  dropped: 0")
        if self.modes_pending:
            out.append(f"  official modes not in this tpo's config yet: {self.modes_pending}")
        return out


@dataclass
class Plan:
    """The tpo tensors to write, in order, and how each is made from official ones."""

    specs: list[tuple[str, torch.dtype, tuple[int, ...]]]
    kept: list[str]
    content_rows: dict[str, int]  # official task vector -> row of mllm.task_tokens.content
    delta_rows: list[int]  # embed rows copied to the trainable-token delta


def _group(name: str) -> str:
    for prefix in layout.KEPT_PREFIXES:
        if name.startswith(prefix):
            return prefix.rstrip(".")
    return name


def plan_conversion(
    specs: dict[str, Spec], content: list[str], delta_rows: list[int], dtype: torch.dtype
) -> Plan:
    """The output specs for official tensors `specs` (float tensors cast to `dtype`);
    `content`: the heads' content tokens in head-index order; `delta_rows`: the embedding rows
    of the trainable task tokens. An official name the layout does not know, or a missing task
    vector, is an error naming it."""
    out: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    kept: list[str] = []
    vectors = {}
    for name, token in layout.CONTENT_VECTORS.items():
        if token not in content:
            raise ValueError(f"{name}: no registered head has the content token {token}")
        vectors[name] = content.index(token)
    width = None
    for name, (src_dtype, shape) in specs.items():
        cast = dtype if src_dtype.is_floating_point else src_dtype
        if layout.is_kept(name):
            kept.append(name)
        elif name == layout.CRITERION_WEIGHT:
            continue  # config (heads.temporal.cgdetr.eos_coef), not a tensor
        elif name in vectors:
            width = shape[-1]
        elif name == layout.EMBED:
            out.append((layout.EMBED_BASE, cast, shape))
            out.append((layout.EMBED_DELTA, cast, (len(delta_rows), shape[1])))
        else:
            try:
                out.append((layout.to_tpo(name), cast, shape))
            except KeyError as err:
                raise ValueError(f"unexpected tensor in the checkpoint: {err.args[0]}") from None
    missing = [n for n in vectors if n not in specs]
    if missing or width is None:
        raise ValueError(f"the checkpoint lacks the task vectors {missing}")
    out.append((layout.CONTENT, dtype, (len(content), width)))
    return Plan(out, kept, vectors, delta_rows)


def check_against_model(plan: Plan, model_cfg: ModelConfig, where: str) -> None:
    """The planned tensors are exactly those of `build_model(model_cfg)` (built on the meta
    device, so nothing is allocated), with the same shapes; a missing, extra or misshapen
    tensor is an error naming it. SAM2 (the mask head's backend) is left out of this check:
    the mask head's build loads it strictly from the same names."""
    heads = dataclasses.replace(model_cfg.heads, mask=None)
    with torch.device("meta"):
        model = build_model(dataclasses.replace(model_cfg, heads=heads))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {n: s for n, _, s in plan.specs if not n.startswith(MASK_PREFIX)}
    missing = sorted(set(want) - set(got))
    if missing:
        official = [_official_name(n) for n in missing[:5]]
        raise ValueError(f"{where}: the checkpoint lacks {len(missing)} tensors: {official}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ValueError(f"{where}: tensors the converted config does not build: {extra[:5]}")
    bad = [(n, got[n], want[n]) for n in want if got[n] != want[n]]
    if bad:
        n, g, w = bad[0]
        raise ValueError(
            f"{where}: {_official_name(n)} has shape {g}, the converted config builds {w} "
            f"({len(bad)} tensors differ)"
        )


def _official_name(name: str) -> str:
    try:
        return layout.to_official(name)
    except KeyError:
        return name


def _read_json(path: str | Path | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path}: not a readable JSON file: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path}: expected a JSON mapping")
    return value


def _sam2_yaml(given: str | Path | None) -> Path:
    """The SAM2 YAML to copy: the given file, else the sam2 package's v2.0 Hiera-L."""
    if given is not None:
        if not Path(given).is_file():
            raise FileNotFoundError(f"--sam2-config {given}: no such file")
        return Path(given)
    # function-level: sam2 is heavy and optional; only to find its packaged config
    import sam2

    path = Path(sam2.__file__).parent / official_config.RELEASE_SAM2
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the sam2 package lacks its v2.0 Hiera-L config")
    return path


def apply_official_modes(node: dict[str, Any]) -> list[str]:
    """Set `official_config.OFFICIAL_MODES` in the config mapping `node` where the config
    schema has the field; returns the keys it has not (yet)."""
    pending = []
    probe = TPOConfig()
    for key, value in official_config.OFFICIAL_MODES.items():
        *parents, leaf = key.split(".")
        holder: Any = probe
        for part in parents:
            holder = getattr(holder, part, None)
        if holder is None or not hasattr(holder, leaf):
            pending.append(key)
            continue
        target = node
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return pending


def converted_config(
    source_config: dict[str, Any],
    specs: dict[str, Spec],
    *,
    llm_side: dict[str, Any] | None = None,
    qformer_side: dict[str, Any] | None = None,
    cgdetr_side: dict[str, Any] | None = None,
    sam2_image_size: int = 1024,
    tokenizer: str = f"./{TOKENIZER_DIR}",
    where: str = "config.json",
) -> tuple[TPOConfig, list[str]]:
    """The tpo config of an official checkpoint (`specs`: its names -> dtype, shape) and the
    official modes this tpo cannot switch on yet; `cgdetr_side`: CG-DETR fields over the
    release's (`official_config.RELEASE_CGDETR` names)."""
    shapes = {name: shape for name, (_, shape) in specs.items()}
    model = official_config.model_config(
        source_config,
        shapes,
        llm_side=llm_side,
        qformer_side=qformer_side,
        sam2_image_size=sam2_image_size,
        where=where,
        cgdetr_side=cgdetr_side,
    )
    model["llm"]["tokenizer"] = tokenizer
    frames = source_config.get("model_config", {}).get("vision_encoder", {}).get("num_frames")
    node: dict[str, Any] = {"model": model, "data": {"num_frames": int(frames or 16)}}
    pending = apply_official_modes(node)
    return merge_into(TPOConfig, [(where, node)]), pending


def criterion_weight(
    source: OfficialSource, side: dict[str, Any] | None
) -> tuple[list[float], float] | None:
    """`cg_criterion.empty_weight` as ([1, eos] as stored, the eos_coef for the config): the
    side file's (else the release's) eos_coef when the tensor holds it (to its dtype's
    precision), else the tensor's; None when the checkpoint has no CG-DETR criterion. A tensor
    that is not [1, eos], or a side eos_coef it contradicts, is an error."""
    name = layout.CRITERION_WEIGHT
    if name not in source.specs:
        return None
    value = next(t for n, t in source.tensors(only={name}))
    if value.shape != (2,) or float(value[0]) != 1.0:
        raise ValueError(f"{source.folder}: {name} is {value.tolist()}, expected [1, eos_coef]")
    eos = float(value[1])
    fields = official_config.cgdetr_fields(side)
    given = float(fields["eos_coef"])
    if float(torch.tensor(given).to(value.dtype)) == eos:
        return [1.0, eos], given
    if "eos_coef" in official_config.cgdetr_side_fields(side):
        raise ValueError(f"--cgdetr-config: eos_coef {given}, but {name} holds {eos}")
    return [1.0, eos], eos


def convert_videochat_tpo(
    src: str | Path,
    out: str | Path,
    *,
    llm_config: str | Path | None = None,
    qformer_config: str | Path | None = None,
    sam2_config: str | Path | None = None,
    cgdetr_config: str | Path | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert the official folder `src` into the tpo inference folder `out` (atomically)."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json: not an official release folder")
    source_config = _read_json(src / "config.json", "config")
    assert source_config is not None
    source = OfficialSource(src)
    floats = {d for d, _ in source.specs.values() if d.is_floating_point}
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cast = DTYPES[dtype] if dtype else (floats.pop() if len(floats) == 1 else torch.float32)
    sam2_file = _sam2_yaml(sam2_config)
    cgdetr_side = _read_json(cgdetr_config, "--cgdetr-config")
    weight = criterion_weight(source, cgdetr_side)
    if weight is not None:
        cgdetr_side = {**official_config.cgdetr_side_fields(cgdetr_side), "eos_coef": weight[1]}
    cfg, pending = converted_config(
        source_config,
        source.specs,
        llm_side=_read_json(llm_config, "--llm-config"),
        qformer_side=_read_json(qformer_config, "--qformer-config"),
        cgdetr_side=cgdetr_side,
        sam2_image_size=official_config.sam2_image_size(sam2_file),
        where=str(src / "config.json"),
    )
    tmp = replace_folder(out, FOLDER_FILES)
    (tmp / TOKENIZER_DIR).mkdir()
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / TOKENIZER_DIR / name)
    shutil.copyfile(sam2_file, tmp / SAM2_FILE)
    pairs = task_pairs()
    llm = dataclasses.replace(cfg.model.llm, tokenizer=str(tmp / TOKENIZER_DIR))
    ids = TaskTokenIds.from_tokenizer(load_tokenizer(llm, pairs), pairs)
    plan = plan_conversion(source.specs, [p.content for p in pairs], list(ids.all), cast)
    check_against_model(plan, dataclasses.replace(cfg.model, llm=llm), where=str(src))
    report = ConversionReport(Path(out), dtype=str(cast).removeprefix("torch."))
    report.modes_pending = pending
    writer = StreamedSafetensors(
        tmp / MODEL_FILE, plan.specs, metadata={"format": "tpo-inference-1"}
    )
    kept: dict[str, torch.Tensor] = {}
    vectors: dict[str, torch.Tensor] = {}
    bar = tqdm(source.tensors(), total=len(source.specs), desc="convert", disable=not progress)
    for name, tensor in bar:
        to = cast if tensor.is_floating_point() else tensor.dtype
        if name in plan.kept:
            kept[name] = tensor
        elif name == layout.CRITERION_WEIGHT:
            report.mapped += 1  # read by criterion_weight into the config
        elif name in plan.content_rows:
            vectors[name] = tensor.reshape(-1)
            report.mapped += 1
        elif name == layout.EMBED:
            writer.write(layout.EMBED_BASE, tensor.to(to))
            writer.write(layout.EMBED_DELTA, tensor[plan.delta_rows].to(to))
            report.mapped += 1
        else:
            writer.write(layout.to_tpo(name), tensor.to(to))
            report.mapped += 1
    rows = sorted(plan.content_rows.items(), key=lambda kv: kv[1])
    writer.write(layout.CONTENT, torch.stack([vectors[n] for n, _ in rows]).to(cast))
    writer.close()
    report.written = len(plan.specs)
    report.kept = dict(Counter(_group(n) for n in plan.kept))
    save_file(kept, str(tmp / UNMAPPED_FILE), metadata={"format": "videochat-tpo-unmapped"})
    record = {
        "format": "videochat-tpo",
        "config": source_config,
        "tensors": [
            [n, str(d).removeprefix("torch."), list(s), source.shard[n]]
            for n, (d, s) in source.specs.items()
        ],
        "sharded": (src / INDEX_FILE).is_file(),
        "config_text": (src / "config.json").read_text(),
        "metadata": source.metadata,
        "content_rows": plan.content_rows,
        "delta_rows": plan.delta_rows,
        "cgdetr": official_config.cgdetr_fields(cgdetr_side),
        "criterion_weight": None if weight is None else weight[0],
        "modes_pending": pending,
    }
    (tmp / OFFICIAL_FILE).write_text(json.dumps(record, indent=1))
    (tmp / CONFIG_FILE).write_text(to_yaml(cfg))  # its file values are "./"-relative
    commit_folder(tmp, out)
    return report
