"""CG-DETR (Correlation-Guided DETR, the release's temporal head) as a network on features.

Inputs: query (text) features `[n, l, d_t]` with their mask, clip (video) features `[n, t, d_v]`
(the temporal endpoint feature already appended) with their mask, and the `<temp>` head query
`[n, d_t]`, which joins the text right after its valid positions. Data flow:

    text -> txt_proj (+ type 0) -> dummy encoder over [dummies; text] -> text-conditioned dummies
    video -> vid_proj (+ type 1); sine positions of the valid clips
    T2V layers: clips attend to [dummies; text] (dummies absorb attention, give no value)
    global token: the prompt bank entry closest to the clips (weighted by their text attention)
        + the clip mean, passed through the T2V layers alone
    encoder over [global; clips] -> memory (clips += global) -> DAB span decoder -> spans, logits
    saliency = <proj1(clip memory), proj2(global memory)> / sqrt(h)

Training (`moment_clips` given) adds the moment / non-moment tokens, the sentence tokens and, with
video ids, negative pairs (each row's video with the next row's text); see `CGDETROutput`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpo.config.heads import CGDETRConfig
from tpo.heads.cgdetr_layers import (
    Encoder,
    SpanDecoder,
    T2VLayer,
    input_projection,
    inverse_sigmoid,
    mlp,
    sine_positions,
)
from tpo.heads.cgdetr_output import CGDETROutput


def insert_query(text: Tensor, mask: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Put `query [n, d]` right after the valid positions of `text [n, l, d]` (valid first, mask
    `[n, l]` 1 = valid) -> `[n, l + 1, d]` and its mask `[n, l + 1]`."""
    n, length, d = text.shape
    valid = mask.sum(1).round().long()[:, None]  # [n, 1]
    pos = torch.arange(length + 1, device=text.device)[None]  # [1, l + 1]
    src = torch.where(pos < valid, pos, pos - 1).clamp(min=0)  # text index of each new position
    at_query = pos == valid
    out = text.gather(1, src[..., None].expand(n, length + 1, d))
    out = torch.where(at_query[..., None], query[:, None].to(out.dtype), out)
    new_mask = torch.where(at_query, torch.ones_like(src, dtype=mask.dtype), mask.gather(1, src))
    return out, new_mask


class TextPositions(nn.Module):
    """Learned text positions (off in the release: `use_txt_pos` False): LN(x + table[i])."""

    def __init__(self, positions: int, hidden: int, dropout: float):
        super().__init__()
        self.table = nn.Embedding(positions, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """`[n, l, h]` -> `[n, l, h]`."""
        if x.shape[1] > self.table.num_embeddings:
            raise ValueError(f"TextPositions: {x.shape[1]} > {self.table.num_embeddings} positions")
        return self.dropout(self.norm(x + self.table(torch.arange(x.shape[1], device=x.device))))


class CGDETRNet(nn.Module):
    """CG-DETR on given features; `forward` documents the inputs, `CGDETROutput` the outputs."""

    def __init__(self, cfg: CGDETRConfig, d_video: int, d_text: int):
        super().__init__()
        self.cfg = cfg
        h, heads, ffn, p = cfg.hidden, cfg.num_heads, cfg.ffn, cfg.dropout
        self.hidden, self.num_dummies = h, cfg.num_dummies
        self.vid_proj = input_projection(d_video, h, cfg.n_input_proj, cfg.input_dropout)
        self.txt_proj = input_projection(d_text, h, cfg.n_input_proj, cfg.input_dropout)
        self.type_embed = nn.Embedding(2, h)  # 0: text, 1: video
        self.txt_pos = TextPositions(cfg.max_q_l, h, cfg.input_dropout)  # used with use_txt_pos
        # the release keeps a text projection it never calls; held so its checkpoint round-trips
        self.spare_txt_proj = input_projection(d_text, h, 1, p)
        self.dummy_tokens = nn.Parameter(torch.randn(cfg.num_dummies, h))
        self.dummy_pos = nn.Parameter(torch.randn(cfg.num_dummies, h))
        self.prompt_bank = nn.Parameter(torch.randn(cfg.total_prompts, h))
        self.global_pos = nn.Parameter(torch.randn(1, h))
        self.moment_token = nn.Parameter(torch.randn(h))
        self.moment_pos = nn.Parameter(torch.randn(h))
        self.sentence_token = nn.Parameter(torch.randn(h))
        self.sentence_pos = nn.Parameter(torch.randn(h))
        self.dummy_encoder = Encoder(cfg.dummy_layers, h, heads, ffn, p)
        self.sentence_encoder = Encoder(cfg.sent_layers, h, heads, ffn, p)
        self.moment_encoder = Encoder(cfg.moment_layers, h, heads, ffn, p)
        self.t2v = nn.ModuleList(
            T2VLayer(h, heads, ffn, p, cfg.num_dummies) for _ in range(cfg.t2v_layers)
        )
        self.encoder = Encoder(cfg.enc_layers, h, heads, ffn, p)
        self.decoder = SpanDecoder(cfg.dec_layers, h, heads, ffn, p)
        self.query_anchors = nn.Embedding(cfg.num_queries, 2)  # (centre, width) logits
        self.span_embed = mlp(h, h, 2, 3)
        self.class_embed = nn.Linear(h, 2)
        self.saliency_clip = nn.Linear(h, h)
        self.saliency_global = nn.Linear(h, h)
        self._init_weights()

    def _init_weights(self) -> None:
        """The release's init: Xavier for the transformer's matrices, N(0, 0.02) token types."""
        for part in (self.t2v, self.encoder, self.decoder, self.moment_encoder):
            for w in part.parameters():
                if w.dim() > 1:
                    nn.init.xavier_uniform_(w)
        nn.init.normal_(self.type_embed.weight, std=0.02)

    def forward(
        self,
        text: Tensor,
        text_mask: Tensor,
        video: Tensor,
        video_mask: Tensor,
        query: Tensor,
        moment_clips: Tensor | None = None,
        video_ids: Sequence[str] | None = None,
    ) -> CGDETROutput:
        """text `[n, l, d_t]` (mask `[n, l]`, valid first), video `[n, t, d_v]` (mask `[n, t]`),
        query `[n, d_t]` (the `<temp>` hidden state); training: moment_clips `[n, t]` (1 inside a
        ground-truth moment) and video_ids (n names: rows with another video than the next row's
        give negative pairs)."""
        dtype = self.class_embed.weight.dtype
        d = self.num_dummies
        text, text_mask = insert_query(text.to(dtype), text_mask.to(dtype), query.to(dtype))
        vmask = video_mask.bool()
        n = text.shape[0]
        types = self.type_embed(torch.arange(2, device=text.device))  # called: ZeRO-3 gathers it
        v = self.vid_proj(video.to(dtype)) + types[1]  # [n, t, h]
        t = self.txt_proj(text) + types[0]  # [n, l, h]
        pos_v = sine_positions(vmask, self.hidden).to(dtype)
        pos_t = self.txt_pos(t) if self.cfg.use_txt_pos else torch.zeros_like(t)

        dpos = self.dummy_pos[None].expand(n, -1, -1)
        side_mask = torch.cat([text_mask.new_ones(n, d), text_mask], 1)  # [n, d + l]
        dummies = self.dummy_encoder(
            torch.cat([self.dummy_tokens[None].expand(n, -1, -1), t], 1),
            ~side_mask.bool(),
            torch.cat([dpos, pos_t], 1),
        )[:, :d]
        side, side_pos = torch.cat([dummies, t], 1), torch.cat([dpos, pos_t], 1)
        count = vmask.sum(1, keepdim=True).clamp(min=1)
        ctx = ((v * vmask[..., None]).sum(1) / count).detach()  # clip mean [n, h]

        mem, glob, attn = self._encode(v, pos_v, vmask, ctx, side, side_pos, ~side_mask.bool())
        hs, refs = self.decoder(
            mem, ~vmask, pos_v, self.query_anchors.weight[None].expand(n, -1, -1)
        )
        logits = self.class_embed(hs)  # [L, n, q, 2]
        spans = (self.span_embed(hs) + inverse_sigmoid(refs)).sigmoid()  # [L, n, q, 2]
        out = CGDETROutput(
            pred_logits=logits[-1],
            pred_spans=spans[-1],
            saliency=self._saliency(mem, glob),
            t2v_attn=(attn[:, :, d:] * text_mask[:, None]).sum(-1).clamp(0.0, 1.0),
            attn=attn,
            video_mask=vmask,
            text_mask=side_mask,
            dummy_tokens=dummies,
            global_tokens=self.prompt_bank,
            aux=[{"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1])],
        )
        if moment_clips is not None:
            self._training_terms(out, v, pos_v, t, pos_t, dummies, dpos, text_mask, moment_clips)
            if video_ids is not None:
                self._negatives(out, v, pos_v, vmask, ctx, side, side_pos, side_mask, video_ids)
        return out

    def _saliency(self, mem: Tensor, glob: Tensor) -> Tensor:
        """Clip memory `[n, t, h]` x global memory `[n, h]` -> saliency `[n, t]`."""
        scores = self.saliency_clip(mem) * self.saliency_global(glob)[:, None]
        return scores.sum(-1) / math.sqrt(self.hidden)

    def _encode(
        self, v: Tensor, pos_v: Tensor, vmask: Tensor, ctx: Tensor, side: Tensor,
        side_pos: Tensor, side_pad: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """T2V layers, the global token and the encoder: clip memory `[n, t, h]` (global
        added), global memory `[n, h]`, T2V attention `[n, t, d + l]` (mean of the layers)."""
        x, attn = v, 0.0
        for layer in self.t2v:
            x, w = layer(x, pos_v, side, side_pos, side_pad)
            attn = attn + w
        attn = attn / len(self.t2v)
        g = self._global_token(v, vmask, ctx, attn)[:, None]  # [n, 1, h]
        gpos = self.global_pos[None].expand(v.shape[0], -1, -1)
        empty = side[:, :0]
        for layer in self.t2v:  # the global token alone: no keys, only the output bias
            g, _ = layer(g, gpos, empty, empty, side_pad[:, :0], skip_dummies=False)
        pad = torch.cat([vmask.new_zeros(v.shape[0], 1), ~vmask], 1)
        mem = self.encoder(torch.cat([g, x], 1), pad, torch.cat([gpos, pos_v], 1))
        glob = mem[:, 0]
        return mem[:, 1:] + glob[:, None], glob, attn

    def _global_token(self, v: Tensor, vmask: Tensor, ctx: Tensor, attn: Tensor) -> Tensor:
        """The top `num_prompts` prompt-bank entries by clip similarity (clips weighted by the
        text attention they receive), summed with their scores, plus the clip mean: `[n, h]`."""
        sim = F.normalize(v - ctx[:, None], dim=-1) @ F.normalize(self.prompt_bank, dim=-1).T
        sim = sim.softmax(-1)  # [n, t, P]
        weight = attn[:, :, self.num_dummies :].sum(-1).detach() * vmask  # [n, t]
        weight = weight / weight.sum(1, keepdim=True) * weight.shape[1]
        score, idx = (sim * weight[..., None]).mean(1).topk(self.cfg.num_prompts, dim=1)
        return (score[..., None] * self.prompt_bank[idx]).sum(1) + ctx

    def _training_terms(
        self, out: CGDETROutput, v: Tensor, pos_v: Tensor, t: Tensor, pos_t: Tensor,
        dummies: Tensor, dpos: Tensor, text_mask: Tensor, moment_clips: Tensor,
    ) -> None:  # fmt: skip
        """Moment / non-moment tokens over the clips, sentence tokens over text and dummies."""
        n = v.shape[0]
        vmask = out.video_mask
        moment = moment_clips.clamp(0, 1).bool() & vmask
        on = vmask.new_ones(n, 1)
        mpos = torch.cat([self.moment_pos.expand(n, 1, -1), pos_v], 1)
        msrc = torch.cat([self.moment_token.expand(n, 1, -1), v], 1)
        m = self.moment_encoder(msrc, ~torch.cat([on, moment], 1), mpos)
        nm = self.moment_encoder(msrc, ~torch.cat([on, vmask & ~moment], 1), mpos)
        stok, spos = self.sentence_token.expand(n, 1, -1), self.sentence_pos.expand(n, 1, -1)
        s = self.sentence_encoder(
            torch.cat([stok, t], 1),
            ~torch.cat([on, text_mask.bool()], 1),
            torch.cat([spos, pos_t], 1),
        )
        sd = self.sentence_encoder(
            torch.cat([stok, dummies], 1),
            ~vmask.new_ones(n, 1 + dummies.shape[1]),
            torch.cat([spos, dpos], 1),
        )
        words = torch.cat([sd[:, 1:], s[:, 1:]], 1)  # [n, d + l, h]
        out.memory_moment, out.nmemory_moment = m[:, 0], nm[:, 0]
        out.sentence_txt, out.sentence_dummy = s[:, 0], sd[:, 0]
        out.moment2txt = m[:, 1:] @ words.transpose(1, 2)
        out.nmoment2txt = nm[:, 1:] @ words.transpose(1, 2)
        out.moment_mask = moment
        out.src_vid = torch.where(moment[..., None], m[:, 1:], nm[:, 1:])

    def _negatives(
        self, out: CGDETROutput, v: Tensor, pos_v: Tensor, vmask: Tensor, ctx: Tensor,
        side: Tensor, side_pos: Tensor, side_mask: Tensor, video_ids: Sequence[str],
    ) -> None:  # fmt: skip
        """Each row's clips with the next row's text (rows whose next row shows another video)."""
        ids = list(video_ids)
        if len(ids) != v.shape[0]:
            raise ValueError(f"CGDETRNet: {len(ids)} video ids for {v.shape[0]} rows")
        real = torch.tensor([a != b for a, b in zip(ids, ids[1:] + ids[:1])], device=v.device)
        out.real_neg = real
        if not bool(real.any()):
            return
        side_n, mask_n = side.roll(-1, 0)[real], side_mask.roll(-1, 0)[real]
        mem, glob, attn = self._encode(
            v[real], pos_v[real], vmask[real], ctx[real], side_n, side_pos[real], ~mask_n.bool()
        )
        d = self.num_dummies
        out.saliency_neg = self._saliency(mem, glob)
        out.t2v_attn_neg = (attn[:, :, d:] * mask_n[:, None, d:]).sum(-1).clamp(0.0, 1.0)
