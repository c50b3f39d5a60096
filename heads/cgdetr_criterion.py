"""Training losses of the CG-DETR temporal head (the release's `SetCriterion`, same numerics).

n: query rows, q: decoder queries, t: clips (padded; `outputs.video_mask` marks the real ones),
p: saliency pairs per row, D: dummy tokens, l: text positions, h: hidden.

Targets, one dict per query row (`len(targets) == n`):
    spans: `[k, 2]` ground-truth moments, (centre, width) normalised by the duration.
    relevant_clips: `[t]` float 0/1, clips inside a ground-truth moment (needed by loss_ms_align).
    saliency_all: `[t]` float per-clip scores, 0 outside the moments (rank levels 1..11).
    saliency_pos / saliency_neg: `[p]` int64 clip indices of p (positive, negative) pairs, the
        same p for every row (without them in any row, loss_saliency is 0, as the release).

Losses (unweighted; `weight_dict` holds the weights, zero weights dropped):
    loss_span / loss_giou / loss_label: Hungarian-matched L1 of (centre, width) (mean over
        elements), 1 - GIoU (mean over matched spans), and the fg / no-object cross-entropy with
        class weights `empty_weight` = [1, eos_coef] (mean over all n * q queries); `_{i}` for
        each aux decoder layer i.
    loss_saliency: S(saliency) + wattn * (S(t2v_attn) + BCE(t2v_attn, clamp(saliency_all, 0, 1)))
        where S = the pair margin loss + the rank-contrastive loss (`rank_contrastive_loss`) +,
        when the network gave negative pairs (`saliency_neg` not None), the negative-pair loss.
    loss_ms_align: moment / non-moment token vs sentence CE, the same vs the dummy sentence, and
        the BCE of the moment token against the encoded clips.
    loss_distill: KL from softmax(moment2txt) (detached) to the clip-to-text attention.
    loss_orthogonal_dummy: mean |off-diagonal cosine| of the dummies plus the prompt bank.

Release behaviour kept on purpose: with negative pairs, the t2v-attention stream ranks only the
rows with a real negative (the release computes its false-negative term and drops it), and the
saliency stream adds the false-negative rows' rank term only when there are two or more of them
(for a lone row the release's extra unsqueeze takes the softmax over a singleton axis: a
gradient-free constant below 1e-6, omitted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.config.heads import CGDETRConfig
from tpo.heads.cgdetr_output import CGDETROutput
from tpo.heads.matcher import SET_LOSSES, HungarianMatcher, set_weight_dict
from tpo.heads.span_ops import span_cw_to_xx, span_giou_loss

LOSSES = (*SET_LOSSES, "loss_saliency", "loss_ms_align", "loss_distill", "loss_orthogonal_dummy")
RANK_LEVELS = 11  # thresholds 1..11 of saliency_all
RANK_DIVISOR = 12.0  # the release divides the sum over the 11 levels by 12
RANK_TAU = 0.5
LOG_EPS = 1e-6
PAD_SCORE = -1e3


def rank_contrastive_loss(scores: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Rank-contrastive loss of scores `[r, T]` against labels `[r, T]`, valid clips `[r, T]`.

    x = scores on valid clips, -1e3 elsewhere, / tau (labels > 100 are dropped: -1e3);
    log_p = (x - max x) - log(sum exp(x - max x) + 1e-6) per row; for each level r in 1..11,
    pos = labels >= r, row term -sum(pos * valid * log_p) / (sum(pos) + 1e-6) for rows with a
    positive (else 0), averaged over the rows; the sum over levels is divided by 12.
    """
    valid = valid.float()
    masked = valid * scores + (1.0 - valid) * PAD_SCORE
    keep = labels <= 100
    logits = torch.where(keep, masked / RANK_TAU, torch.full_like(masked, PAD_SCORE))
    logits = logits - logits.max(dim=-1, keepdim=True).values
    log_prob = logits - torch.log(logits.exp().sum(-1, keepdim=True) + LOG_EPS)  # [r, T]
    levels = torch.arange(1, RANK_LEVELS + 1, device=scores.device, dtype=labels.dtype)
    pos = (labels[None] >= levels[:, None, None]).float()  # [levels, r, T]
    n_pos = pos.sum(-1)  # [levels, r]
    mean_log_prob = (pos * log_prob * valid).sum(-1) / (n_pos + LOG_EPS)
    per_level = (-mean_log_prob * (n_pos > 0)).mean(-1)  # [levels]
    return per_level.sum() / RANK_DIVISOR


def pair_margin_loss(scores: Tensor, pos_idx: Tensor, neg_idx: Tensor, margin: float) -> Tensor:
    """2 * mean over rows and pairs of relu(margin + s[neg] - s[pos]); scores `[n, t]`,
    indices `[n, p]`."""
    pos = scores.gather(1, pos_idx)
    neg = scores.gather(1, neg_idx)
    return 2.0 * F.relu(margin + neg - pos).mean()


def _off_diagonal_cosine(tokens: Tensor) -> Tensor:
    """Mean |cosine| between distinct tokens of `[..., D, h]` (diagonal zeroed, kept in the
    mean); the right factor is detached, as the release."""
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.detach().transpose(-1, -2)  # [..., D, D]
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    return sim.masked_fill(eye, 0.0).abs().mean()


class CGDETRCriterion(nn.Module):
    """The release's CG-DETR losses on a `CGDETROutput` (see the module docstring).

    `weights` maps loss names (`LOSSES`) to weights; `wattn` weighs the t2v-attention part
    inside loss_saliency; `aux_layers` decoder layers get their own set losses (`_{i}`).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weights: dict[str, float],
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        wattn: float = 1.0,
        aux_layers: int = 0,
    ):
        super().__init__()
        self.weight_dict = set_weight_dict(weights, LOSSES, aux_layers, "CGDETRCriterion")
        self.matcher = matcher
        self.saliency_margin = saliency_margin
        self.wattn = wattn
        self.aux_layers = aux_layers
        # persistent: the converter maps the checkpoint's cg_criterion.empty_weight onto it
        self.register_buffer("empty_weight", torch.tensor([1.0, eos_coef]), persistent=True)

    def forward(self, outputs: CGDETROutput, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Named unweighted losses (the keys of `weight_dict`) of `outputs` against `targets`."""
        n, t = outputs.saliency.shape
        if len(targets) != n:
            raise ValueError(f"CGDETRCriterion: {len(targets)} targets for {n} query rows")
        for i, tgt in enumerate(targets):
            spans = tgt.get("spans")
            if spans is None or spans.dim() != 2 or spans.shape[-1] != 2:
                got = None if spans is None else tuple(spans.shape)
                raise ValueError(
                    f"cgdetr target {i}: 'spans' must be [k, 2] (centre, width), got {got}"
                )
        if len(outputs.aux) < self.aux_layers:
            raise ValueError(
                f"CGDETRCriterion: {self.aux_layers} aux layers expected, got {len(outputs.aux)}"
            )
        losses = self._set_losses(outputs.pred_logits, outputs.pred_spans, targets)
        for i, aux in enumerate(outputs.aux[: self.aux_layers]):
            aux_losses = self._set_losses(aux["pred_logits"], aux["pred_spans"], targets)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        zero = outputs.pred_spans.sum() * 0.0
        losses["loss_saliency"] = self._saliency_loss(outputs, targets, zero)
        losses["loss_ms_align"] = self._ms_align_loss(outputs, targets, zero)
        losses["loss_distill"] = self._distill_loss(outputs, zero)
        losses["loss_orthogonal_dummy"] = self._orthogonal_loss(outputs)
        return {k: v for k, v in losses.items() if k in self.weight_dict}

    def _set_losses(
        self, logits: Tensor, spans: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Span L1, span GIoU and fg CE of one decoder layer (`[n, q, 2]` logits and spans)."""
        indices = self.matcher(logits, spans, targets)
        device = spans.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        batch_idx = batch_idx.to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        src = spans[batch_idx, src_idx].float()  # [K, 2]
        tgt = torch.cat([t["spans"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        if len(src):
            loss_span = F.l1_loss(src, tgt)
            loss_giou = span_giou_loss(span_cw_to_xx(src), span_cw_to_xx(tgt)).mean()
        else:  # no target spans in the batch: zero, still attached to the graph
            loss_span = loss_giou = spans.sum() * 0.0
        classes = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)
        classes[batch_idx, src_idx] = 0  # foreground
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), classes, self.empty_weight.float(), reduction="none"
        )
        return {"loss_span": loss_span, "loss_giou": loss_giou, "loss_label": ce.mean()}

    def _saliency_loss(
        self, out: CGDETROutput, targets: list[dict[str, Tensor]], zero: Tensor
    ) -> Tensor:
        """The release's loss_saliency: the saliency stream plus wattn x the t2v-attention one."""
        pos = _stack(targets, "saliency_pos", None, out.saliency.device)
        if pos is None:
            return zero
        n, t = out.saliency.shape
        neg = _stack(targets, "saliency_neg", pos.shape[1], out.saliency.device, required=True)
        labels = _stack(targets, "saliency_all", t, out.saliency.device, required=True).float()
        for name, idx in (("saliency_pos", pos), ("saliency_neg", neg)):
            if ((idx < 0) | (idx >= t)).any():
                raise ValueError(f"cgdetr targets: '{name}' indices must lie in [0, {t})")
        if pos.shape[1] == 0:
            raise ValueError("cgdetr targets: 'saliency_pos' / 'saliency_neg' need >= 1 pair")
        pos, neg = pos.long(), neg.long()
        valid = out.video_mask.float()
        real_neg = None
        if out.saliency_neg is not None and len(out.saliency_neg):
            real_neg = _check_negatives(out, n)

        def stream(scores: Tensor, scores_neg: Tensor | None, is_attn: bool) -> Tensor:
            scores = scores.float()
            loss = pair_margin_loss(scores, pos, neg, self.saliency_margin)
            if real_neg is None:  # the release's batch-of-one branch
                return loss + rank_contrastive_loss(scores, labels, valid)
            scores_neg = scores_neg.float()
            loss = loss + rank_contrastive_loss(  # own video vs the next row's text: labels 0
                torch.cat([scores[real_neg], scores_neg], 1),
                torch.cat([labels[real_neg], torch.zeros_like(labels[real_neg])], 1),
                valid[real_neg].repeat(1, 2),
            )
            false_neg = ~real_neg
            if not is_attn and false_neg.sum() >= 2:  # see the module docstring
                loss = loss + rank_contrastive_loss(
                    scores[false_neg], labels[false_neg], valid[false_neg]
                )
            # -log(1 - p) of the negative pairs' clips: softplus(s) = -log(1 - sigmoid(s))
            nll = -torch.log1p(-scores_neg) if is_attn else F.softplus(scores_neg)
            return loss + (nll * valid[real_neg]).sum(1).mean()

        attn = stream(out.t2v_attn, out.t2v_attn_neg, True)
        attn = attn + F.binary_cross_entropy(out.t2v_attn.float(), labels.clamp(0, 1))
        return stream(out.saliency, out.saliency_neg, False) + self.wattn * attn

    def _ms_align_loss(
        self, out: CGDETROutput, targets: list[dict[str, Tensor]], zero: Tensor
    ) -> Tensor:
        """Moment-sentence alignment: two CEs over cosine similarities plus the clip BCE."""
        if out.memory_moment is None:
            return zero
        _require(out, ("nmemory_moment", "sentence_txt", "sentence_dummy", "src_vid"), "ms_align")
        moment = out.memory_moment.float()  # [n, h]
        moment_units = torch.stack(
            [F.normalize(moment, dim=1), F.normalize(out.nmemory_moment.float(), dim=1)]
        )
        n = moment.shape[0]
        rows = torch.arange(n, device=moment.device)

        def contrast(sentence: Tensor, label: Tensor) -> Tensor:
            sim = moment_units @ F.normalize(sentence.float(), dim=1).T  # [2, n, n]
            return F.cross_entropy(torch.cat(list(sim), dim=1), label)  # [n, 2n] logits

        # text sentence: own moment is the positive; dummy sentence: the release's argmax over
        # its 0/1 positives picks the first one: column 1 for row 0, column 0 for the others
        loss = contrast(out.sentence_txt, rows) + contrast(out.sentence_dummy, (rows == 0).long())
        relevant = _stack(targets, "relevant_clips", out.src_vid.shape[1], moment.device)
        if relevant is None:
            raise ValueError("cgdetr targets: 'relevant_clips' [t] is needed by loss_ms_align")
        logits = torch.einsum("nh,nth->nt", moment, out.src_vid.float())
        bce = F.binary_cross_entropy(
            torch.sigmoid(logits), relevant.float().clamp(0, 1), reduction="none"
        )
        return loss + (bce * out.video_mask.float()).mean()

    def _distill_loss(self, out: CGDETROutput, zero: Tensor) -> Tensor:
        """KL(softmax(moment2txt).detach() || attn) per clip (mean over D + l), mean over the
        moment clips."""
        if out.moment2txt is None:
            return zero
        _require(out, ("moment_mask",), "distill")
        target = out.moment2txt.float().softmax(-1).detach()
        kl = F.kl_div(torch.log(out.attn.float() + LOG_EPS), target, reduction="none").mean(-1)
        inside = out.moment_mask.float()  # [n, t]
        return (kl * inside).sum() / inside.sum().clamp(min=1)

    def _orthogonal_loss(self, out: CGDETROutput) -> Tensor:
        """Off-diagonal |cosine| of the dummies (when D > 1) plus that of the prompt bank."""
        loss = _off_diagonal_cosine(out.global_tokens.float())
        if out.dummy_tokens.shape[1] != 1:
            loss = loss + _off_diagonal_cosine(out.dummy_tokens.float())
        return loss


def _stack(
    targets: list[dict[str, Tensor]],
    key: str,
    width: int | None,
    device: torch.device,
    required: bool = False,
) -> Tensor | None:
    """`[n, width]` stack of the 1-d `targets[i][key]`; None when no row has the key."""
    present = [key in tgt for tgt in targets]
    if not any(present) and not required:
        return None
    if not all(present):
        raise ValueError(f"cgdetr targets: '{key}' missing from rows {present.index(False)}..")
    width = targets[0][key].shape[-1] if width is None else width
    for i, tgt in enumerate(targets):
        if tgt[key].shape != (width,):
            raise ValueError(
                f"cgdetr target {i}: '{key}' must be [{width}], got {tuple(tgt[key].shape)}"
            )
    return torch.stack([tgt[key] for tgt in targets]).to(device)


def _require(out: CGDETROutput, names: tuple[str, ...], loss: str) -> None:
    """Clear error when a training-only field that `loss` needs is None."""
    missing = [name for name in names if getattr(out, name) is None]
    if missing:
        raise ValueError(f"CGDETROutput: loss_{loss} needs {missing} (got None)")


def _check_negatives(out: CGDETROutput, n: int) -> Tensor:
    """`real_neg [n]` bool, checked against saliency_neg / t2v_attn_neg `[m, t]`."""
    _require(out, ("t2v_attn_neg", "real_neg"), "saliency (with saliency_neg)")
    real_neg = out.real_neg.bool()
    m = int(real_neg.sum())
    if real_neg.shape != (n,) or out.saliency_neg.shape[0] != m or out.t2v_attn_neg.shape[0] != m:
        raise ValueError(
            f"CGDETROutput: real_neg must be [{n}] with one True per saliency_neg / t2v_attn_neg "
            f"row, got real_neg {tuple(real_neg.shape)} ({m} True), saliency_neg "
            f"{tuple(out.saliency_neg.shape)}, t2v_attn_neg {tuple(out.t2v_attn_neg.shape)}"
        )
    return real_neg


def build_cgdetr_criterion(cfg: CGDETRConfig) -> CGDETRCriterion:
    """Criterion (matcher costs = the set-loss weights, as the release: 4 / 10 / 1) from `cfg`."""
    matcher = HungarianMatcher(cost_span=cfg.span_l1, cost_giou=cfg.span_giou, cost_class=cfg.fg_ce)
    weights = {
        "loss_span": cfg.span_l1,
        "loss_giou": cfg.span_giou,
        "loss_label": cfg.fg_ce,
        "loss_saliency": cfg.saliency,
        "loss_ms_align": cfg.ms_align,
        "loss_distill": cfg.distill,
        "loss_orthogonal_dummy": cfg.orthogonal,
    }
    aux = cfg.dec_layers - 1 if cfg.aux_loss else 0
    return CGDETRCriterion(matcher, weights, cfg.eos_coef, cfg.saliency_margin, cfg.wattn, aux)
