"""From prompts to grounded predictions: generate, capture content-token queries, run heads.

Shared by the inference API, the benchmark runners and the learning benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tpo.model.mllm import HEADS
from tpo.model.prompt import PromptCollator, Turn
from tpo.model.tpo_model import TPOModel


@dataclass
class Prediction:
    """What the model said about one (video, question).

    text: the answer; heads: heads fired in order; windows: [[start_s, end_s, score]] sorted;
    saliency: per head-frame score with `saliency_times` s; box: normalised xyxy of the asked
    frame; masks: bool `[k, H, W]` on the given mask frames.
    """

    text: str
    heads: list[str] = field(default_factory=list)
    windows: list[list[float]] = field(default_factory=list)
    saliency: list[float] | None = None
    saliency_times: list[float] | None = None
    box: list[float] | None = None
    masks: np.ndarray | None = None


def run_temporal_head(
    model: TPOModel,
    query: torch.Tensor,
    feats: torch.Tensor,
    stamps: torch.Tensor,
    duration: float,
    nms_iou: float | None = None,
) -> tuple[list[list[float]], list[float]]:
    """One temporal-head call: query `[1, d]`, features `[t, d_f]` at times `stamps` `[t]` s of a
    `duration`-s video -> (windows [[start_s, end_s, score]] sorted, per-feature saliency)."""
    from tpo.heads.temporal import postprocess_saliency, postprocess_spans

    device, dtype = query.device, query.dtype
    dur = torch.tensor([duration], device=device)
    out = model.heads["temporal"](
        query, feats[None].to(device, dtype), stamps[None].to(device), dur
    )
    return postprocess_spans(out, dur.cpu(), nms_iou)[0], postprocess_saliency(out)[0]


def asked_frame_patches(model: TPOModel, gen, i: int, f: int | None = None) -> torch.Tensor | None:
    """Patches `[1, p, d_v]` of sampled frame `f` (default: the middle one) of batch row `i` of a
    `GenerationOutput`, for a region head that refines on them; None when the head does not."""
    if gen.vision is None or not getattr(model.heads["region"], "refine", False):
        return None
    t = gen.vision.frames.shape[1]
    return gen.vision.frame_patches(torch.tensor([i]), torch.tensor([t // 2 if f is None else f]))


@torch.no_grad()
def predict(
    model: TPOModel,
    collator: PromptCollator,
    frames: torch.Tensor,
    questions: list[str],
    videos: list[str],
    durations: list[float],
    *,
    box_frames: list[int] | None = None,
    mask_frames: list[torch.Tensor | None] | None = None,
    history: list[list[tuple[str, str]]] | None = None,
    max_new_tokens: int = 32,
    nms_iou: float | None = None,
) -> list[Prediction]:
    """Answer a batch: frames `[b, f, 3, H, W]`, one question, video path and duration each.

    box_frames: position in f of the frame a region question asks about (default: middle);
    mask_frames: per sample uint8 frames `[k, 3, H0, W0]` the mask head predicts on.
    """
    model.eval()
    dtype = next(model.mllm.llm.parameters()).dtype
    device = next(model.parameters()).device
    b = len(questions)
    hist = history or [[] for _ in range(b)]
    text = collator.prompts([Turn(q, None, h) for q, h in zip(questions, hist)])
    gen = model.mllm.generate(
        frames.to(device, dtype),
        text.input_ids.to(device),
        text.attention_mask.to(device),
        max_new_tokens=max_new_tokens,
    )
    preds = [Prediction(text=t) for t in gen.text]
    for k in range(len(gen.task_head)):
        i, name = int(gen.task_sample[k]), HEADS[int(gen.task_head[k])]
        preds[i].heads.append(name)
        if name not in model.heads:
            continue
        query = gen.task_hidden[k : k + 1]
        if name == "temporal" and not preds[i].windows:
            feats, stamps = model.temporal_features(videos[i], durations[i])
            preds[i].windows, preds[i].saliency = run_temporal_head(
                model, query, feats, stamps, durations[i], nms_iou
            )
            preds[i].saliency_times = stamps.tolist()
        elif name == "region" and preds[i].box is None:
            patches = asked_frame_patches(model, gen, i, box_frames[i] if box_frames else None)
            preds[i].box = model.heads["region"](query, patches).boxes[0].float().tolist()
        elif (
            name == "mask" and preds[i].masks is None and mask_frames and mask_frames[i] is not None
        ):
            logits = model.heads["mask"](query, [mask_frames[i]], [videos[i]]).logits[0]
            size = tuple(mask_frames[i].shape[-2:])  # [k, h, w] low-res -> the frames' size
            up = F.interpolate(
                logits[:, None].float(), size=size, mode="bilinear", align_corners=False
            )
            preds[i].masks = (up[:, 0] > 0).cpu().numpy()
    return preds
