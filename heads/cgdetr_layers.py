"""Building blocks of CG-DETR, batch first (`[n, l, h]`): projections, encoder layers,
the text-to-video (T2V) layer with dummy tokens, and the DAB-style span decoder.

Written by hand where torch has no equivalent: attention without input projections whose
queries and keys are concatenations of content and position halves (the decoder's
cross-attention, as conditional / DAB-DETR), and the T2V attention whose dummy tokens take
softmax mass but give no value. Plain self-attention uses `nn.MultiheadAttention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP, StochasticDepth


def mlp(d_in: int, d_hidden: int, d_out: int, layers: int) -> MLP:
    """ReLU MLP with `layers` linear layers (no activation after the last)."""
    return MLP(d_in, [d_hidden] * (layers - 1) + [d_out], activation_layer=nn.ReLU)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both odds terms to >= eps (DETR's convention)."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def sine_positions(mask: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Normalised 1-d sine position embedding of the valid positions: mask `[n, t]` -> `[n, t, dim]`.

    Position = running count of valid entries / the total, times 2 pi; channel i is sin (even i)
    or cos (odd i) of position / temperature^(2 floor(i/2) / dim)."""
    x = mask.float().cumsum(1)
    x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
    return _interleaved_sine(x, dim, temperature)


def _interleaved_sine(x: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """`x [...]` -> `[..., dim]`: sin on even channels, cos on odd ones."""
    i = torch.arange(dim, dtype=torch.float32, device=x.device)
    angles = x[..., None] / temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def span_sine_embedding(spans: Tensor, dim: int) -> Tensor:
    """Sine embedding of (centre, width) anchors `[..., 2]` -> `[..., dim]` (dim/2 channels each)."""
    half = dim // 2
    return torch.cat(
        [_interleaved_sine(spans[..., 0] * 2 * math.pi, half),
         _interleaved_sine(spans[..., 1] * 2 * math.pi, half)], dim=-1,
    )  # fmt: skip


class InputProjection(nn.Module):
    """LayerNorm -> dropout -> linear (-> ReLU): one of CG-DETR's input projection layers."""

    def __init__(self, d_in: int, d_out: int, dropout: float, relu: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(d_in, d_out)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """`[..., d_in]` -> `[..., d_out]`."""
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


def input_projection(d_in: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """`layers` InputProjections to `hidden`; every one has ReLU but the last."""
    dims = [d_in] + [hidden] * layers
    return nn.Sequential(
        *[InputProjection(dims[i], hidden, dropout, relu=i < layers - 1) for i in range(layers)]
    )


class FeedForward(nn.Module):
    """Post-norm residual FFN: norm(x + drop_path(linear2(dropout(prelu(linear1(x))))))."""

    def __init__(self, hidden: int, ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(hidden, ffn)
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, hidden)
        self.drop_path = StochasticDepth(dropout, "row")
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor) -> Tensor:
        """`[n, l, h]` -> `[n, l, h]`."""
        y = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm(x + self.drop_path(y))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; the position embedding is added to queries and keys."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.drop_path = StochasticDepth(dropout, "row")
        self.norm = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn, dropout)

    def forward(self, x: Tensor, pad: Tensor, pos: Tensor) -> Tensor:
        """x, pos `[n, l, h]`, pad `[n, l]` bool (True = ignore) -> `[n, l, h]`."""
        qk = x + pos
        y = self.self_attn(qk, qk, x, key_padding_mask=pad, need_weights=False)[0]
        return self.ffn(self.norm(x + self.drop_path(y)))


class Encoder(nn.Module):
    """A stack of EncoderLayers."""

    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(hidden, heads, ffn, dropout) for _ in range(layers)
        )

    def forward(self, x: Tensor, pad: Tensor, pos: Tensor) -> Tensor:
        """x, pos `[n, l, h]`, pad `[n, l]` bool (True = ignore) -> `[n, l, h]`."""
        for layer in self.layers:
            x = layer(x, pad, pos)
        return x


def _split(x: Tensor, heads: int) -> Tensor:
    """`[n, l, heads * c]` -> `[n, heads, l, c]`."""
    n, length, d = x.shape
    return x.view(n, length, heads, d // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """`[n, heads, l, c]` -> `[n, l, heads * c]`."""
    n, heads, length, c = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * c)


def projectionless_attention(
    q: Tensor, k: Tensor, v: Tensor, heads: int, pad: Tensor | None, dropout: float,
    training: bool, skip_values: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Multi-head scaled dot-product attention on already projected q `[n, lq, d]`, k `[n, lk, d]`,
    v `[n, lk, dv]`; pad `[n, lk]` bool (True = ignore). The first `skip_values` keys take part
    in the softmax but give no value (CG-DETR's dummies). Returns the heads' concatenated
    outputs `[n, lq, dv]` and the head-mean attention `[n, lq, lk]` (before dropout). With no
    keys the output is zero."""
    qh, kh, vh = _split(q, heads), _split(k, heads), _split(v, heads)
    logits = (qh * qh.shape[-1] ** -0.5) @ kh.transpose(-1, -2)  # [n, H, lq, lk]
    if pad is not None:
        logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    weights = logits.softmax(-1)
    dropped = F.dropout(weights, dropout, training)
    out = dropped[..., skip_values:] @ vh[:, :, skip_values:]
    return _merge(out), weights.mean(1)


class T2VLayer(nn.Module):
    """Text-to-video layer: clips attend to dummies + text (no input projections; dummies take
    attention mass but give no value); then, with x = clips + attention output,
    norm2(x + ffn(norm1(x))) (the release's order: the FFN reads the normed sum, the residual
    adds the un-normed one). The text is not updated."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, num_dummies: int):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.num_dummies = num_dummies
        self.out_proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.linear1 = nn.Linear(hidden, ffn)
        self.activation = nn.PReLU()
        self.ffn_dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.drop_path1 = StochasticDepth(dropout, "row")
        self.drop_path2 = StochasticDepth(dropout, "row")

    def forward(
        self, clips: Tensor, clip_pos: Tensor, text: Tensor, text_pos: Tensor, text_pad: Tensor,
        skip_dummies: bool = True,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """clips, clip_pos `[n, t, h]`; text, text_pos `[n, l, h]` (dummies first), text_pad
        `[n, l]` bool (True = ignore) -> clips `[n, t, h]`, attention `[n, t, l]`. An empty
        text (l = 0) gives a zero attention output (only the output bias is added)."""
        out, weights = projectionless_attention(
            clips + clip_pos, text + text_pos, text, self.heads, text_pad, self.dropout,
            self.training, self.num_dummies if skip_dummies else 0,
        )  # fmt: skip
        x = clips + self.drop_path1(self.out_proj(out))
        y = self.linear2(self.ffn_dropout(self.activation(self.linear1(self.norm1(x)))))
        return self.norm2(x + self.drop_path2(y)), weights


class DecoderLayer(nn.Module):
    """Conditional/DAB-DETR decoder layer: self-attention over the queries with content +
    position projections, cross-attention whose queries and keys concatenate a content half and
    a sine-position half per head, then a FeedForward. The query-position projection of the
    cross-attention exists in the first layer only (`first`)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, first: bool):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        linear = lambda: nn.Linear(hidden, hidden)  # noqa: E731
        self.sa_q, self.sa_q_pos, self.sa_k, self.sa_k_pos, self.sa_v = (linear() for _ in range(5))
        self.sa_out = linear()
        self.sa_drop = StochasticDepth(dropout, "row")
        self.sa_norm = nn.LayerNorm(hidden)
        self.ca_q, self.ca_k, self.ca_k_pos, self.ca_v, self.ca_q_sine = (
            linear() for _ in range(5)
        )
        self.ca_q_pos = linear() if first else None
        self.ca_out = linear()
        self.ca_drop = StochasticDepth(dropout, "row")
        self.ca_norm = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn, dropout)

    def forward(
        self, tgt: Tensor, memory: Tensor, memory_pad: Tensor, pos: Tensor, query_pos: Tensor,
        query_sine: Tensor,
    ) -> Tensor:  # fmt: skip
        """tgt, query_pos, query_sine `[n, q, h]`; memory, pos `[n, t, h]`; memory_pad `[n, t]`
        bool (True = ignore) -> `[n, q, h]`."""
        q = self.sa_q(tgt) + self.sa_q_pos(query_pos)
        k = self.sa_k(tgt) + self.sa_k_pos(query_pos)
        out, _ = projectionless_attention(
            q, k, self.sa_v(tgt), self.heads, None, self.dropout, self.training
        )
        tgt = self.sa_norm(tgt + self.sa_drop(self.sa_out(out)))

        q, k, k_pos = self.ca_q(tgt), self.ca_k(memory), self.ca_k_pos(pos)
        if self.ca_q_pos is not None:
            q, k = q + self.ca_q_pos(query_pos), k + k_pos
        n, nq, h = q.shape
        c = h // self.heads
        sine = self.ca_q_sine(query_sine)
        q = torch.cat([q.view(n, nq, self.heads, c), sine.view(n, nq, self.heads, c)], -1)
        t = k.shape[1]
        k = torch.cat([k.view(n, t, self.heads, c), k_pos.view(n, t, self.heads, c)], -1)
        out, _ = projectionless_attention(
            q.view(n, nq, 2 * h), k.view(n, t, 2 * h), self.ca_v(memory), self.heads, memory_pad,
            self.dropout, self.training,
        )  # fmt: skip
        tgt = self.ca_norm(tgt + self.ca_drop(self.ca_out(out)))
        return self.ffn(tgt)


class SpanDecoder(nn.Module):
    """DAB-DETR span decoder: queries are (centre, width) anchors refined layer by layer.

    Per layer: the anchor's sine embedding gives the query position (`ref_point_head`), is
    scaled by `query_scale(output)` (from the second layer) and by the ratio of a predicted
    width (`ref_anchor_head`) to the anchor's width; after the layer, `refine(output)` moves the
    anchor in logit space (the next layer's anchor, without gradient through it).
    """

    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.layers = nn.ModuleList(
            DecoderLayer(hidden, heads, ffn, dropout, first=i == 0) for i in range(layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.query_scale = mlp(hidden, hidden, hidden, 2)
        self.ref_point_head = mlp(hidden, hidden, hidden, 2)
        self.ref_anchor_head = mlp(hidden, hidden, 1, 2)
        self.refine = mlp(hidden, hidden, 2, 3)

    def forward(
        self, memory: Tensor, memory_pad: Tensor, pos: Tensor, anchors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """memory, pos `[n, t, h]`, memory_pad `[n, t]`, anchors `[n, q, 2]` (logits) ->
        normed outputs of every layer `[L, n, q, h]` and the anchor each layer started from
        `[L, n, q, 2]` (in [0, 1])."""
        n, nq = anchors.shape[:2]
        output = memory.new_zeros(n, nq, self.hidden)
        ref = anchors.sigmoid()
        outputs, refs = [], [ref]  # refs keep their gradient; the next layer reads ref detached
        for i, layer in enumerate(self.layers):
            sine = span_sine_embedding(ref, self.hidden).to(memory.dtype)
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(output)
            sine = sine * (self.ref_anchor_head(output).sigmoid()[..., 0] / ref[..., 1])[..., None]
            output = layer(output, memory, memory_pad, pos, query_pos, sine)
            new = (self.refine(output) + inverse_sigmoid(ref)).sigmoid()
            if i < len(self.layers) - 1:
                refs.append(new)
            ref = new.detach()
            outputs.append(self.norm(output))
        return torch.stack(outputs), torch.stack(refs)
