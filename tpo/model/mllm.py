"""The assembled MLLM (vision encoder + connector + LLM with task tokens); heads live elsewhere.

The content tokens' last-layer hidden states are the head queries: `MLLMOutput.task_hidden`
holds them for every `<temp>/<boxes>/<tracking>` in the batch, with the head and the sample
each one belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tpo.model.generate import GenerationOutput, generate
from tpo.model.generate_official import generate_official
from tpo.model.llm import LanguageModel
from tpo.model.prompt import IGNORE_INDEX, VISUAL_TOKEN_ID
from tpo.model.queries import TaskQueries
from tpo.model.tokens import TaskTokens

if TYPE_CHECKING:
    from tpo.model.vision import VisionOutput

__all__ = ["MLLM", "MLLMOutput", "TaskQueries", "label_positions", "position_ids"]


@dataclass
class MLLMOutput(TaskQueries):
    """Training forward output.

    loss: LM loss over answer tokens (labels != -100), or None without labels.
    logits: [b, s, V] when asked for (return_logits=True), else None.
    vision: the encoder output (patches [b, f*p, d_v], frames [b, f, d_v]) or None (no frames).
    visual: the connector's visual tokens [b, q, d_llm] or None (no frames).
    task_hidden: [n, d_llm] last-layer hidden state at each content token, batch-major and in
        sequence order within a sample; task_head: [n] long (head index, `TaskTokens.names`);
    task_sample: [n] long batch row of each.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    vision: VisionOutput | None
    visual: torch.Tensor | None
    task_hidden: torch.Tensor
    task_head: torch.Tensor
    task_sample: torch.Tensor


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """[k] positions whose logits predict a labelled token (labels [b, s], shifted by one).

    The LM head then runs on these rows only: with a 32k vocabulary the full [b, s, V] logits
    cost more time and memory than the rest of a small LLM, and most positions are prompt."""
    target = (labels[:, 1:] != IGNORE_INDEX).any(0)
    return target.nonzero()[:, 0]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[b, s] positions counting only attended tokens (as HF generate does for left padding)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


# llm.head_query -> the generation loop that captures the head queries
GENERATORS = {"tpo": generate, "official": generate_official}


class MLLM(nn.Module):
    """Vision encoder -> connector -> visual tokens spliced into the LLM's prompt embeddings.

    `head_query` picks how generation takes the head queries (`GENERATORS`): "tpo" feeds the
    begin and content tokens (the training forward's semantics), "official" the release's loop.
    """

    def __init__(
        self,
        vision: nn.Module,
        connector: nn.Module,
        llm: LanguageModel,
        task_tokens: TaskTokens,
        tokenizer,
        head_query: str = "tpo",
    ) -> None:
        super().__init__()
        if head_query not in GENERATORS:
            raise ValueError(f"head_query must be one of {sorted(GENERATORS)}, got {head_query!r}")
        self.head_query = head_query
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.task_tokens = task_tokens
        self.tokenizer = tokenizer
        self._embed_hook = task_tokens.attach(llm.input_embeddings())

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per video in the prompt (96 at full size)."""
        return self.connector.num_tokens

    def encode_visual(
        self,
        frames: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> tuple[VisionOutput, torch.Tensor]:
        """frames [b, f, 3, H, W] -> (vision output, visual tokens [b, q, d_llm])."""
        vision_out = self.vision(frames)
        visual = self.connector(
            vision_out.patches, instruction_ids=instruction_ids, instruction_mask=instruction_mask
        )
        return vision_out, visual

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        visual: torch.Tensor | None = None,
        boxes: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Prompt embeddings [b, s, d_llm]: token embeddings (content tokens learned), visual
        tokens [b, q, d_llm] at VISUAL_TOKEN_ID positions, box embeddings at <track_box>.

        A row holds either no visual positions or exactly q; `boxes` are normalised xyxy [n, 4]
        (or a per-sample list), one per <track_box> in batch-major sequence order.
        """
        vis_mask = input_ids == VISUAL_TOKEN_ID  # [b, s]
        embeds = self.llm.embed(input_ids.masked_fill(vis_mask, 0))
        counts = vis_mask.sum(1)
        if visual is not None or bool(counts.any()):
            if visual is None:
                raise ValueError("input_ids hold visual positions but no frames were given")
            q = visual.shape[1]
            if not bool(((counts == 0) | (counts == q)).all()):
                raise ValueError(f"each row needs 0 or {q} visual positions, got {counts.tolist()}")
            # rows are filled in order, so rows without video simply take no visual tokens
            src = visual[counts > 0].to(embeds.dtype)
            embeds = embeds.masked_scatter(vis_mask.unsqueeze(-1), src)
        box_mask = input_ids == self.task_tokens.ids.track_box
        n_box = int(box_mask.sum())
        if n_box or boxes is not None:
            if isinstance(boxes, list | tuple):
                boxes = torch.cat([torch.as_tensor(b).reshape(-1, 4) for b in boxes])
            if boxes is None or boxes.shape != (n_box, 4):
                got = None if boxes is None else tuple(boxes.shape)
                raise ValueError(f"{n_box} <track_box> tokens need boxes [{n_box}, 4], got {got}")
            box_embeds = self.task_tokens.encode_boxes(boxes.to(embeds.device)).to(embeds.dtype)
            embeds = embeds.masked_scatter(box_mask.unsqueeze(-1), box_embeds)
        return embeds

    def forward(
        self,
        frames: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | list[torch.Tensor] | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> MLLMOutput:
        """frames [b, f, 3, H, W] (f=1: images; None: text only), input_ids/attention_mask/labels
        [b, s] from PromptCollator -> MLLMOutput."""
        vision_out, visual = None, None
        if frames is not None:
            vision_out, visual = self.encode_visual(frames, instruction_ids, instruction_mask)
        embeds = self.embed_inputs(input_ids, visual, boxes)
        # logits rows: all (asked for; HF then takes the loss), the labelled ones, or the last
        keep = None if return_logits or labels is None else label_positions(labels)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            labels=labels if return_logits else None,
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=0 if return_logits else (1 if keep is None else keep),
        )
        hidden = out.hidden_states[-1]  # [b, s, d_llm]
        heads = self.task_tokens.head_index(input_ids).masked_fill(attention_mask == 0, -1)
        sel = heads >= 0
        loss = out.loss  # None without labels
        if keep is not None:  # the same mean CE as HF's shifted loss, on the kept rows only
            target = labels[:, keep + 1].to(out.logits.device)
            loss = nn.functional.cross_entropy(
                out.logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX
            )
        return MLLMOutput(
            loss=loss,
            logits=out.logits if return_logits else None,
            vision=vision_out,
            visual=visual,
            task_hidden=hidden[sel],
            task_head=heads[sel],
            task_sample=sel.nonzero()[:, 0],
        )

    def generate(
        self, frames: torch.Tensor | None, input_ids, attention_mask, **kwargs
    ) -> GenerationOutput:
        """Greedy (by default) generation with head-query capture, by `head_query`: see
        tpo.model.generate and tpo.model.generate_official."""
        return GENERATORS[self.head_query](self, frames, input_ids, attention_mask, **kwargs)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """vision, connector, connector_proj, lora, task_tokens, llm (base LLM, normally frozen)."""
        groups: dict[str, list[nn.Parameter]] = {}
        for part in (self.vision, self.connector, self.llm, self.task_tokens):
            for name, params in part.trainable_groups().items():
                groups.setdefault(name, []).extend(params)
        return {name: list({id(p): p for p in ps}.values()) for name, ps in groups.items()}

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Freeze every parameter, then unfreeze those of the named groups."""
        available = self.trainable_groups()
        unknown = sorted(set(groups) - set(available))
        if unknown:
            raise ValueError(f"unknown trainable groups {unknown}; known: {sorted(available)}")
        for p in self.parameters():
            p.requires_grad_(False)
        for name in groups:
            for p in available[name]:
                p.requires_grad_(True)
