"""The stored segmentation-embedding preferences (P_s): one sample's `SegPreference`, the
loader of a collection folder and the rebuild of the clean model input for the objective.

A collection folder holds `index.jsonl` (one line per sample: id, file, video, expression,
clean_score, mean_score and the settings n, seed, n_rects, noise_std) and one safetensors file per sample with tensors
`embeddings [n, d]` float32, `scores [n]`, `tiers [n]` int64 (0 high, 1 medium, 2 low),
`clean_embedding [d]`, `clean_score []`, `frame_indices [f]`, `mask_frame_indices [k]` and
string metadata (format, id, dataset, qid, video, expression, question, n, seed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tpo.data.dataset import VideoTaskDataset
from tpo.data.records import Record
from tpo.model.prompt import PromptCollator
from tpo.model.tpo_model import TrainBatch
from tpo.train.data import collate

INDEX_FILE = "index.jsonl"
FORMAT = "tpo-popen-seg-1"
TIER_CODES = {"high": 0, "medium": 1, "low": 2}
TIER_NAMES = {v: k for k, v in TIER_CODES.items()}


def sample_id(record: Record) -> str:
    """The id of a record across a manifest: '{dataset}/{qid}'."""
    return f"{record.dataset}/{record.qid}"


@dataclass
class SegPreference:
    """The segmentation-embedding preferences of one mask sample.

    embeddings `[n, d]` float32: `<tracking>` hidden states of the n perturbed runs; scores `[n]`
    their masks' quality (`mask_iou_score`); tiers: n of "high"/"medium"/"low";
    clean_embedding `[d]`, clean_score: the unperturbed run.
    id: '{dataset}/{qid}' of the manifest record (`sample_id`); frame_indices `[f]` long: the
    video frames the LLM saw (the dataset's 'middle' sampling of the record);
    mask_frame_indices `[k]` long: the frames the masks were scored on; file: its safetensors.

    Rebuilding the clean model input (for the current embedding h of the objective): load the
    manifest's records (`tpo.data.manifest.load_records`), key them by `sample_id`, then
    `batch = clean_batch(prefs, records, collator, img_size=cfg.model.vision.img_size)` with the
    model's collator (`tpo.model.build.build_collator`) gives a `TrainBatch` whose row i is
    prefs[i]'s prompt + answer on its clean frames; `model.mllm(batch.frames, batch.input_ids,
    batch.attention_mask).for_head(mask_index)` yields h, one row per preference (in order).
    """

    id: str
    dataset: str
    qid: str
    video: str
    expression: str
    question: str
    embeddings: torch.Tensor
    scores: torch.Tensor
    tiers: list[str]
    clean_embedding: torch.Tensor
    clean_score: float
    frame_indices: torch.Tensor
    mask_frame_indices: torch.Tensor
    file: Path


def _read_index(path: Path) -> list[dict]:
    """Entries of an index.jsonl (read only); a bad line raises ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such preference index (run `tpo popen collect`)")
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{lineno}: not a JSON line ({err}); rerun the collection to repair a "
                "crash-truncated index"
            ) from err
        if not isinstance(entry, dict) or not {"id", "file"} <= set(entry):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with keys 'id' and 'file'")
        entries.append(entry)
    return entries


def _need(tensors: dict, key: str, shape: tuple, file: Path) -> torch.Tensor:
    """`tensors[key]` with `shape` (None: any size on that axis), else ValueError naming file."""
    t = tensors.get(key)
    if t is None:
        raise ValueError(f"{file}: missing tensor {key!r} (expected shape {shape})")
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        raise ValueError(f"{file}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _load_one(file: Path, entry_id: str) -> SegPreference:

    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: preference file of {entry_id} listed in the index is missing"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT or meta.get("id") != entry_id:
        raise ValueError(
            f"{file}: metadata format={meta.get('format')!r} id={meta.get('id')!r}, expected "
            f"{FORMAT!r} and the index's id {entry_id!r}"
        )
    emb = _need(tensors, "embeddings", (None, None), file)
    n, d = emb.shape
    scores = _need(tensors, "scores", (n,), file)
    codes = _need(tensors, "tiers", (n,), file)
    if not bool(((codes >= 0) & (codes <= 2)).all()):
        raise ValueError(f"{file}: tier codes must be 0 (high), 1 (medium) or 2 (low)")
    return SegPreference(
        id=entry_id,
        dataset=meta.get("dataset", ""),
        qid=meta.get("qid", ""),
        video=meta.get("video", ""),
        expression=meta.get("expression", ""),
        question=meta.get("question", ""),
        embeddings=emb.float(),
        scores=scores.float(),
        tiers=[TIER_NAMES[int(c)] for c in codes],
        clean_embedding=_need(tensors, "clean_embedding", (d,), file).float(),
        clean_score=float(_need(tensors, "clean_score", (), file)),
        frame_indices=_need(tensors, "frame_indices", (None,), file).long(),
        mask_frame_indices=_need(tensors, "mask_frame_indices", (None,), file).long(),
        file=file,
    )


def load_segmentation_preferences(out_dir: str | Path) -> list[SegPreference]:
    """Every sample of a collection folder, in index order; errors name the bad file or line."""
    out_dir = Path(out_dir)
    return [_load_one(out_dir / e["file"], str(e["id"])) for e in _read_index(out_dir / INDEX_FILE)]


def clean_batch(
    prefs: Sequence[SegPreference],
    records: Mapping[str, Record] | Sequence[Record],
    collator: PromptCollator,
    *,
    img_size: int,
) -> TrainBatch:
    """The clean model input of `prefs` as one TrainBatch (row i: prefs[i]).

    records: the manifest's records, keyed by `sample_id` (a list is keyed here). Each record is
    re-sampled as the collection did (`VideoTaskDataset(..., sampling="middle")` with
    f = len(frame_indices)); a ValueError names the preference file when the record is missing or
    the frames differ from the stored `frame_indices`.
    """

    if not prefs:
        raise ValueError("clean_batch: no preferences")
    if not isinstance(records, Mapping):
        records = {sample_id(r): r for r in records}
    samples = []
    for pref in prefs:
        record = records.get(pref.id)
        if record is None:
            raise ValueError(f"{pref.file}: record {pref.id!r} is not among the given records")
        data = VideoTaskDataset(
            [record],
            num_frames=len(pref.frame_indices),
            img_size=img_size,
            sampling="middle",
            strict=True,
        )
        sample = data.build(0)
        if not torch.equal(torch.as_tensor(sample.indices, dtype=torch.int64), pref.frame_indices):
            raise ValueError(
                f"{pref.file}: 'middle' sampling of {pref.id} gives frames "
                f"{sample.indices.tolist()}, but the preferences were collected on "
                f"{pref.frame_indices.tolist()}"
            )
        samples.append(sample)
    return collate(samples, collator)
