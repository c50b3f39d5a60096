"""The whole model: the MLLM and its task heads; and its training form with the criterion.

`TPOModel(mllm, heads)` is the same model for training and inference (built by
`tpo.heads.build.build_model`); its `forward(batch)` routes each content-token query to its
head (the `TaskHead` protocol, `tpo.model.task_head`) and returns the heads' outputs with their
targets. `TPOTrainModel` adds the criterion and the stage's loss switches (built beside the
model for training only, as DETR keeps `SetCriterion` apart), with the same parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import nn

from tpo.data.video import normalize_uint8
from tpo.model.mllm import MLLM, MLLMOutput
from tpo.model.prompt import VISUAL_TOKEN_ID
from tpo.model.sharding import zero_through_all
from tpo.model.task_head import HeadQueries, HeadSample, TaskHead


class FrameFeatureSource(Protocol):
    """Per-frame features for the heads (`tpo.heads.temporal_features.FrameFeatureCache`)."""

    def __call__(self, video: str, duration: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: `(feats [t, d], timestamps [t] s)` of a video file."""
        ...

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Training: features `[t, d]` (or `[t, p, d]`) of decoded frames `[t, 3, H, W]`."""
        ...


@dataclass
class TrainBatch:
    """A collated training batch.

    frames `[b, f, 3, H, W]` normalised, or uint8 resized frames that `to` normalises on the
    device (the training loader's; the same goes for `temporal_frames`); input_ids / attention_mask / labels `[b, s]`;
    targets: per sample a dict keyed by head name holding that head's targets (a sample's
    content tokens without targets train only the LM);
    temporal_frames: per sample with temporal targets, the temporal head's normalised frames
    `[t, 3, H, W]` at `temporal_times[i]` `[t]` s of video time (None for other samples), which
    the model encodes; `durations[i]` s / `clip_starts[i]` s give the clip they are scored in;
    videos: the video path of each sample (a name only: the model reads no file);
    box_frames `[b]` long: position in f of the frame a region question asks about (-1: none);
    mask_frames: per sample, uint8 frames `[k, 3, H0, W0]` (the annotated sampled frames) for
    the mask head, with `mask_targets` per sample bool `[k, H0, W0]` inside `targets`;
    query_ids: per sample the token ids `[l]` int64 of its question (no special tokens; None:
    none; they stay on the CPU in `to`); qids: per sample its annotation's question id.
    """

    frames: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    targets: list[dict] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    clip_starts: list[float] = field(default_factory=list)
    box_frames: torch.Tensor | None = None
    mask_frames: list[torch.Tensor | None] = field(default_factory=list)
    temporal_frames: list[torch.Tensor | None] = field(default_factory=list)
    temporal_times: list[torch.Tensor | None] = field(default_factory=list)
    query_ids: list[torch.Tensor | None] = field(default_factory=list)
    qids: list[str] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record, reason) met on the way

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> TrainBatch:
        """Move tensors to `device`; frames take the compute `dtype`, targets stay fp32."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v):
                v = _model_frames(v, device, dtype) if f.name == "frames" else v.to(device)
            moved[f.name] = v
        moved["temporal_frames"] = [
            None if f is None else _model_frames(f, device, dtype) for f in self.temporal_frames
        ]
        moved["targets"] = [
            {
                h: {k: (t.to(device) if torch.is_tensor(t) else t) for k, t in d.items()}
                for h, d in tgt.items()
            }
            for tgt in self.targets
        ]
        return TrainBatch(**moved)

    def pin_memory(self) -> TrainBatch:
        """The batch with its frames in pinned memory (DataLoader `pin_memory`)."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("frames", "input_ids", "attention_mask", "labels"):
            pinned[key] = pinned[key].pin_memory()
        for key in ("mask_frames", "temporal_frames"):
            pinned[key] = [None if f is None else f.pin_memory() for f in pinned[key]]
        return TrainBatch(**pinned)


def _model_frames(frames: torch.Tensor, device: str | torch.device, dtype: torch.dtype):
    """Frames on `device` in `dtype`; uint8 frames move as uint8 and are normalised there."""
    if frames.dtype == torch.uint8:
        return normalize_uint8(frames.to(device, non_blocking=True)).to(dtype)
    return frames.to(device, dtype)


@dataclass
class TPOOutput:
    """The training forward's outputs: the MLLM's (`mllm`), and per head that had queries with
    targets its output (`head_outputs[name]`) and one target dict per query (`head_targets`)."""

    mllm: MLLMOutput
    head_outputs: dict[str, Any] = field(default_factory=dict)
    head_targets: dict[str, list[dict]] = field(default_factory=dict)


class TPOModel(nn.Module):
    """MLLM + task heads (`TaskHead`s by name); the same model serves training and inference.

    `temporal_features` (a `tpo.heads.temporal_features.FrameFeatureCache`) gives per-frame
    features, offered to the heads through `HeadSample.frame_features`: at inference
    `temporal_features(video, duration) -> (feats [t, d], timestamps [t])` reads the video; in
    training `temporal_features.encode_frames(frames [t, 3, H, W]) -> feats [t, d]` encodes the
    frames the data pipeline decoded into the batch.
    """

    def __init__(
        self,
        mllm: MLLM,
        heads: Mapping[str, TaskHead],
        *,
        temporal_features: FrameFeatureSource | None = None,
    ) -> None:
        super().__init__()
        self.mllm = mllm
        self.heads = nn.ModuleDict(dict(heads))
        self.temporal_features = temporal_features
        for name in heads:
            mllm.task_tokens.index(name)  # every head has its task tokens

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MLLM's groups plus one group per head."""
        groups = dict(self.mllm.trainable_groups())
        for head in self.heads.values():
            groups.update(head.trainable_groups())
        return groups

    def frame_features(self, batch: TrainBatch, i: int):
        """Per-frame features of row `i`'s clip, `() -> (feats [t, d], times [t] s of the clip)`,
        None when the row has no temporal frames.

        The one place the training forward gathers temporal features: it encodes the frames the
        data pipeline decoded (`batch.temporal_frames[i]`); the forward reads no file."""
        if self.temporal_features is None or i >= len(batch.temporal_frames):
            return None
        frames, times = batch.temporal_frames[i], batch.temporal_times[i]
        if frames is None or times is None:
            return None
        start = batch.clip_starts[i]

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            return self.temporal_features.encode_frames(frames), times - start

        return compute

    def head_samples(self, batch: TrainBatch) -> list[HeadSample]:
        """The HeadSample of each row of a training batch."""
        box = None if batch.box_frames is None else batch.box_frames.cpu().clamp(min=0).tolist()
        return [
            HeadSample(
                duration=batch.durations[i] if i < len(batch.durations) else 0.0,
                clip_start=batch.clip_starts[i] if i < len(batch.clip_starts) else 0.0,
                video=batch.videos[i] if i < len(batch.videos) else None,
                asked_frame=None if box is None else int(box[i]),
                frame_features=self.frame_features(batch, i),
                mask_frames=batch.mask_frames[i] if i < len(batch.mask_frames) else None,
                query_ids=batch.query_ids[i] if i < len(batch.query_ids) else None,
                qid=batch.qids[i] if i < len(batch.qids) else None,
            )
            for i in range(len(batch))
        ]

    def route(self, out, samples: list[HeadSample], targets: list[dict] | None = None):
        """`{name: (HeadQueries, targets of each query)}` for the heads with queries in `out` (an
        MLLMOutput or GenerationOutput); with `targets` (per row), only queries whose row has
        targets for that head, else every query."""
        routed = {}
        for name in self.heads:
            index = self.mllm.task_tokens.index(name)
            sel = (out.task_head == index).nonzero()[:, 0].tolist()
            rows = [int(out.task_sample[k]) for k in sel]
            if targets is not None:
                keep = [j for j, r in enumerate(rows) if name in targets[r]]
                sel, rows = [sel[j] for j in keep], [rows[j] for j in keep]
            if not sel:
                continue
            idx = torch.tensor(sel, device=out.task_hidden.device)
            queries = HeadQueries(
                out.task_hidden[idx], rows, [samples[r] for r in rows], out.vision
            )
            routed[name] = (queries, None if targets is None else [targets[r][name] for r in rows])
        return routed

    def forward(self, batch: TrainBatch, *, lm_loss: bool = True, heads: bool = True) -> TPOOutput:
        """The MLLM on `batch` (its LM loss when `lm_loss`) and, when `heads`, every head on its
        queries that have targets."""
        out = self.mllm(
            batch.frames,
            batch.input_ids,
            batch.attention_mask,
            labels=batch.labels if lm_loss else None,
        )
        result = TPOOutput(out)
        if not heads:
            return result
        routed = self.route(out, self.head_samples(batch), batch.targets)
        for name, (queries, targets) in routed.items():
            head = self.heads[name]
            inputs = head.gather(queries)
            result.head_targets[name] = head.prepare_targets(targets, inputs)
            result.head_outputs[name] = head.run(queries.hidden, inputs)
        return result


class TPOTrainModel(TPOModel):
    """TPOModel + criterion; `forward(batch)` returns the total loss and named losses.

    `lm_weight` 0 skips the LM loss (stage 2); `head_losses` False skips the heads (stage 1).
    `alignment` (a `tpo.model.alignment.VideoTextAlignment`) adds `align_weight` x its
    video-text contrastive loss, for a vision side that starts random. Parameter names are the
    TPOModel's (the criterion's buffers are not exported).
    """

    def __init__(
        self,
        mllm: MLLM,
        heads: Mapping[str, TaskHead],
        criterion: nn.Module,
        *,
        temporal_features=None,
        lm_weight: float = 1.0,
        head_losses: bool = True,
        alignment: nn.Module | None = None,
        align_weight: float = 0.0,
    ) -> None:
        super().__init__(mllm, heads, temporal_features=temporal_features)
        self.criterion = criterion
        self.lm_weight, self.head_losses = lm_weight, head_losses
        self.alignment, self.align_weight = alignment, align_weight

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Total loss under "loss" plus every named loss (for logging)."""
        use_lm = self.lm_weight > 0
        res = super().forward(batch, lm_loss=use_lm, heads=self.head_losses)
        out = res.mllm
        targets, kept = [], []
        for name, tg in res.head_targets.items():  # in head order, as the criterion routes them
            targets.extend(tg)
            kept.extend([self.mllm.task_tokens.index(name)] * len(tg))
        task_head = torch.tensor(kept, dtype=torch.long, device=batch.input_ids.device)
        total, losses = self.criterion(
            res.head_outputs,
            targets,
            task_head,
            lm_loss=out.loss if use_lm else None,
            heads=self.heads if self.head_losses else None,
        )
        if self.alignment is not None and self.align_weight > 0 and out.visual is not None:
            has_video = (batch.input_ids == VISUAL_TOKEN_ID).any(1)
            align = self.alignment(out.visual, batch.labels, self.mllm.llm.embed, has_video)
            losses["align"] = align
            total = total + self.align_weight * align
        # every trainable parameter joins the graph (a zero gradient when unused this step)
        total = total + zero_through_all(self)
        return {"loss": total, **{f"loss/{k}": v.detach() for k, v in losses.items()}}
