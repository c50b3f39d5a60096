"""The CG-DETR temporal head (`heads.temporal.kind: cgdetr`): the release's temporal head.

It answers the `<time_begin><temp>` pair like `TemporalHead`, but on features from two
plug-in sources (`tpo.heads.cgdetr_features`): clip features of the video (tpo's own encoder,
or npz files such as the InternVideo2 features of the release) and features of the query text
(the LLM's token embeddings, or npz files). The head appends the temporal endpoint feature
(TEF) to the clip features, inserts the `<temp>` hidden state after the valid text and runs
`CGDETRNet`; windows are post-processed as the release does (`official_windows`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tpo.config.heads import TemporalHeadConfig
from tpo.heads.cgdetr_criterion import build_cgdetr_criterion
from tpo.heads.cgdetr_features import ClipFeatures, build_query_source, build_video_source
from tpo.heads.cgdetr_net import CGDETRNet
from tpo.heads.cgdetr_output import CGDETROutput
from tpo.heads.parts import TimeWindow
from tpo.heads.span_ops import span_cw_to_xx
from tpo.heads.temporal_features import FrameFeatureCache, frame_reader, vision_frame_encoder
from tpo.model.task_head import HeadQueries, TaskHead

if TYPE_CHECKING:
    from tpo.config.schema import ModelConfig

PAIRS = 2  # saliency pairs per query (the release samples 2 positive and 2 negative clips)


def temporal_endpoints(t: int, device: torch.device | None = None) -> Tensor:
    """The TEF of `t` clips: `[t, 2]` rows [i / t, (i + 1) / t]."""
    start = torch.arange(t, dtype=torch.float32, device=device) / t
    return torch.stack([start, start + 1.0 / t], dim=1)


def official_windows(
    logits: Tensor, spans: Tensor, duration: float, clip_length: float
) -> list[list[float]]:
    """The release's post-processing of one query's `logits [q, 2]`, `spans [q, 2]` (centre,
    width): foreground probability, (start, end) x duration clamped to [0, duration], sorted by
    probability, rounded to 4 decimals, then start and end rounded to multiples of
    `clip_length` (half to even) -> `[[start_s, end_s, score], ...]`, best first."""
    probs = logits.float().softmax(-1)[:, 0]
    xx = (span_cw_to_xx(spans.float()) * duration).clamp(0.0, duration)
    rows = torch.cat([xx, probs[:, None]], 1).tolist()
    rows = sorted(rows, key=lambda r: r[2], reverse=True)  # stable, as the release's sort
    rows = [[float(f"{x:.4f}") for x in r] for r in rows]
    table = torch.tensor(rows, dtype=torch.float32)
    ends = torch.round(table[:, :2] / clip_length) * clip_length
    return [[*e, float(f"{s:.4f}")] for e, s in zip(ends.tolist(), table[:, 2].tolist())]


@dataclass
class CGDETRInputs:
    """What CG-DETR reads for `n` queries: `video` `[n, t, d_v]` (TEF appended) with
    `video_mask` `[n, t]`, `text` `[n, l, d_t]` with `text_mask` `[n, l]`, per query its clip
    times `times[j]` `[t_j]` s, `fps`, `duration` s, `clip_start` s and video id; training
    sets `moment_clips` `[n, t]` (`CGDETRHead.prepare_targets`)."""

    video: Tensor
    video_mask: Tensor
    text: Tensor
    text_mask: Tensor
    times: list[Tensor]
    fps: list[float]
    duration: list[float]
    clip_start: list[float]
    video_ids: list[str]
    moment_clips: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _pad(rows: list[Tensor], length: int) -> tuple[Tensor, Tensor]:
    """Stack `[l_j, d]` rows zero-padded to `length` -> `[n, length, d]` and mask `[n, length]`."""
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = rows[0].new_zeros(len(rows), length)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
        mask[j, : len(r)] = 1.0
    return out, mask


class CGDETRHead(TaskHead):
    """CG-DETR conditioned on the `<temp>` query; built by `TemporalHead.from_config` when
    `heads.temporal.kind` is "cgdetr". Answers `windows` and `saliency` / `saliency_times`."""

    name = "temporal"
    tokens = ("<time_begin>", "<temp>")

    def __init__(self, tcfg: TemporalHeadConfig, d_llm: int, d_vision: int):
        super().__init__()
        cfg = tcfg.cgdetr
        self.tcfg, self.cfg = tcfg, cfg
        width = cfg.video_feature_dim if cfg.video_features == "npz" else d_vision
        d_video = cfg.v_feat_dim or (width + (2 if cfg.use_tef else 0))
        d_text = cfg.t_feat_dim or d_llm
        if d_text != d_llm:
            raise ValueError(
                f"heads.temporal.cgdetr.t_feat_dim {d_text} must equal the LLM width {d_llm}: "
                "the <temp> query joins the text features"
            )
        self.net = CGDETRNet(cfg, d_video=d_video, d_text=d_text)
        self.video_source = build_video_source(tcfg)
        # "llm" queries read the LLM's embedding: set by `bind`, once the MLLM exists
        self.query_source = None if cfg.query_features == "llm" else build_query_source(cfg, None)

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_llm: int, d_vision: int) -> CGDETRHead | None:
        """From `cfg.heads.temporal` (None: no temporal head)."""
        tcfg = cfg.heads.temporal
        return None if tcfg is None else cls(tcfg, d_llm, d_vision)

    def bind(self, mllm: nn.Module) -> None:
        """Query features from the LLM's token embeddings (`query_features: llm`)."""
        if self.cfg.query_features == "llm":
            llm = mllm.llm  # held in a closure: the LLM's parameters are not the head's

            def embed(ids: Tensor) -> Tensor:
                device = llm.input_embeddings().weight.device
                return llm.embed(ids.to(device)[None])[0]

            self.query_source = build_query_source(self.cfg, embed)

    def frame_feature_source(self, cfg: ModelConfig, mllm: nn.Module):
        """With `video_features: vision`: our encoder's features at `temporal.feat_fps`."""
        if self.cfg.video_features != "vision":
            return None
        return FrameFeatureCache(
            vision_frame_encoder(mllm.vision),
            frame_reader(cfg.vision.img_size, cfg.vision.resize),
            self.tcfg.feat_fps,
            self.tcfg.max_feats,
        )

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """All parameters train together as `temporal_head`."""
        return {"temporal_head": list(self.parameters())}

    def gather(self, queries: HeadQueries) -> CGDETRInputs:
        """Each query's clip features (+ TEF) and query features, padded to the longest."""
        if self.query_source is None:
            raise RuntimeError("CGDETRHead: query_features 'llm' before bind(mllm)")
        clips: list[ClipFeatures] = [self.video_source(s) for s in queries.samples]
        videos = []
        for c in clips:
            feats = c.feats.float()
            if self.cfg.use_tef:
                feats = torch.cat([feats, temporal_endpoints(len(feats), feats.device)], 1)
            videos.append(feats)
        texts = [self.query_source(s).float()[: self.cfg.max_q_l] for s in queries.samples]
        device = queries.hidden.device
        video, video_mask = _pad([v.to(device) for v in videos], max(len(v) for v in videos))
        text, text_mask = _pad([t.to(device) for t in texts], max(len(t) for t in texts))
        return CGDETRInputs(
            video=video, video_mask=video_mask, text=text, text_mask=text_mask,
            times=[c.times for c in clips], fps=[c.fps for c in clips],
            duration=[s.duration for s in queries.samples],
            clip_start=[s.clip_start for s in queries.samples],
            video_ids=[s.video or f"row{r}" for s, r in zip(queries.samples, queries.rows)],
        )  # fmt: skip

    def run(self, hidden: Tensor, inputs: CGDETRInputs) -> CGDETROutput:
        """`CGDETRNet` on the gathered inputs; training terms when `moment_clips` is set."""
        return self.net(
            inputs.text, inputs.text_mask, inputs.video, inputs.video_mask, hidden,
            moment_clips=inputs.moment_clips,
            video_ids=inputs.video_ids if inputs.moment_clips is not None else None,
        )  # fmt: skip

    def criterion(self) -> nn.Module:
        """The release's CG-DETR criterion with this config's weights."""
        return build_cgdetr_criterion(self.cfg)

    def prepare_targets(self, targets: list[dict], inputs: CGDETRInputs) -> list[dict]:
        """Clip-level targets (relevant clips, saliency, saliency pairs) on the gathered clips;
        sets `inputs.moment_clips` (the network's training input)."""
        t = inputs.video.shape[1]
        out = [_clip_targets(tg, inputs.times[j], inputs.duration[j], t, inputs.video_ids[j])
               for j, tg in enumerate(targets)]  # fmt: skip
        inputs.moment_clips = torch.stack([o["relevant_clips"] for o in out]).to(
            inputs.video.device
        )
        return out

    def postprocess(
        self, output: CGDETROutput, queries: HeadQueries, inputs: CGDETRInputs
    ) -> list[dict[str, Any]]:
        """`windows` (TimeWindow, s of the video) and `saliency` at `saliency_times` s."""
        parts = []
        for j in range(len(queries)):
            clip = self.cfg.clip_length or 1.0 / inputs.fps[j]
            wins = official_windows(
                output.pred_logits[j], output.pred_spans[j], inputs.duration[j], clip
            )
            start, valid = inputs.clip_start[j], output.video_mask[j].cpu()
            parts.append(
                {
                    "windows": [TimeWindow(s + start, e + start, sc) for s, e, sc in wins],
                    "saliency": output.saliency[j].float().cpu()[valid].numpy(),
                    "saliency_times": inputs.times[j].numpy()[: int(valid.sum())] + start,
                }
            )
        return parts


def _clip_targets(target: dict, times: Tensor, duration: float, t: int, key: str) -> dict:
    """Per-clip targets of one query: `relevant_clips` `[t]` (clip centre inside a ground-truth
    window; at least the clip nearest the first window's centre), `saliency_all` `[t]` (the
    annotated scores on the clips, else 1 on relevant clips), `saliency_pos` / `saliency_neg`
    `[2]` (clips drawn inside / outside the moments, seeded by the sample: the same on every
    run and rank). Clips past the query's own `times` are padding."""
    spans = target["spans"].float().cpu()
    windows = span_cw_to_xx(spans) * duration  # [k, 2] s
    times = times.float().cpu()
    inside = ((times[:, None] >= windows[:, 0]) & (times[:, None] <= windows[:, 1])).any(1)
    if not inside.any() and len(windows):
        inside[(times - windows[0].mean()).abs().argmin()] = True
    relevant = torch.zeros(t)
    relevant[: len(times)] = inside.float()
    scores = relevant.clone()
    if target.get("saliency") is not None:  # per-2-s-clip annotator scores
        clips = target["saliency"].float().cpu()
        idx = (times.clamp(min=0) // 2).long().clamp(max=len(clips) - 1)
        scores[: len(times)] = clips[idx] * inside.float()
    gen = torch.Generator().manual_seed(zlib.crc32(f"{key}|{spans.numpy().tobytes()!r}".encode()))
    pos_pool = inside.nonzero()[:, 0]
    neg_pool = (~inside).nonzero()[:, 0]
    if len(neg_pool) == 0:
        neg_pool = pos_pool

    def pick(pool: Tensor) -> Tensor:  # without replacement while the pool lasts
        order = torch.randperm(len(pool), generator=gen)
        return pool[order.repeat(-(-PAIRS // len(pool)))[:PAIRS]]

    return {
        **target,
        "relevant_clips": relevant,
        "saliency_all": scores,
        "saliency_pos": pick(pos_pool),
        "saliency_neg": pick(neg_pool),
    }
