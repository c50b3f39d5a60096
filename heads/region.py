"""Region head: a normalised xyxy box for the asked frame from the `<boxes>` query, + its loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from tpo.config.heads import RegionHeadConfig
from tpo.heads.parts import BoxPrediction
from tpo.model.task_head import HeadQueries, HeadTargets, TaskHead

if TYPE_CHECKING:
    from tpo.config.schema import ModelConfig
    from tpo.data.dataset import Sample


@dataclass
class RegionOutput:
    """Predictions of the region head for `n` content tokens.

    boxes: `[n, 4]` (x1, y1, x2, y2) normalised to [0, 1] of the frame, x1 <= x2, y1 <= y2
    (output "raw": the MLP's output as it is, which may lie outside or be unordered).
    """

    boxes: Tensor


def select_frame_patches(patches: Tensor, sample: Tensor, frame: Tensor, p: int) -> Tensor:
    """Patch features `[n, p, d_v]` of frame `frame[i]` of batch row `sample[i]`.

    patches `[b, f*p, d_v]` (the vision encoder's output), sample `[n]`, frame `[n]` long.
    """
    b, fp, d = patches.shape
    if fp % p:
        raise ValueError(f"select_frame_patches: {fp} patch tokens not a multiple of p={p}")
    per_frame = patches.view(b, fp // p, p, d)  # [b, f, p, d_v]
    return per_frame[sample.long(), frame.long()]


def patch_centres(p: int, device=None) -> Tensor:
    """Normalised (x, y) centres `[p, 2]` of a square grid of `p` patches, row-major."""
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"patch_centres: {p} patches per frame do not form a square grid")
    ys, xs = torch.meshgrid(
        torch.arange(g, device=device), torch.arange(g, device=device), indexing="ij"
    )
    return (torch.stack([xs.flatten(), ys.flatten()], dim=-1).float() + 0.5) / g


class RegionHead(TaskHead):
    """MLP d_llm -> hidden -> 4; `refine` first cross-attends the query to the frame's patches.

    The 4 outputs pass a sigmoid and each coordinate pair is sorted (x1 = min, x2 = max of the
    two x outputs, same for y), so boxes are valid and inside the frame without clamping (which
    would cut gradients at the border). With `locate`, the centre is instead the soft-argmax of
    one query-patch attention over the patch centres (+ an offset up to half a patch) and the
    MLP predicts the width and height; the box is clipped to the frame. With `output: raw` (the
    release's semantics) the MLP's 4 outputs are the box as they are: no sigmoid, sort or clamp.

    Task pair `<box_begin><boxes>`; reads the encoder's patches of the asked frame
    (`HeadSample.asked_frame`, default the middle sampled frame); answers `boxes` in pixels.
    """

    name = "region"
    tokens = ("<box_begin>", "<boxes>")
    once = False  # every <boxes> of an answer adds a box

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_llm: int, d_vision: int) -> RegionHead | None:
        """From `cfg.heads.region` (None: no region head)."""
        return None if cfg.heads.region is None else cls(cfg.heads.region, d_llm, d_vision)

    @classmethod
    def targets_from(cls, sample: Sample) -> HeadTargets | None:
        """`boxes`: the normalised xyxy `[4]` of the asked frame."""
        return None if sample.box is None else HeadTargets({"boxes": sample.box})

    def __init__(self, cfg: RegionHeadConfig, d_llm: int, d_vision: int):
        super().__init__()
        self.cfg = cfg
        self.refine, self.locate = cfg.refine, cfg.locate
        self.raw = cfg.output == "raw"
        d_in = d_llm
        if cfg.refine:
            self.attn_query = nn.Sequential(nn.LayerNorm(d_llm), nn.Linear(d_llm, cfg.refine_dim))
            self.attn_key = nn.Sequential(
                nn.LayerNorm(d_vision), nn.Linear(d_vision, cfg.refine_dim)
            )
            if cfg.locate:  # one attention map, also used as the soft-argmax weights
                self.attn_value = nn.Sequential(
                    nn.LayerNorm(d_vision), nn.Linear(d_vision, cfg.refine_dim)
                )
            else:
                self.attn = nn.MultiheadAttention(
                    cfg.refine_dim, cfg.refine_heads, batch_first=True
                )
            d_in = d_llm + cfg.refine_dim
        self.mlp = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 4))

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """All parameters train together as `region_head`."""
        return {"region_head": list(self.parameters())}

    def gather(self, queries: HeadQueries) -> Tensor | None:
        """Patches `[m, p, d_v]` of each query's asked frame (None when the head does not refine
        or there are no frames)."""
        if not self.refine or queries.vision is None:
            return None
        f = queries.vision.frames.shape[1]
        frames = [f // 2 if s.asked_frame is None else s.asked_frame for s in queries.samples]
        return queries.vision.frame_patches(torch.tensor(queries.rows), torch.tensor(frames))

    def run(self, hidden: Tensor, inputs: Tensor | None) -> RegionOutput:
        """`forward` on the asked frames' patches."""
        return self(hidden, inputs)

    def criterion(self) -> nn.Module:
        """L1 + GIoU with the config's weights."""
        return build_region_criterion(self.cfg)

    def postprocess(
        self, output: RegionOutput, queries: HeadQueries, inputs: Tensor | None
    ) -> list[dict[str, Any]]:
        """`boxes`: one BoxPrediction in pixels of the video, on the asked frame."""
        parts = []
        for j, s in enumerate(queries.samples):
            if s.size is None or s.frame_indices is None or not s.fps:
                raise ValueError("RegionHead.postprocess: the sample lacks size, frames or fps")
            h, w = s.size
            norm = output.boxes[j].float().cpu()
            norm = norm if self.raw else norm.clamp(0, 1)
            box = (norm * torch.tensor([w, h, w, h], dtype=torch.float32)).tolist()
            f = len(s.frame_indices) // 2 if s.asked_frame is None else s.asked_frame
            idx = int(s.frame_indices[f])
            parts.append({"boxes": [BoxPrediction(tuple(box), idx, idx / s.fps)]})
        return parts

    def forward(self, query: Tensor, patches: Tensor | None = None) -> RegionOutput:
        """query `[n, d_llm]` (`<boxes>` hidden states); patches `[n, p, d_v]` of the asked frame
        (required with `refine`, see `select_frame_patches`)."""
        dtype = self.mlp[0].weight.dtype
        x = query.to(dtype)
        if self.refine:
            if patches is None or patches.shape[0] != query.shape[0]:
                got = None if patches is None else tuple(patches.shape)
                raise ValueError(
                    f"RegionHead(refine=True): patches [n={query.shape[0]}, p, d_v] needed, got {got}"
                )
            kv = self.attn_key(patches.to(dtype))  # [n, p, r]
            if self.locate:
                return self._locate(x, kv, patches.to(dtype))
            attended, _ = self.attn(self.attn_query(x)[:, None], kv, kv, need_weights=False)
            x = torch.cat([x, attended[:, 0]], dim=-1)  # [n, d_llm + r]
        if self.raw:
            return RegionOutput(self.mlp(x))  # [n, 4] as the MLP gives it
        raw = self.mlp(x).sigmoid().view(-1, 2, 2)  # [n, (x, y), 2 candidates]
        lo, hi = raw.min(dim=-1).values, raw.max(dim=-1).values  # [n, 2] each
        return RegionOutput(torch.cat([lo, hi], dim=-1))  # [n, 4] x1 y1 x2 y2

    def _locate(self, x: Tensor, keys: Tensor, patches: Tensor) -> RegionOutput:
        """Soft-argmax box: x `[n, d_llm]`, keys `[n, p, r]`, patches `[n, p, d_v]`."""
        q = self.attn_query(x)  # [n, r]
        weights = (keys @ q[:, :, None])[..., 0] / math.sqrt(q.shape[-1])  # [n, p]
        weights = weights.softmax(dim=-1)
        p = patches.shape[1]
        centre = weights @ patch_centres(p, patches.device).to(weights.dtype)  # [n, 2]
        attended = (weights[..., None] * self.attn_value(patches)).sum(1)  # [n, r]
        raw = self.mlp(torch.cat([x, attended], dim=-1))  # [n, 4]
        centre = centre + torch.tanh(raw[:, :2]) * (0.5 / math.isqrt(p))
        half = raw[:, 2:].sigmoid() / 2
        return RegionOutput(torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0))


class RegionCriterion(nn.Module):
    """L1 (mean over coordinates) + GIoU loss (mean over boxes) to the target xyxy box.

    Targets, one dict per `<boxes>` token: `boxes` `[4]` or `[1, 4]` normalised xyxy.
    """

    def __init__(self, l1: float = 2.0, giou: float = 0.2):
        super().__init__()
        self.weight_dict = {k: float(w) for k, w in {"loss_l1": l1, "loss_giou": giou}.items() if w}

    def forward(self, outputs: RegionOutput, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Named unweighted losses `loss_l1`, `loss_giou`."""
        pred = outputs.boxes.float()
        if len(targets) != len(pred):
            raise ValueError(f"RegionCriterion: {len(targets)} targets for {len(pred)} boxes")
        rows = []
        for i, tgt in enumerate(targets):
            box = tgt.get("boxes")
            if box is None or box.numel() != 4:
                got = None if box is None else tuple(box.shape)
                raise ValueError(f"region target {i}: 'boxes' must be one xyxy box [4], got {got}")
            rows.append(box.reshape(4))
        gt = torch.stack(rows).to(pred)
        if (gt[:, 2:] < gt[:, :2]).any() or ((gt < 0) | (gt > 1)).any():
            raise ValueError(
                "region targets: boxes must be normalised xyxy with x1 <= x2, y1 <= y2"
            )
        losses = {
            "loss_l1": F.l1_loss(pred, gt),
            "loss_giou": generalized_box_iou_loss(pred, gt, reduction="mean"),
        }
        return {k: v for k, v in losses.items() if k in self.weight_dict}


def build_region_criterion(cfg: RegionHeadConfig) -> RegionCriterion:
    """Region criterion with the config's loss weights."""
    return RegionCriterion(l1=cfg.l1, giou=cfg.giou)
