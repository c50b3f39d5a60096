"""POPEN preference collection: the segmentation-embedding set P_s and the textual set P_t.

P_s (`collect_segmentation`): for each mask sample, the model is run teacher-forced on its
prompt + ground-truth answer (`... <track_begin><tracking>.`), once on the clean frames and `n`
times on perturbed frames (`tpo.popen.perturb`). The `<tracking>` last-layer hidden state is the
segmentation embedding; it equals what greedy generation gives when the model emits the same
answer (tests/test_generate.py). Each embedding's mask is decoded by the mask head on the clean
annotated frames and scored by IoU with the ground truth (`mask_iou_score`); the scores are
ranked into high / medium / low tiers (`tpo.popen.curriculum.rank_tiers`).

Output folder: one safetensors file per sample (written atomically) and `index.jsonl`, one line
per finished sample, appended with one write + fsync after its file is in place. A rerun skips
the ids already in the index; each sample's noise comes from a generator seeded by
(seed, sample id), so results depend neither on the order of the samples nor on resumption.

P_t (`collect_textual`, in `tpo.popen.collect_text`, re-exported here): the model's greedy answer
y paired with the ground truth y_c where they differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Sized
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tpo.data.dataset import Sample
from tpo.data.templates import MASK_QUESTIONS
from tpo.data.video import open_source
from tpo.eval.runner_io import JsonlLog
from tpo.heads.mask import MaskHead
from tpo.heads.sam2_backend import ImageFeatures, frame_key
from tpo.model.prompt import PromptCollator
from tpo.model.tpo_model import TPOModel, TrainBatch
from tpo.popen.collect_text import collect_textual, corrupt_answer, is_text_answer
from tpo.popen.curriculum import rank_tiers
from tpo.popen.perturb import perturb_frames
from tpo.popen.seg_store import (
    FORMAT,
    INDEX_FILE,
    TIER_CODES,
    SegPreference,
    clean_batch,
    load_segmentation_preferences,
    sample_id,
)
from tpo.train.data import collate

__all__ = [
    "INDEX_FILE",
    "TIER_CODES",
    "SegPreference",
    "clean_batch",
    "collect_segmentation",
    "collect_textual",
    "corrupt_answer",
    "is_text_answer",
    "load_segmentation_preferences",
    "mask_iou_score",
    "sample_id",
]

log = logging.getLogger(__name__)


def mask_iou_score(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Quality of predicted masks `[k, H, W]` bool against ground truth `[k, H, W]` bool.

    Mean IoU over the frames where the object is visible (non-empty GT). When it is visible on
    none of them, the score is the fraction of frames predicted empty (empty vs empty = 1, any
    predicted pixel on an empty frame = 0).
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(
            f"mask_iou_score: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be "
            "[k, H, W]"
        )
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    visible = gt.any(1)
    if not bool(visible.any()):
        return float((~pred.any(1)).float().mean())
    p, g = pred[visible], gt[visible]
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return float((inter / union).mean())


def _sample_seed(seed: int, sid: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{sid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _file_name(sid: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sid).strip("_") or "sample"
    return f"{safe}-{zlib.crc32(sid.encode()):08x}.safetensors"


def _expression(question: str) -> str:
    """The referring expression inside a mask question (the question itself if no template fits)."""

    for template in MASK_QUESTIONS:
        head, _, tail = template.partition("{expression}")
        if (
            question.startswith(head)
            and question.endswith(tail)
            and len(question) > len(head + tail)
        ):
            return question[len(head) : len(question) - len(tail)]
    return question


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # function-level: safetensors only when a file is written
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tracking_rows(model: TPOModel, frames: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
    """`[m, d]` the first `<tracking>` hidden state of each row for frames `[m, f, 3, H, W]`."""
    p = next(model.mllm.llm.parameters())
    m = len(frames)
    out = model.mllm(
        frames.to(p.device, p.dtype),
        batch.input_ids.expand(m, -1).to(p.device),
        batch.attention_mask.expand(m, -1).to(p.device),
    )
    hidden, rows = out.for_head(model.mllm.task_tokens.index(MaskHead.name))
    first = [int((rows == r).nonzero()[0, 0]) for r in range(m) if bool((rows == r).any())]
    if len(first) != m:
        raise ValueError("the answer holds no <tracking> token")
    return hidden[first].float()


def _scored_positions(sample: Sample) -> torch.Tensor | None:
    """Positions in f of the scored frames: the annotated sampled frames where the object is
    visible (all annotated ones when it is visible on none); None without annotated frames."""
    if sample.masks is None or sample.mask_valid is None or not bool(sample.mask_valid.any()):
        return None
    valid = sample.mask_valid
    visible = valid & sample.masks.flatten(1).any(1)
    return (visible if bool(visible.any()) else valid).nonzero()[:, 0]


def _score(
    model: TPOModel, queries: torch.Tensor, sample: Sample, pick: torch.Tensor, chunk: int
) -> torch.Tensor:
    """`[m]` mask quality of each query `[m, d]` on the sample's frames at positions `pick`.

    The masks are those of `MaskHead.forward` (its prompt, SAM2's single-mask decoder on each
    frame); the frames' features are computed once and `chunk` queries x k frames are decoded in
    one call instead of one call per query (1.5x faster on the tiny model on a CPU).
    """

    indices = sample.indices[pick.numpy()]
    frames = open_source(sample.record.video).read(indices)  # uint8 [k, 3, H0, W0]
    gt = sample.masks[pick]
    head = model.heads[MaskHead.name]
    p = next(head.parameters())
    keys = [frame_key(sample.record.video, f, int(i)) for f, i in zip(frames, indices)]
    feats = head.backend.image_features(frames, keys)
    k = len(frames)
    scores = []
    for c in range(0, len(queries), chunk):
        sparse, dense = head.prompt(queries[c : c + chunk].to(p.device, p.dtype))
        m = len(sparse)
        rows = ImageFeatures(
            feats.embed.repeat(m, 1, 1, 1), [h.repeat(m, 1, 1, 1) for h in feats.high_res]
        )
        logits = head.backend.decode(
            sparse.repeat_interleave(k, 0),
            rows,
            None if dense is None else dense.repeat_interleave(k, 0),
        )  # [m * k, h, w], query-major
        up = F.interpolate(
            logits[:, None].float(), size=gt.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        for pred in (up.cpu() > 0).view(m, k, *gt.shape[-2:]):
            scores.append(mask_iou_score(pred, gt))
    return torch.tensor(scores, dtype=torch.float32)


def _collect_one(
    model: TPOModel, sample: Sample, pick: torch.Tensor, collator: PromptCollator, n: int,
    seed: int, chunk: int, noise: dict,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The tensors of one sample's preference file (masks scored at positions `pick`)."""

    sid = sample_id(sample.record)
    batch = collate([sample], collator)
    clean = batch.frames[0]
    gen = torch.Generator().manual_seed(_sample_seed(seed, sid))
    inputs = [clean] + [perturb_frames(clean, gen, **noise) for _ in range(n)]
    hidden = torch.cat(
        [
            _tracking_rows(model, torch.stack(inputs[c : c + chunk]), batch).cpu()
            for c in range(0, len(inputs), chunk)
        ]
    )
    scores = _score(model, hidden, sample, pick, chunk)
    tiers = rank_tiers([float(s) for s in scores[1:]])
    if len(tiers) != n or set(tiers) - set(TIER_CODES):
        raise ValueError(f"rank_tiers gave {tiers!r} for {n} scores; expected high/medium/low")
    return {
        "embeddings": hidden[1:].contiguous(),
        "scores": scores[1:].contiguous(),
        "tiers": torch.tensor([TIER_CODES[t] for t in tiers], dtype=torch.int64),
        "clean_embedding": hidden[0].contiguous(),
        "clean_score": scores[0].clone(),
        "frame_indices": torch.as_tensor(sample.indices, dtype=torch.int64),
        "mask_frame_indices": torch.as_tensor(sample.indices[pick.numpy()], dtype=torch.int64),
    }


@torch.no_grad()
def collect_segmentation(
    model: TPOModel,
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    collator: PromptCollator,
    n: int = 30,
    seed: int = 0,
    limit: int | None = None,
    chunk: int = 8,
    n_rects: int = 3,
    noise_std: float = 1.0,
) -> Path:
    """Collect P_s for mask `samples` into `out_dir`; returns the path of its index.

    samples: `tpo.data.dataset.Sample`s of mask records from a `VideoTaskDataset` with
    'middle' sampling (so that `clean_batch` can rebuild them); samples of other tasks are
    skipped (logged). collator: the model's `PromptCollator`. n: perturbed runs per sample;
    seed: the noise seed (per sample, seeded by (seed, sample id)); limit: stop once the index
    holds this many samples; chunk: rows per model / mask-head call; n_rects, noise_std: the
    perturbation (`tpo.popen.perturb.perturb_frames`). Ids already in the index are skipped;
    an index written with other settings (n, seed, n_rects, noise_std) raises ValueError.
    """
    if n < 1:
        raise ValueError(f"collect_segmentation: n must be >= 1, got {n}")
    if MaskHead.name not in model.heads:
        raise ValueError("collect_segmentation: the model has no mask head")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = JsonlLog(out_dir / INDEX_FILE, "id")
    done = index.recover()
    settings = {"n": n, "seed": seed, "n_rects": n_rects, "noise_std": noise_std}
    for key, entry in done.items():
        theirs = {k: entry.get(k) for k in settings}
        if theirs != settings:
            raise ValueError(
                f"{index.path}: {key} was collected with {theirs}; this run asks {settings} "
                "(use another out dir)"
            )
    noise = {"n_rects": n_rects, "noise_std": noise_std}
    was_training = model.training
    model.eval()
    skipped = 0
    total = limit if limit is not None else (len(samples) if isinstance(samples, Sized) else None)
    bar = tqdm(total=total, desc="popen P_s", unit="sample", initial=len(done))
    try:
        for sample in samples:
            if limit is not None and len(done) >= limit:
                break
            sid = sample_id(sample.record)
            if sid in done:
                continue
            pick = _scored_positions(sample) if sample.record.task == "mask" else None
            if pick is None:
                skipped += 1
                continue
            try:
                tensors = _collect_one(model, sample, pick, collator, n, seed, chunk, noise)
            except ValueError as err:
                raise ValueError(f"{sample.record.source}: sample {sid}: {err}") from err
            name = _file_name(sid)
            expression = _expression(sample.record.question)
            meta = {
                "format": FORMAT, "id": sid, "dataset": sample.record.dataset,
                "qid": sample.record.qid, "video": sample.record.video,
                "expression": expression, "question": sample.record.question,
                "n": str(n), "seed": str(seed),
            }  # fmt: skip
            _save_atomic(tensors, out_dir / name, meta)
            entry = {
                "id": sid, "file": name, "video": sample.record.video, "expression": expression,
                "clean_score": float(tensors["clean_score"]),
                "mean_score": float(tensors["scores"].mean()), **settings,
            }  # fmt: skip
            index.append([entry])
            done[sid] = entry
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    if skipped:
        log.warning("collect_segmentation: skipped %d sample(s) without annotated masks", skipped)
    return index.path
