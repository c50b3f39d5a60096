"""What the CG-DETR network returns (`tpo.heads.cgdetr_net.CGDETRNet.forward`), batch first.

n: queries (batch rows), q: decoder queries, t: video clips, l: text positions (the query
features with the `<temp>` head query inserted after the valid ones), D: dummy tokens, h: hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class CGDETROutput:
    """CG-DETR outputs; the training-only fields are None at inference (no `moment_clips`).

    pred_logits `[n, q, 2]` (index 0 foreground, 1 no-object), pred_spans `[n, q, 2]` (centre,
    width) in [0, 1] of the duration; aux: decoder layers 0..L-2, each {"pred_logits",
    "pred_spans"}; saliency `[n, t]` (clip saliency from the global token), t2v_attn `[n, t]`
    (text-to-video attention mass on the valid text, clamped to [0, 1]), attn `[n, t, D + l]`
    (the T2V encoder's head-mean attention of each clip over dummies + text, layer mean),
    video_mask `[n, t]` bool, text_mask `[n, D + l]` float (1 valid; dummies valid),
    dummy_tokens `[n, D, h]` (the text-conditioned dummies), global_tokens `[P, h]` (the prompt
    bank). Training only (`moment_clips` given): saliency_neg `[m, t]` / t2v_attn_neg `[m, t]`
    (each row's video against the next row's text, for the m rows whose next row shows
    another video), real_neg `[n]` bool (which rows those are; None: no video ids given),
    memory_moment / nmemory_moment `[n, h]` (moment / non-moment token after the moment
    encoder), sentence_txt / sentence_dummy `[n, h]` (sentence token over the text / over the
    dummies), moment2txt / nmoment2txt `[n, t, D + l]` (clip-to-word similarities of the moment /
    non-moment encoded clips), moment_mask `[n, t]` bool (clips inside a ground-truth moment),
    src_vid `[n, t, h]` (moment-encoded clips inside moments, non-moment-encoded outside).
    """

    pred_logits: Tensor
    pred_spans: Tensor
    saliency: Tensor
    t2v_attn: Tensor
    attn: Tensor
    video_mask: Tensor
    text_mask: Tensor
    dummy_tokens: Tensor
    global_tokens: Tensor
    aux: list[dict[str, Tensor]] = field(default_factory=list)
    saliency_neg: Tensor | None = None
    t2v_attn_neg: Tensor | None = None
    real_neg: Tensor | None = None
    memory_moment: Tensor | None = None
    nmemory_moment: Tensor | None = None
    sentence_txt: Tensor | None = None
    sentence_dummy: Tensor | None = None
    moment2txt: Tensor | None = None
    nmoment2txt: Tensor | None = None
    moment_mask: Tensor | None = None
    src_vid: Tensor | None = None
