"""Official head-query decoding (`llm.head_query: official`): the KV-cached loop equals a
hand-written loop of plain LLM forwards without cache, in which the head query is the hidden
state of the task vector fed after the prompt and the earlier tokens (not the begin token)."""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from tpo.config import TPOConfig, load_config
from tpo.heads.registry import task_pairs
from tpo.model.build import build_collator, build_mllm
from tpo.model.generate_official import generate_official

ROOT = Path(__file__).resolve().parents[1]
BASE = load_config(TPOConfig, [ROOT / "configs/tiny/model.yaml"]).model
CFG = dataclasses.replace(BASE, llm=dataclasses.replace(BASE.llm, head_query="official"))


class ForceAt(LogitsProcessor):
    """Force `tokens[step]` as the `step`-th generated token (0-based) of every row."""

    def __init__(self, tokens: dict[int, int]) -> None:
        self.tokens = tokens

    def __call__(self, input_ids, scores):
        token = self.tokens.get(input_ids.shape[1])
        if token is not None:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, token] = 0.0
        return scores


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_mllm(CFG, pairs=task_pairs()).eval()
    with torch.no_grad():  # non-zero adapters and distinct task vectors
        for p in m.trainable_groups()["lora"]:
            p.normal_(std=0.05)
        m.task_tokens.content.normal_()
    return m


@pytest.fixture(scope="module")
def collator(model):
    return build_collator(CFG, model)


def video(b: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(b, 2, 3, CFG.vision.img_size, CFG.vision.img_size)


@torch.no_grad()
def reference_loop(model, frames, ids, steps: int, forced: dict[int, int]):
    """Plain LLM forwards on the whole sequence (no cache): tokens and head queries."""
    _, visual = model.encode_visual(frames)
    prompt = model.embed_inputs(ids, visual)  # [1, s, d]
    begin = dict(zip(model.task_tokens.ids.begin, range(len(model.task_tokens.ids.begin))))
    eos = model.tokenizer.eos_token_id
    tokens: list[int] = []
    queries: list[tuple[int, torch.Tensor]] = []
    for step in range(steps):
        done = model.llm.embed(torch.tensor([tokens], dtype=torch.long))
        seq = torch.cat([prompt, done], 1)
        logits = model.llm(inputs_embeds=seq).logits[0, -1]
        token = forced.get(step, int(logits.argmax()))
        if token == eos:
            break
        if token in begin:
            head = begin[token]
            vec = model.task_tokens.content[head].view(1, 1, -1)
            hidden = model.llm(inputs_embeds=torch.cat([seq, vec], 1), output_hidden_states=True)
            queries.append((head, hidden.hidden_states[-1][0, -1]))
        tokens.append(token)
    return tokens, queries


def test_official_loop_equals_no_cache_reference(model, collator):
    fr = video(1)
    prompt = collator.prompts([("Where is the red square? Then when does it move?",)])
    ids = model.task_tokens.ids
    forced = {1: ids.begin[1], 4: ids.begin[0]}  # <box_begin> at step 1, <time_begin> at 4
    gen = model.generate(
        fr, prompt.input_ids, prompt.attention_mask, max_new_tokens=7,
        logits_processor=[ForceAt(forced)],
    )  # fmt: skip
    tokens, queries = reference_loop(model, fr, prompt.input_ids, 7, forced)
    assert gen.token_ids == [tokens]
    assert tokens[1] == ids.begin[1] and ids.content[1] not in tokens  # no content token fed
    assert gen.task_head.tolist() == [h for h, _ in queries] == [1, 0]
    assert gen.task_sample.tolist() == [0, 0]
    ref = torch.stack([q for _, q in queries])
    assert torch.allclose(gen.task_hidden, ref, atol=1e-5), (gen.task_hidden - ref).abs().max()


def test_begin_at_last_step_still_gives_its_query(model, collator):
    fr = video(1)
    prompt = collator.prompts([("Track the square.",)])
    begin = model.task_tokens.ids.begin[2]
    gen = generate_official(
        model, fr, prompt.input_ids, prompt.attention_mask, max_new_tokens=3,
        logits_processor=[ForceAt({2: begin})],
    )  # fmt: skip
    assert len(gen.token_ids[0]) == 3 and gen.token_ids[0][-1] == begin
    assert gen.task_head.tolist() == [2]


def test_batch_with_left_padding_equals_one_by_one(model, collator):
    fr = video(2)
    questions = [("Where is it?",), ("Give the start and end of the moment it turns blue.",)]
    batch = collator.prompts(questions)
    begin = model.task_tokens.ids.begin[0]
    kw = {"max_new_tokens": 5, "logits_processor": [ForceAt({2: begin})]}
    both = model.generate(fr, batch.input_ids, batch.attention_mask, **kw)
    for i, q in enumerate(questions):
        one = collator.prompts([q])
        alone = model.generate(fr[i : i + 1], one.input_ids, one.attention_mask, **kw)
        assert both.token_ids[i] == alone.token_ids[0]
        mine = both.task_hidden[both.task_sample == i]
        assert torch.allclose(mine, alone.task_hidden, atol=1e-4)


def test_stops_at_eos_and_keeps_ids_before_it(model, collator):
    fr = video(1)
    prompt = collator.prompts([("What moves?",)])
    eos = model.tokenizer.eos_token_id
    gen = model.generate(
        fr, prompt.input_ids, prompt.attention_mask, max_new_tokens=10,
        logits_processor=[ForceAt({3: eos})],
    )  # fmt: skip
    assert len(gen.token_ids[0]) == 3 and eos not in gen.token_ids[0]
    assert len(gen.task_head) == 0 and gen.task_hidden.shape == (0, model.llm.width)


def test_sampled_responses_are_seeded_and_repeated(model, collator):
    fr = video(1)
    prompt = collator.prompts([("What moves?",)])
    kw = {"max_new_tokens": 4, "do_sample": True, "temperature": 0.7, "num_return_sequences": 3}
    torch.manual_seed(5)
    a = model.generate(fr, prompt.input_ids, prompt.attention_mask, **kw)
    torch.manual_seed(5)
    b = model.generate(fr, prompt.input_ids, prompt.attention_mask, **kw)
    assert len(a.token_ids) == 3 and a.token_ids == b.token_ids


def test_unknown_head_query_is_refused():
    with pytest.raises(ValueError, match="llm.head_query must be one of"):
        dataclasses.replace(BASE.llm, head_query="nope")
