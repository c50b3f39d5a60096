"""The whole model for training: the MLLM, its heads and the multi-task criterion.

`TPOModel(mllm, heads, criterion)` routes each content-token query to its head with the
inputs that head needs, and sums LM and head losses. Built by `tpo.train.builders`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from tpo.model.mllm import HEADS, MLLM
from tpo.model.prompt import VISUAL_TOKEN_ID
from tpo.model.sharding import zero_through_all


@dataclass
class TrainBatch:
    """A collated training batch.

    frames `[b, f, 3, H, W]` normalised; input_ids / attention_mask / labels `[b, s]`;
    targets: per sample a dict keyed by head name ("temporal", "region", "mask") holding that
    head's targets (a sample's content tokens without targets train only the LM);
    temporal_frames: per sample with temporal targets, the temporal head's normalised frames
    `[t, 3, H, W]` at `temporal_times[i]` `[t]` s of video time (None for other samples), which
    the model encodes; `durations[i]` s / `clip_starts[i]` s give the clip they are scored in;
    videos: the video path of each sample (a name only: the model reads no file);
    box_frames `[b]` long: position in f of the frame a region question asks about (-1: none);
    mask_frames: per sample, uint8 frames `[k, 3, H0, W0]` (the annotated sampled frames) for
    the mask head, with `mask_targets` per sample bool `[k, H0, W0]` inside `targets`.
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
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record, reason) met on the way

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> TrainBatch:
        """Move tensors to `device`; frames take the compute `dtype`, targets stay fp32."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if torch.is_tensor(v):
                v = v.to(device, dtype) if f.name == "frames" else v.to(device)
            moved[f.name] = v
        moved["temporal_frames"] = [
            None if f is None else f.to(device, dtype) for f in self.temporal_frames
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


class TPOModel(nn.Module):
    """MLLM + heads + criterion; `forward(batch)` returns the total loss and named losses.

    `lm_weight` 0 skips the LM loss (stage 2); `head_losses` False skips the heads (stage 1).
    `temporal_features.encode_frames(frames [t, 3, H, W]) -> feats [t, d]` encodes the temporal
    head's frames of the batch (a `tpo.heads.temporal_features.FrameFeatureCache`).
    `alignment` (a `tpo.model.alignment.VideoTextAlignment`) adds `align_weight` x its
    video-text contrastive loss, for a vision side that starts random.
    """

    def __init__(
        self,
        mllm: MLLM,
        heads: dict[str, nn.Module],
        criterion: nn.Module,
        *,
        temporal_features=None,
        lm_weight: float = 1.0,
        head_losses: bool = True,
        alignment: nn.Module | None = None,
        align_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.mllm = mllm
        self.heads = nn.ModuleDict(heads)
        self.criterion = criterion
        self.temporal_features = temporal_features
        self.lm_weight, self.head_losses = lm_weight, head_losses
        self.alignment, self.align_weight = alignment, align_weight

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MLLM's groups plus one group per head."""
        groups = dict(self.mllm.trainable_groups())
        for head in self.heads.values():
            groups.update(head.trainable_groups())
        return groups

    def _temporal(self, batch: TrainBatch, hidden: torch.Tensor, samples: list[int]):
        feats, stamps, durs, masks = [], [], [], []
        for i in samples:
            frames = batch.temporal_frames[i] if i < len(batch.temporal_frames) else None
            if frames is None:
                raise ValueError(
                    f"TPOModel: sample {i} ({batch.videos[i]}) has temporal targets but no "
                    "temporal_frames (build its dataset with feature_rate)"
                )
            f = self.temporal_features.encode_frames(frames)
            ts = batch.temporal_times[i] - batch.clip_starts[i]
            feats.append(f)
            stamps.append(ts)
            masks.append((ts >= 0) & (ts <= batch.durations[i]))
            durs.append(batch.durations[i])
        t = max(len(ts) for ts in stamps)
        device = hidden.device

        def pad(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
            extra = t - x.shape[0]
            return torch.cat([x, x.new_full((extra, *x.shape[1:]), value)]) if extra else x

        feats_t = torch.stack([pad(f) for f in feats]).to(device)
        stamps_t = torch.stack([pad(s) for s in stamps]).to(device)
        mask_t = torch.stack([pad(m, False) for m in masks]).to(device)
        out = self.heads["temporal"](
            hidden, feats_t, stamps_t, torch.tensor(durs, device=device), mask_t
        )
        return out, stamps

    def forward(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Total loss under "loss" plus every named loss (for logging)."""
        use_lm = self.lm_weight > 0
        out = self.mllm(
            batch.frames,
            batch.input_ids,
            batch.attention_mask,
            labels=batch.labels if use_lm else None,
        )
        head_outputs, targets, kept = {}, [], []
        if self.head_losses:
            for h, name in enumerate(HEADS):
                if name not in self.heads:
                    continue
                sel = (out.task_head == h).nonzero()[:, 0]
                sel = [int(k) for k in sel if name in batch.targets[int(out.task_sample[k])]]
                if not sel:
                    continue
                idx = torch.tensor(sel, device=out.task_hidden.device)
                hidden = out.task_hidden[idx]
                samples = [int(out.task_sample[k]) for k in sel]
                tg = [batch.targets[i][name] for i in samples]
                if name == "temporal":
                    head_outputs[name], stamps = self._temporal(batch, hidden, samples)
                    tg = [_saliency_on(t, s) for t, s in zip(tg, stamps)]
                elif name == "region":
                    head_outputs[name] = self.heads[name](
                        hidden, _frame_patches(out, batch, samples)
                    )
                else:
                    frames = [batch.mask_frames[i] for i in samples]
                    head_outputs[name] = self.heads[name](
                        hidden, frames, [batch.videos[i] for i in samples]
                    )
                targets.extend(tg)
                kept.extend([h] * len(sel))
        # targets were gathered head by head, in the order the criterion routes them
        task_head = torch.tensor(kept, dtype=torch.long, device=batch.input_ids.device)
        total, losses = self.criterion(
            head_outputs,
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


def _frame_patches(out, batch: TrainBatch, samples: list[int]) -> torch.Tensor | None:
    """Patches of the asked frame of each region sample `[m, p, d_v]`."""
    if out.vision is None or batch.box_frames is None:
        return None
    rows = torch.tensor(samples)
    return out.vision.frame_patches(rows, batch.box_frames.cpu()[rows].clamp(min=0))


def _saliency_on(target: dict, stamps: torch.Tensor) -> dict:
    """Map per-2-s-clip saliency scores onto the head's feature timestamps."""
    if target.get("saliency") is None:
        return target
    clips = target["saliency"]
    idx = (stamps.clamp(min=0) // 2).long().clamp(max=len(clips) - 1).to(clips.device)
    return {**target, "saliency": clips[idx]}
