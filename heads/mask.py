"""Mask head: the `<tracking>` query prompts SAM2; masks on sampled frames (training) or
propagated over the whole video (inference).

Training simplification: each sampled frame is decoded independently by SAM2's mask decoder
with the same prompt (image mode, no memory attention), so the loss and its gradients reach the
prompt MLP and decoder in one cheap pass. At inference the prompt seeds SAM2's video predictor on
one frame and its memory-based propagation carries the mask through the video, as the official
release does (`mask.propagation`: "embedding" seeds it exactly as the official, "mask" with the
mask tpo decodes); the memory modules are never trained here.

Importing this module builds nothing and does not import sam2 (that happens in `build_*`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.config.heads import MaskHeadConfig
from tpo.data.sample_frames import pick_mask_frames
from tpo.heads.mask_criterion import MaskCriterion, build_mask_criterion
from tpo.heads.parts import MaskTrack
from tpo.heads.sam2_backend import PROMPT_DIM, SAM2Backend, frame_key
from tpo.heads.sam2_build import build_sam2_model
from tpo.heads.tracking import TrackResult, boxes_from_masks, track_from_box
from tpo.model.task_head import HeadQueries, HeadTargets, TaskHead

if TYPE_CHECKING:
    from tpo.config.schema import ModelConfig
    from tpo.data.dataset import Sample

__all__ = ["MaskCriterion", "MaskHead", "MaskOutput", "build_mask_criterion", "build_mask_head"]


@dataclass
class MaskOutput:
    """Predictions of the mask head for `n` `<tracking>` tokens.

    logits: per token `[k_i, h, w]` mask logits on its `k_i` frames at SAM's low resolution
        (h = w = image_size / 4); the criterion upsamples them to the ground truth's size.
    sparse: `[n, t, 256]` the sparse prompts (t = prompt_tokens).
    embed_box: normalised xyxy boxes `[m, 4]` -> SAM2's box prompt embedding `[m, 3, 256]`
        (the frozen prompt encoder), for the optional box-embedding L1.
    """

    logits: list[Tensor]
    sparse: Tensor
    embed_box: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)


@dataclass
class MaskInputs:
    """What the mask head reads in training: per query its frames `[k, 3, H, W]` and video id."""

    frames: list[Tensor]
    video_ids: list[str | None]


class MaskHead(TaskHead):
    """`<tracking>` query `[n, d_llm]` -> SAM2 prompt -> masks.

    Sparse prompt: MLP d_llm -> hidden -> t*256 reshaped `[n, t, 256]` (official: t = 3, like a
    box prompt's 2 corners + pad). Dense prompt (`dense_prompt`): a linear map of the query to
    256 channels added, constant over space, to SAM2's no-mask embedding `[n, 256, h, w]`;
    zero-initialised so training starts from SAM2's own dense input.

    Task pair `<track_begin><tracking>`; reads the sample's mask frames (training: image mode on
    the annotated frames); answers `masks`: a MaskTrack propagated by SAM2 through the given
    frames, else the sampled frames, prompted on the first given / the asked sampled frame.
    Its queries may be pooled by the preference ensemble (`poolable`).
    """

    name = "mask"
    tokens = ("<track_begin>", "<tracking>")
    poolable = True
    train_frames = 3  # annotated sampled frames per training sample that the mask loss sees

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_llm: int, d_vision: int) -> MaskHead | None:
        """From `cfg.heads.mask` (None: no mask head) with a freshly built SAM2 backend."""
        return None if cfg.heads.mask is None else build_mask_head(cfg.heads.mask, d_llm)

    @classmethod
    def targets_from(cls, sample: Sample) -> HeadTargets | None:
        """`masks` bool `[k, H0, W0]` on up to `train_frames` annotated sampled frames, which
        travel as the row's `mask_frames` (uint8, at the video's resolution)."""
        if sample.masks is None or sample.mask_valid is None or not bool(sample.mask_valid.any()):
            return None
        frames, masks = pick_mask_frames(sample, cls.train_frames)
        return HeadTargets({"masks": masks}, mask_frames=frames)

    def __init__(self, cfg: MaskHeadConfig, d_llm: int, backend: SAM2Backend):
        super().__init__()
        self.cfg = cfg
        self.d_llm = d_llm
        self.prompt_tokens = cfg.prompt_tokens
        hidden = cfg.prompt_hidden or d_llm
        self.prompt_mlp = nn.Sequential(
            nn.Linear(d_llm, hidden), nn.ReLU(), nn.Linear(hidden, cfg.prompt_tokens * PROMPT_DIM)
        )
        self.dense_proj: nn.Linear | None = None
        if cfg.dense_prompt:
            self.dense_proj = nn.Linear(d_llm, PROMPT_DIM)
            nn.init.zeros_(self.dense_proj.weight)
            nn.init.zeros_(self.dense_proj.bias)
        self.backend = backend

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """`mask_head`: the prompt MLP(s), plus SAM2's mask decoder when it trains."""
        params = list(self.prompt_mlp.parameters())
        if self.dense_proj is not None:
            params += list(self.dense_proj.parameters())
        if self.backend.train_decoder:
            params += self.backend.decoder_parameters()
        return {"mask_head": params}

    def gather(self, queries: HeadQueries) -> MaskInputs:
        """Each query's mask frames and video id (training)."""
        frames = [s.mask_frames for s in queries.samples]
        if any(f is None for f in frames):
            raise ValueError("MaskHead: a sample with mask targets has no mask frames")
        return MaskInputs(frames, [s.video for s in queries.samples])  # type: ignore[arg-type]

    def run(self, hidden: Tensor, inputs: MaskInputs) -> MaskOutput:
        """`forward` (image mode) on the gathered frames."""
        return self(hidden, inputs.frames, inputs.video_ids)

    def criterion(self) -> nn.Module:
        """BCE + Dice (+ the optional box-embedding L1) with the config's weights."""
        return build_mask_criterion(self.cfg)

    @torch.no_grad()
    def predict(self, queries: HeadQueries) -> list[dict[str, Any]]:
        """`masks`: SAM2 propagation through the given mask frames (prompted on the first), else
        through the sampled frames (prompted on the asked one, default the first), or with
        `track: video` through every frame of the video (prompted on the asked sampled frame's
        video frame, default frame 0, as the official code)."""
        parts = []
        for j, s in enumerate(queries.samples):
            if s.mask_frames is not None:
                frames, indices, first = s.mask_frames, s.mask_frame_indices, 0
            elif self.cfg.track == "video" and s.read_frames is not None and s.video_frames:
                indices = np.arange(s.video_frames)
                frames = s.read_frames(indices)
                first = 0
                if s.asked_frame is not None and s.frame_indices is not None:
                    first = int(s.frame_indices[s.asked_frame])
            elif s.read_frames is not None:
                frames, indices, first = s.read_frames(), s.frame_indices, s.asked_frame or 0
            else:
                raise ValueError("MaskHead.predict: the sample offers no frames")
            masks = self.propagate(queries.hidden[j], frames, prompt_frame=first)
            if indices is None:
                indices = range(len(masks))
            parts.append({"masks": MaskTrack(masks.cpu().numpy(), list(indices), s.fps or 1.0)})
        return parts

    def prompt(self, query: Tensor) -> tuple[Tensor, Tensor | None]:
        """Sparse `[n, t, 256]` and dense `[n, 256, h, w]` (or None) prompts of `query [n, d_llm]`."""
        if query.ndim != 2 or query.shape[1] != self.d_llm:
            raise ValueError(f"MaskHead: query must be [n, {self.d_llm}], got {tuple(query.shape)}")
        x = query.to(self.prompt_mlp[0].weight.dtype)
        sparse = self.prompt_mlp(x).view(len(x), self.prompt_tokens, PROMPT_DIM)
        dense = None
        if self.dense_proj is not None:
            base = self.backend.no_mask_dense(len(x))
            dense = base + self.dense_proj(x)[:, :, None, None].to(base.dtype)
        return sparse, dense

    def forward(
        self,
        query: Tensor,
        frames: Sequence[Tensor],
        video_ids: Sequence[str] | None = None,
        frame_indices: Sequence[Sequence[int]] | None = None,
    ) -> MaskOutput:
        """Masks on each token's sampled frames (image mode, same prompt on every frame).

        query `[n, d_llm]`; frames: per token `[k_i, 3, H_i, W_i]` RGB (uint8 or float in
        [0, 1]); video_ids / frame_indices key the image-feature cache by (video, frame index);
        without indices the key is (video, digest of the frame's pixels).
        """
        n = len(query)
        if len(frames) != n:
            raise ValueError(f"MaskHead: {len(frames)} frame stacks for {n} queries")
        if video_ids is not None and len(video_ids) != n:
            raise ValueError(f"MaskHead: {len(video_ids)} video ids for {n} queries")
        if frame_indices is not None and len(frame_indices) != n:
            raise ValueError(f"MaskHead: {len(frame_indices)} frame index lists for {n} queries")
        sparse, dense = self.prompt(query)
        logits = []
        for i, clip in enumerate(frames):
            if clip.ndim != 4 or len(clip) == 0:
                raise ValueError(
                    f"MaskHead: frames[{i}] must be [k, 3, H, W] with k >= 1, got "
                    f"{tuple(clip.shape)}"
                )
            vid = None if video_ids is None else video_ids[i]
            idx = None if frame_indices is None else list(frame_indices[i])
            if idx is not None and len(idx) != len(clip):
                raise ValueError(f"MaskHead: {len(idx)} frame indices for {len(clip)} frames")
            keys = [frame_key(vid, f, None if idx is None else idx[j]) for j, f in enumerate(clip)]
            feats = self.backend.image_features(clip, keys)
            k = len(clip)
            d = None if dense is None else dense[i : i + 1].expand(k, -1, -1, -1)
            logits.append(self.backend.decode(sparse[i : i + 1].expand(k, -1, -1), feats, d))
        return MaskOutput(logits=logits, sparse=sparse, embed_box=self.backend.box_embedding)

    @torch.no_grad()
    def propagate_logits(
        self, prompt: Tensor, frames: Tensor, prompt_frame: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(prompt-frame logits `[H, W]`, every frame's logits `[T, H, W]`) over video
        `frames [T, 3, H, W]` at its resolution, by SAM2's video predictor (frames in memory).

        prompt: the `<tracking>` query `[d_llm]` or a sparse prompt `[t, 256]`. Seeding follows
        `mask.propagation`: "embedding" (official) puts the prompt in place of a dummy box's
        embedding on the prompted frame, whose output seeds SAM2's memory; "mask" decodes the
        prompted frame here and seeds the predictor with its mask (`add_new_mask`).
        """
        if prompt.ndim == 1:
            sparse, dense = self.prompt(prompt[None])
        elif prompt.ndim == 2 and prompt.shape[-1] == PROMPT_DIM:
            sparse, dense = prompt[None], None
        else:
            raise ValueError(
                f"MaskHead.propagate: prompt must be a query [{self.d_llm}] or a sparse prompt "
                f"[t, {PROMPT_DIM}], got {tuple(prompt.shape)}"
            )
        if not 0 <= prompt_frame < len(frames):
            raise ValueError(f"propagate: prompt_frame {prompt_frame} outside [0, {len(frames)})")
        if self.cfg.propagation == "embedding":
            return self.backend.propagate_logits(
                frames, prompt_frame, sparse=sparse.float(), dense=dense
            )
        was = self.training
        self.eval()
        try:
            feats = self.backend.image_features(frames[prompt_frame : prompt_frame + 1])
            low = self.backend.decode(sparse, feats, dense)  # [1, h, w]
        finally:
            self.train(was)
        size = (self.backend.image_size, self.backend.image_size)
        seed = F.interpolate(low[None].float(), size=size, mode="bilinear", align_corners=False)
        return self.backend.propagate_logits(frames, prompt_frame, mask=seed[0, 0] > 0)

    @torch.no_grad()
    def propagate(self, prompt: Tensor, frames: Tensor, prompt_frame: int = 0) -> Tensor:
        """Bool masks `[T, H, W]` (logits > 0) of `propagate_logits`."""
        return self.propagate_logits(prompt, frames, prompt_frame)[1] > 0

    def track(self, prompt: Tensor, frames: Tensor, prompt_frame: int = 0) -> TrackResult:
        """Masks and boxes `[T, 4]` (xyxy pixels, NaN where the mask is empty) from a prompt."""
        masks = self.propagate(prompt, frames, prompt_frame)
        return TrackResult(masks, boxes_from_masks(masks))

    def track_from_box(
        self, frames: Tensor, box_xyxy: Sequence[float] | Tensor, frame: int = 0
    ) -> TrackResult:
        """Track the object in pixel `box_xyxy` on `frames[frame]` (SAM2's real box prompt)."""
        return track_from_box(self.backend, frames, box_xyxy, frame)


def build_sam2_backend(cfg: MaskHeadConfig, device: str | torch.device = "cpu") -> SAM2Backend:
    """SAM2 (config name or YAML file + optional local checkpoint) with its feature cache; its
    parameters keep SAM2's own names under `backend.sam.` (the head's `heads.mask.backend.sam.`)."""
    sam = build_sam2_model(cfg, device)
    return SAM2Backend(sam, train_decoder=cfg.train_decoder, cache_frames=cfg.cache_frames)


def build_mask_head(
    cfg: MaskHeadConfig, d_llm: int, device: str | torch.device = "cpu"
) -> MaskHead:
    """The mask head with a freshly built SAM2 backend."""
    return MaskHead(cfg, d_llm, build_sam2_backend(cfg, device))
