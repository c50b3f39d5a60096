"""Head-query decoding of the VideoChat-TPO release (`llm.head_query: official`).

The release decodes token by token with the KV cache. When a row emits a head's begin token
(`<time_begin>`, `<box_begin>`, `<track_begin>`, any head's `begin`), one extra LLM step feeds
that head's task vector (the learned embedding of its content token) *in place of* the content
token: at the position the next token takes, attending to the prompt and the earlier tokens but
not to the begin token. That step's final-norm hidden state is the head query and its KV is
dropped, so the next step feeds the begin token at that same position. The answer's ids hold the
begin token and no content token. The loop is written by hand because HF `generate` has no hook
for an extra, discarded step between two tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tpo.model.generate import GenerationOutput, answer_text


def _warpers(
    do_sample: bool, temperature: float, top_k: int, top_p: float
) -> list[LogitsProcessor]:
    if not do_sample:
        return []
    warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@torch.no_grad()
def generate_official(
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
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
) -> GenerationOutput:
    """Answer left-padded prompts the release's way (module docstring) with `model` (a
    `tpo.model.mllm.MLLM`): frames [b, f, 3, H, W] or None, input_ids/attention_mask [b, s].
    Greedy unless do_sample; stops at the tokenizer's eos (not kept) or after max_new_tokens."""
    vision_out, visual = None, None
    if frames is not None:
        vision_out, visual = model.encode_visual(frames, instruction_ids, instruction_mask)
    embeds = model.embed_inputs(input_ids, visual, boxes)  # [b, s, d]
    mask = attention_mask.to(embeds.device)
    if num_return_sequences > 1:
        embeds = embeds.repeat_interleave(num_return_sequences, 0)
        mask = mask.repeat_interleave(num_return_sequences, 0)
    b, device = embeds.shape[0], embeds.device
    ids = model.task_tokens.ids
    begin = torch.tensor(ids.begin, dtype=torch.long, device=device)  # [n_heads]
    tok = model.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    processors = LogitsProcessorList(
        [*(logits_processor or []), *_warpers(do_sample, temperature, top_k, top_p)]
    )

    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [b, s] positions of attended tokens
    out = model.llm(
        inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
        logits_to_keep=1,
    )  # fmt: skip
    cache, logits = out.past_key_values, out.logits[:, -1]  # [b, V]
    next_pos = pos[:, -1:] + 1  # [b, 1]
    ones = mask.new_ones(b, 1)
    generated = torch.empty(b, 0, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    queries: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(b)]  # (head, [d])
    for step in range(max_new_tokens):
        scores = processors(generated, logits.float())
        if do_sample:
            token = torch.multinomial(scores.softmax(-1), 1)[:, 0]
        else:
            token = scores.argmax(-1)
        token = token.masked_fill(done, pad)  # [b]; finished rows emit padding
        generated = torch.cat([generated, token[:, None]], 1)
        done = done | (token == eos)
        fired = (token[:, None] == begin) & ~done[:, None]  # [b, n_heads]
        if bool(fired.any()):
            head = fired.long().argmax(-1)  # [b]
            vec = model.task_tokens.content[head][:, None].to(embeds.dtype)  # [b, 1, d]
            kept = cache.get_seq_length()
            step_out = model.llm(
                inputs_embeds=vec, attention_mask=torch.cat([mask, ones], 1),
                position_ids=next_pos, past_key_values=cache, use_cache=True,
                output_hidden_states=True, logits_to_keep=1,
            )  # fmt: skip
            cache = step_out.past_key_values
            cache.crop(kept - cache.get_seq_length())  # negative: drop that step's KV
            hidden = step_out.hidden_states[-1][:, -1]  # [b, d]
            for row in fired.any(-1).nonzero()[:, 0].tolist():
                queries[row].append((int(head[row]), hidden[row]))
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, ones], 1)
        out = model.llm(
            inputs_embeds=model.llm.embed(token[:, None]).to(embeds.dtype), attention_mask=mask,
            position_ids=next_pos, past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_pos = next_pos + 1

    token_ids = []
    for row in generated.tolist():
        token_ids.append(row[: row.index(eos)] if eos in row else row)
    flat = [(r, h, v) for r, qs in enumerate(queries) for h, v in qs]
    d = embeds.shape[-1]
    return GenerationOutput(
        text=answer_text(tok, token_ids, ids.all),
        token_ids=token_ids,
        vision=vision_out,
        task_hidden=torch.stack([v for _, _, v in flat]) if flat else embeds.new_zeros(0, d),
        task_head=torch.tensor([h for _, h, _ in flat], dtype=torch.long, device=device),
        task_sample=torch.tensor([r for r, _, _ in flat], dtype=torch.long, device=device),
    )
