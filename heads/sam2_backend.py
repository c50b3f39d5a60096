"""SAM2 for the mask head: cached frozen image features, decoding, video propagation.

Everything here talks to the `sam2` package (1.x) through the model `sam2_build` makes; the
video predictor runs on in-memory frames (`sam2_video`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tpo.heads.sam2_video import (
    propagate_logits,
    seed_box,
    seed_embedding,
    seed_mask,
    to_sam_input,
    video_state,
)
from tpo.model.sharding import is_sharded, whole

PROMPT_DIM = 256  # SAM2's prompt / decoder width


def frame_key(video_id: str | None, frame: Tensor, index: int | None = None) -> Hashable:
    """Cache key of one frame: (video id, frame index), or (video id, digest of the pixels)."""
    if index is not None and video_id is not None:
        return (video_id, int(index))
    data = frame.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).hexdigest()
    return (video_id, tuple(data.shape), str(data.dtype), digest)


class FeatureCache:
    """LRU dict of per-frame image-encoder features, bounded to `max_items` frames."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: OrderedDict[Hashable, tuple[Tensor, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> tuple[Tensor, ...] | None:
        """The features under `key` (marked most recent), or None."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: tuple[Tensor, ...]) -> None:
        """Store `value`, evicting the least recently used beyond `max_items`."""
        if self.max_items <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Drop everything (counters too)."""
        self._items.clear()
        self.hits = self.misses = 0


@dataclass
class ImageFeatures:
    """Decoder inputs for `k` frames: `embed [k, 256, h, w]` (lowest level, h = S/16) and
    `high_res` = `[k, 32, 4h, 4w]`, `[k, 64, 2h, 2w]` (projected by the decoder's conv_s0/s1)."""

    embed: Tensor
    high_res: list[Tensor]


class SAM2Backend(nn.Module):
    """A frozen SAM2 (image encoder, memory modules, prompt encoder) and its mask decoder.

    The decoder (including its conv_s0/conv_s1 projections of the high-res features) is
    trainable when `train_decoder`; everything else never requires grad and stays in eval mode.
    The cache stores the raw image-encoder output (before conv_s0/s1, which may train), so
    cached features stay valid while the decoder learns.
    """

    def __init__(self, sam: nn.Module, train_decoder: bool = True, cache_frames: int = 64):
        super().__init__()
        self.sam = sam
        self.train_decoder = train_decoder
        self.cache = FeatureCache(cache_frames)
        self.encoder_calls = 0  # frames run through the image encoder (cache misses)
        self.image_size = int(sam.image_size)
        for p in sam.parameters():
            p.requires_grad_(False)
        if train_decoder:
            for p in sam.sam_mask_decoder.parameters():
                p.requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True) -> SAM2Backend:
        """Only the decoder follows `mode` (when trainable); the rest of SAM2 stays in eval."""
        self.training = mode
        self.sam.eval()
        self.sam.sam_mask_decoder.train(mode and self.train_decoder)
        return self

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The mask decoder's parameters (trainable only with `train_decoder`)."""
        return list(self.sam.sam_mask_decoder.parameters())

    def zero3_external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where SAM2's forward reads a child's weight directly (the
        decoder's output tokens, the prompt encoder's point embeddings): ZeRO-3 must gather
        each with the module that reads it (`deepspeed.zero.register_external_parameter`)."""
        dec, enc = self.sam.sam_mask_decoder, self.sam.sam_prompt_encoder
        tokens = [dec.iou_token, dec.mask_tokens, getattr(dec, "obj_score_token", None)]
        points = [*enc.point_embeddings, enc.not_a_point_embed, enc.no_mask_embed]
        return [(dec, t.weight) for t in tokens if t is not None] + [
            (enc, e.weight) for e in points
        ]

    @property
    def device(self) -> torch.device:
        return self.sam.no_mem_embed.device

    @property
    def decoder_dtype(self) -> torch.dtype:
        return self.sam.sam_mask_decoder.iou_token.weight.dtype

    def _frozen_tensors(self) -> Iterator[Tensor]:
        decoder = self.sam.sam_mask_decoder
        for child in self.sam.children():
            if child is not decoder or not self.train_decoder:
                yield from child.parameters()
                yield from child.buffers()
        yield from self.sam.parameters(recurse=False)
        yield from self.sam.buffers(recurse=False)

    def _frozen_fp32(self) -> None:
        """Put SAM2's frozen tensors back in fp32 if the model was cast (a bf16 engine casts
        every parameter): SAM2 makes fp32 tensors inside (positional encodings, the video
        predictor's images) that bf16 weights would not match. Frozen tensors are in no
        optimizer, so re-casting them in place is safe; a trainable decoder keeps its dtype."""
        for t in self._frozen_tensors():
            if is_sharded(t):  # ZeRO-3 shard: gathered in the engine's dtype on each use
                continue
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()

    def _autocast(self) -> torch.autocast:
        """bf16 autocast over fp32 weights on CUDA, SAM2's own way of running fast; also on the
        CPU when ZeRO-3 shards the weights (they stay bf16, autocast matches SAM2's fp32 inputs)."""
        on = self.device.type == "cuda" or is_sharded(self.sam.no_mem_embed)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _encode(self, frames: Tensor) -> list[tuple[Tensor, ...]]:
        """Raw FPN features of `[k, 3, H, W]` frames, one `(l0, l1, l2)` tuple per frame."""
        self._frozen_fp32()
        x = to_sam_input(frames.to(self.device), self.image_size)
        # one frame at a time: a batched encode rounds differently by batch size, so a frame's
        # features would depend on which of its batch-mates the cache held (a resumed run starts
        # with an empty cache, and its losses drifted from the uninterrupted run's)
        with torch.no_grad(), self._autocast():
            fpns = [self.sam.image_encoder(x[i : i + 1])["backbone_fpn"] for i in range(len(x))]
        self.encoder_calls += len(frames)
        n = self.sam.num_feature_levels
        return [tuple(level[0] for level in fpn[-n:]) for fpn in fpns]

    def image_features(
        self, frames: Tensor, keys: Sequence[Hashable] | None = None
    ) -> ImageFeatures:
        """Decoder inputs for `[k, 3, H, W]` frames; `keys` (one per frame) enable the cache.

        Nothing is cached under inference mode: its tensors could not serve a later backward.
        """
        if keys is not None and len(keys) != len(frames):
            raise ValueError(f"image_features: {len(keys)} cache keys for {len(frames)} frames")
        use_cache = keys is not None and not torch.is_inference_mode_enabled()
        per_frame: list[tuple[Tensor, ...] | None] = [None] * len(frames)
        if use_cache:
            per_frame = [self.cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(per_frame) if f is None]
        if missing:
            computed = self._encode(frames[missing])
            for i, feats in zip(missing, computed):
                per_frame[i] = feats
                if use_cache:
                    self.cache.put(keys[i], feats)
        dtype = self.decoder_dtype
        l0, l1, l2 = (torch.stack([f[j] for f in per_frame]).to(dtype) for j in range(3))
        decoder = self.sam.sam_mask_decoder
        high_res = [decoder.conv_s0(l0), decoder.conv_s1(l1)]
        embed = l2
        if self.sam.directly_add_no_mem_embed:  # as SAM2 does for frames without memory
            with whole(self.sam.no_mem_embed):
                embed = embed + self.sam.no_mem_embed.view(1, -1, 1, 1).to(dtype)
        return ImageFeatures(embed, high_res)

    def no_mask_dense(self, n: int) -> Tensor:
        """SAM2's dense prompt for "no mask input" `[n, 256, h, w]`."""
        size = self.sam.sam_prompt_encoder.image_embedding_size
        weight = self.sam.sam_prompt_encoder.no_mask_embed.weight
        with whole(weight):  # frozen: a copy outlives the gathered weight under ZeRO-3
            vector = weight.detach().clone() if is_sharded(weight) else weight
        return vector.reshape(1, -1, 1, 1).expand(n, -1, *size)

    def decode(self, sparse: Tensor, feats: ImageFeatures, dense: Tensor | None = None) -> Tensor:
        """Single-mask logits `[k, 4h, 4w]` (h = S/16) for `k` frames with prompts `sparse
        [k, t, 256]` and `dense [k, 256, h, w]` (None: SAM2's no-mask embedding)."""
        k = feats.embed.shape[0]
        if sparse.shape[0] != k:
            raise ValueError(f"decode: {sparse.shape[0]} prompts for {k} frames")
        self._frozen_fp32()
        dense = self.no_mask_dense(k) if dense is None else dense
        dtype = self.decoder_dtype
        logits, _, _, _ = self.sam.sam_mask_decoder(
            image_embeddings=feats.embed,
            image_pe=self.sam.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse.to(dtype),
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=False,
            repeat_image=False,
            high_res_features=feats.high_res,
        )
        return logits[:, 0]

    @torch.no_grad()
    def box_embedding(self, boxes: Tensor) -> Tensor:
        """SAM2's prompt-encoder embedding `[n, 3, 256]` of normalised xyxy `boxes [n, 4]`:
        two corner points (labels 2, 3) + the padding point, as SAM2 embeds a lone box."""
        self._frozen_fp32()
        corners = boxes.to(self.device, torch.float32).view(-1, 2, 2) * self.image_size
        labels = torch.tensor([[2, 3]], dtype=torch.int32, device=self.device).expand(len(boxes), 2)
        sparse, _ = self.sam.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
        return sparse

    @contextlib.contextmanager
    def _predictor_ready(self) -> Iterator[None]:
        """SAM2 in eval and fp32 for its video predictor; a low-precision trainable decoder is
        swapped for an fp32 copy meanwhile (its own parameters are left untouched)."""
        was = self.training
        self._frozen_fp32()
        decoder = self.sam.sam_mask_decoder
        if self.decoder_dtype != torch.float32:
            self.sam.sam_mask_decoder = copy.deepcopy(decoder).float()
        self.sam.sam_mask_decoder.eval()
        try:
            yield
        finally:
            self.sam.sam_mask_decoder = decoder
            self.train(was)

    def propagate_logits(
        self,
        frames: Tensor,
        prompt_frame: int = 0,
        mask: Tensor | None = None,
        box_xyxy: Sequence[float] | Tensor | None = None,
        sparse: Tensor | None = None,
        dense: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(prompt-frame logits `[H, W]`, every frame's logits `[T, H, W]`) at the video's
        resolution: SAM2's video predictor on `frames [T, 3, H, W]` (uint8 or float in [0, 1],
        held in memory) seeded on `prompt_frame` by exactly one of a `mask [S, S]`, a pixel
        `box_xyxy`, or a `sparse [1, t, 256]` prompt (+ optional `dense [1, 256, h, w]`) in
        place of a dummy box's embedding (the official path), then propagated forward (and
        backward when prompt_frame > 0) through memory attention."""
        if sum(x is not None for x in (mask, box_xyxy, sparse)) != 1:
            raise ValueError("propagate: give exactly one of mask, box_xyxy or sparse")
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"propagate: frames must be [T, 3, H, W], got {tuple(frames.shape)}")
        if not 0 <= prompt_frame < len(frames):
            raise ValueError(f"propagate: prompt_frame {prompt_frame} outside [0, {len(frames)})")
        with self._predictor_ready(), self._autocast(), torch.inference_mode():
            state = video_state(self.sam, frames)
            if mask is not None:
                first = seed_mask(self.sam, state, prompt_frame, mask)
            elif box_xyxy is not None:
                first = seed_box(self.sam, state, prompt_frame, torch.as_tensor(box_xyxy))
            else:
                assert sparse is not None
                first = seed_embedding(self.sam, state, prompt_frame, sparse, dense)
            first = first.float().cpu()
            return first, propagate_logits(self.sam, state, prompt_frame)

    def propagate(
        self,
        frames: Tensor,
        prompt_frame: int = 0,
        mask: Tensor | None = None,
        box_xyxy: Sequence[float] | Tensor | None = None,
        sparse: Tensor | None = None,
        dense: Tensor | None = None,
    ) -> Tensor:
        """Masks `[T, H, W]` bool (logits > 0) of `propagate_logits`."""
        _, logits = self.propagate_logits(frames, prompt_frame, mask, box_xyxy, sparse, dense)
        return logits > 0
