"""Generation: KV-cached HF generate equals a no-cache greedy loop over the training forward,
batched equals one by one, begin tokens force their content token, head queries match."""

from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from tpo.config import TPOConfig, load_config
from tpo.heads.registry import task_pairs
from tpo.model.build import build_collator, build_mllm

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(TPOConfig, [ROOT / "configs/tiny/model.yaml"]).model
TIME_BEGIN, TEMP, BOX_BEGIN, BOXES = 32001, 32002, 32000, 32003
BEGIN_TO_CONTENT = {32001: 32002, 32000: 32003, 32004: 32005}


class ForceAt(LogitsProcessor):
    """Force `token` as the `step`-th generated token (0-based)."""

    def __init__(self, step: int, token: int) -> None:
        self.step, self.token = step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.step:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_mllm(CFG, pairs=task_pairs()).eval()
    with torch.no_grad():  # a non-zero adapter, so LoRA takes part in every step
        for p in m.trainable_groups()["lora"]:
            p.normal_(std=0.05)
    return m


@pytest.fixture(scope="module")
def collator(model):
    return build_collator(CFG, model)


def video(b: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(b, 2, 3, CFG.vision.img_size, CFG.vision.img_size)


@torch.no_grad()
def greedy_without_cache(model, fr, ids, steps, force_step, force_token):
    """Reference: re-run the training forward on the whole sequence for every new token."""
    eos = model.tokenizer.eos_token_id
    out_ids: list[int] = []
    for step in range(steps):
        seq = torch.cat([ids, torch.tensor([out_ids], dtype=torch.long)], 1)
        logits = model(fr, seq, torch.ones_like(seq), return_logits=True).logits[0, -1]
        if step == force_step:
            token = force_token
        elif out_ids and out_ids[-1] in BEGIN_TO_CONTENT:
            token = BEGIN_TO_CONTENT[out_ids[-1]]
        else:
            token = int(logits.argmax())
        if token == eos:
            break
        out_ids.append(token)
    return out_ids


def test_cached_generation_equals_no_cache_loop_and_training_forward(model, collator):
    fr = video(1)
    prompt = collator.prompts([("When does the red square appear?",)])
    gen = model.generate(
        fr,
        prompt.input_ids,
        prompt.attention_mask,
        max_new_tokens=8,
        logits_processor=[ForceAt(2, TIME_BEGIN)],
    )
    ref = greedy_without_cache(model, fr, prompt.input_ids, 8, 2, TIME_BEGIN)
    assert gen.token_ids[0] == ref
    assert ref[2:4] == [TIME_BEGIN, TEMP]  # the begin token forced the content token
    assert gen.task_head.tolist() == [0] and gen.task_sample.tolist() == [0]
    # the head query equals what the training forward computes on the same full sequence
    full = torch.cat([prompt.input_ids, torch.tensor([gen.token_ids[0]])], 1)
    train = model(fr, full, torch.ones_like(full))
    assert train.task_head.tolist() == [0]
    assert torch.allclose(gen.task_hidden, train.task_hidden, atol=1e-5)
    assert "<time_begin>" not in gen.text[0] and "[INST]" not in gen.text[0]
    assert gen.vision is not None and gen.vision.patches.shape[0] == 1


def test_batched_left_padded_equals_one_by_one(model, collator):
    turns = [("Hi?",), ("Where is the blue circle in the last frame of the clip?",)]
    fr = video(2)
    force = [ForceAt(1, BOX_BEGIN)]
    batch = collator.prompts(turns)
    assert batch.attention_mask[0, 0] == 0  # the short prompt is left padded
    both = model.generate(
        fr, batch.input_ids, batch.attention_mask, max_new_tokens=6, logits_processor=force
    )
    for i, turn in enumerate(turns):
        one = collator.prompts([turn])
        single = model.generate(
            fr[i : i + 1],
            one.input_ids,
            one.attention_mask,
            max_new_tokens=6,
            logits_processor=force,
        )
        assert single.token_ids[0] == both.token_ids[i]
        assert single.text[0] == both.text[i]
        mine = both.task_hidden[both.task_sample == i]
        assert torch.allclose(single.task_hidden, mine, atol=1e-5)
    assert both.task_sample.tolist() == [0, 1] and both.task_head.tolist() == [1, 1]


def test_begin_token_at_the_last_step_keeps_its_pair_and_query(model, collator):
    fr = video(1)
    prompt = collator.prompts([("Where is it?",)])
    gen = model.generate(
        fr,
        prompt.input_ids,
        prompt.attention_mask,
        max_new_tokens=3,
        logits_processor=[ForceAt(2, BOX_BEGIN)],
    )
    assert len(gen.token_ids[0]) == 4 and gen.token_ids[0][2:] == [BOX_BEGIN, BOXES]
    full = torch.cat([prompt.input_ids, torch.tensor([gen.token_ids[0]])], 1)
    train = model(fr, full, torch.ones_like(full))
    assert gen.task_head.tolist() == [1]
    assert torch.allclose(gen.task_hidden, train.task_hidden, atol=1e-5)


def test_no_begin_token_means_no_queries_and_limit_holds(model, collator):
    prompt = collator.prompts([("Describe the video.",)])
    gen = model.generate(video(1), prompt.input_ids, prompt.attention_mask, max_new_tokens=4)
    assert len(gen.token_ids[0]) <= 4
    assert gen.task_hidden.shape == (0, model.llm.width) and gen.task_head.numel() == 0
