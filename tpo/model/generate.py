"""Generation through HF `generate` (KV cache) with the visual tokens in `inputs_embeds`.

When the model emits a head's begin token (e.g. `<time_begin>`), a logits
processor forces the matching content token next, so the sequence is the same
"begin, content" pair the training forward sees (the official inference fed the content
embedding in place of the content token and never fed the content token: a train/infer mismatch,
available as `llm.head_query: official`, `tpo.model.generate_official`). The content
token is then fed like any token; the embedding hook of TaskTokens gives it its learned vector,
and its last-layer hidden state (one step later, from `output_hidden_states`) is the head query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tpo.model.queries import TaskQueries

if TYPE_CHECKING:
    from tpo.model.vision import VisionOutput


class ForceContentToken(LogitsProcessor):
    """After a begin token, only its content token may follow (its score is kept, the rest -inf)."""

    def __init__(self, begin_ids: tuple[int, ...], content_ids: tuple[int, ...]) -> None:
        self.begin = torch.tensor(begin_ids)
        self.content = torch.tensor(content_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == 0:
            return scores
        match = input_ids[:, -1:] == self.begin.to(input_ids.device)  # [b, n_heads]
        forced = match.any(-1)
        target = (match.long() * self.content.to(input_ids.device)).sum(-1)  # [b]
        only = torch.full_like(scores, float("-inf")).scatter(1, target[:, None], 0.0)
        return torch.where(forced[:, None], only, scores)


@dataclass
class GenerationOutput(TaskQueries):
    """Generated answers and the head queries of the content tokens they contain.

    text: answers with prompt and special tokens stripped; token_ids: generated ids per sample
    (up to, not including, eos); vision: the encoder output for the heads (None: text only);
    task_hidden [n, d_llm], task_head [n], task_sample [n] as in MLLMOutput.
    """

    text: list[str]
    token_ids: list[list[int]]
    vision: VisionOutput | None
    task_hidden: torch.Tensor
    task_head: torch.Tensor
    task_sample: torch.Tensor


def answer_text(tokenizer, token_ids: list[list[int]], task_ids: tuple[int, ...]) -> list[str]:
    """The answers' text: special and task tokens left out (the release's tokenizer does not
    mark its task tokens special), whitespace stripped."""
    drop = set(task_ids)
    kept = [[i for i in row if i not in drop] for row in token_ids]
    return [s.strip() for s in tokenizer.batch_decode(kept, skip_special_tokens=True)]


@torch.no_grad()
def generate(
    model,
    frames: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    logits_processor: list[LogitsProcessor] | None = None,
    instruction_ids: torch.Tensor | None = None,
    instruction_mask: torch.Tensor | None = None,
    **gen_kwargs,
) -> GenerationOutput:
    """Answer left-padded prompts (PromptCollator.prompts) with `model` (a `tpo.model.mllm.MLLM`,
    untyped here: mllm imports this module): frames [b, f, 3, H, W] or None,
    input_ids/attention_mask [b, s]. Greedy unless do_sample; extra kwargs go to HF generate."""
    vision_out, visual = None, None
    if frames is not None:
        vision_out, visual = model.encode_visual(frames, instruction_ids, instruction_mask)
    embeds = model.embed_inputs(input_ids, visual, boxes)
    ids = model.task_tokens.ids
    tok = model.tokenizer
    processors = LogitsProcessorList(
        [*(logits_processor or []), ForceContentToken(ids.begin, ids.content)]
    )
    # Two steps beyond the limit: a begin token at the last allowed step still gets its content
    # token, and that content token is fed once more so its hidden state exists.
    out = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens + 2,
        do_sample=do_sample,
        logits_processor=processors,
        output_hidden_states=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **gen_kwargs,
    )
    seqs = out.sequences  # [b, t]: new tokens only (the prompt went in as embeddings)
    t = seqs.shape[1]
    pos = torch.arange(t, device=seqs.device)
    is_eos = seqs == tok.eos_token_id
    first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), t)
    limit = torch.full_like(first_eos, max_new_tokens)
    if t >= max_new_tokens:
        begin = torch.tensor(ids.begin, device=seqs.device)
        limit = limit + torch.isin(seqs[:, max_new_tokens - 1], begin).long()
    length = torch.minimum(first_eos, limit)
    keep = pos < length[:, None]  # [b, t]
    # the hidden state of generated token j is computed when j is fed, at step j + 1
    steps = [h[-1][:, -1] for h in out.hidden_states[1:]]
    d = embeds.shape[-1]
    token_hidden = torch.stack(steps, 1) if steps else embeds.new_zeros(len(seqs), 0, d)
    h = token_hidden.shape[1]  # t - 1
    heads = model.task_tokens.head_index(seqs).masked_fill(~keep, -1)
    heads[:, h:] = -1
    sel = heads >= 0
    token_ids = [row[:n].tolist() for row, n in zip(seqs, length.tolist())]
    text = answer_text(tok, token_ids, ids.all)
    return GenerationOutput(
        text=text,
        token_ids=token_ids,
        vision=vision_out,
        task_hidden=token_hidden[sel[:, :h]],
        task_head=heads[sel],
        task_sample=sel.nonzero()[:, 0],
    )
