"""LLM part: real Mistral tokenizer ids, task-token rows, LoRA groups, prompt and collation."""

from pathlib import Path

import pytest
import sentencepiece
import torch

from tpo.config import LLMConfig, LoRAConfig, TPOConfig, load_config
from tpo.model.llm import build_llm
from tpo.model.prompt import IGNORE_INDEX, VISUAL_TOKEN_ID, PromptCollator, build_prompt
from tpo.model.tokens import TASK_TOKENS, TaskTokenIds, load_tokenizer, mistral_vocab_file

ROOT = Path(__file__).resolve().parents[1]
# the added_tokens.json of the official VideoChat-TPO checkpoint (ids as published)
OFFICIAL_IDS = {
    "<box_begin>": 32000,
    "<time_begin>": 32001,
    "<temp>": 32002,
    "<boxes>": 32003,
    "<track_begin>": 32004,
    "<tracking>": 32005,
    "<track_box>": 32006,
}
TINY_ARCH = dict(
    model_type="mistral",
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(LLMConfig(arch=TINY_ARCH))


def test_mistral_tokenizer_gives_official_task_token_ids(tokenizer):
    assert len(tokenizer) == 32007
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in TASK_TOKENS} == OFFICIAL_IDS
    # the converted tokenizer splits text exactly as SentencePiece itself does
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_vocab_file()))
    text = "[INST] Where is the red square at 3.5 s? [/INST] Über 東京"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    assert tokenizer.convert_ids_to_tokens(sp.encode("[INST]")) == ["▁[", "INST", "]"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)


def test_task_pair_is_exactly_two_special_ids(tokenizer):
    ids = tokenizer("It happens at <time_begin><temp>.", add_special_tokens=False)["input_ids"]
    i = ids.index(32001)
    assert ids[i : i + 2] == [32001, 32002]
    assert ids.count(32001) == 1 and ids.count(32002) == 1
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert "<time_begin>" not in text and text.startswith("It happens at")


def test_new_rows_start_at_the_mean_and_base_is_frozen(tokenizer):
    llm = build_llm(LLMConfig(arch=TINY_ARCH, lora=LoRAConfig(enabled=False)), tokenizer)
    emb = llm.model.get_input_embeddings().weight
    head = llm.model.get_output_embeddings().weight
    assert emb.shape == (32007, 64) and head.shape == (32007, 64)
    for weight in (emb, head):
        mean = weight[:32000].mean(0)
        assert torch.allclose(weight[32000:], mean.expand(7, 64), atol=1e-6)
    assert not torch.allclose(emb[:32000].mean(0), head[:32000].mean(0))  # two separate means
    assert llm.trainable_groups()["lora"] == [] and llm.trainable_groups()["task_tokens"] == []


def test_lora_count_by_hand_and_trainable_token_rows(tokenizer):
    lora = LoRAConfig(r=8, alpha=16, dropout=0.0)
    llm = build_llm(LLMConfig(arch=TINY_ARCH, lora=lora), tokenizer)
    groups = llm.trainable_groups()
    # r * (in + out) per adapted linear; kv width = 2 heads * 16
    per_layer = 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert sum(p.numel() for p in groups["lora"]) == 2 * per_layer + 8 * (64 + 32007)
    assert all(not p.requires_grad for p in groups["llm"])
    (delta,) = groups["task_tokens"]
    assert delta.shape == (7, 64) and delta.requires_grad
    # a sequence holding <time_begin> (and no other task token) trains only that row
    ids = torch.tensor([[1, 733, 32001, 661, 2]])
    llm(input_ids=ids, labels=ids).loss.backward()
    touched = delta.grad.abs().sum(-1) > 0
    assert touched.tolist() == [t == "<time_begin>" for t in TASK_TOKENS]


def test_full_size_llm_and_lora_counts_on_meta():
    cfg = load_config(TPOConfig, [ROOT / "configs/full/model.yaml"]).model.llm
    llm = build_llm(cfg, load_tokenizer(cfg), meta=True)
    counts = {k: sum(p.numel() for p in v) for k, v in llm.trainable_groups().items()}
    h, inter, kv, vocab, layers = 4096, 14336, 1024, 32007, 32
    base = layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h) + 2 * vocab * h + h
    lora = layers * 16 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + inter)) + 16 * (h + vocab)
    assert counts["llm"] == base and counts["lora"] == lora
    assert abs(counts["llm"] / 7241.8e6 - 1) < 0.01 and abs(counts["lora"] / 42.5e6 - 1) < 0.01
    assert counts["task_tokens"] == 7 * h


def test_official_prompt_text():
    assert build_prompt("Where?", system_msg="Watch.") == (
        "[INST] <Video>[<VID_PLH>]</Video>Watch.[/INST] [INST] Where? [/INST]"
    )
    assert build_prompt("Q2", history=[("Q1", "A1")], has_video=False) == (
        "[INST] Q1 [/INST] A1 [INST] Q2 [/INST]"
    )
    chat = build_prompt("Hi?", template="chatml")
    assert chat == (
        "<|im_start|>user\n<Video>[<VID_PLH>]</Video>\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_collator_labels_only_answer_and_eos(tokenizer):
    col = PromptCollator(tokenizer, num_visual_tokens=5, max_len=128)
    batch = col([("When?", "It happens at <time_begin><temp>."), ("Long question here?", "No.")])
    ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
    answer0 = tokenizer("It happens at <time_begin><temp>.", add_special_tokens=False)["input_ids"]
    kept0 = labels[0][labels[0] != IGNORE_INDEX].tolist()
    assert kept0 == answer0 + [2]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_vocab_file()))
    assert labels[1][labels[1] != IGNORE_INDEX].tolist() == sp.encode("No.") + [2]
    # labels equal the ids where kept, right padding, 5 visual positions after "<Video>"
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    assert mask[0].tolist() == sorted(mask[0].tolist(), reverse=True)
    assert ids[0, 0] == 1 and (ids == VISUAL_TOKEN_ID).sum(1).tolist() == [5, 5]
    first_vis = (ids[0] == VISUAL_TOKEN_ID).nonzero()[0].item()
    assert tokenizer.decode(ids[0, 1:first_vis]) == "[INST] <Video>"


def test_prompts_left_padded_and_truncation_keeps_video(tokenizer):
    col = PromptCollator(tokenizer, num_visual_tokens=4, max_len=20)
    long_q = "word " * 40 + "last?"
    batch = col.prompts([("Hi?",), (long_q,)])
    ids, mask = batch.input_ids, batch.attention_mask
    assert batch.labels is None and ids.shape[1] == 20
    assert mask[0].tolist() == sorted(mask[0].tolist())  # left padding
    assert (ids == VISUAL_TOKEN_ID).sum(1).tolist() == [4, 4]
    tail = tokenizer.decode(ids[1, -6:])
    assert tail.endswith("last? [/INST]")  # the question's end survives, its start is cut
    train = PromptCollator(tokenizer, 4, max_len=24)([(long_q, "Yes, it is.")])
    assert train.input_ids.shape[1] == 24 and (train.input_ids == VISUAL_TOKEN_ID).sum() == 4
    assert (train.labels != IGNORE_INDEX).sum() >= 1


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="llm: give either"):
        LLMConfig(path=None, arch=None)
    with pytest.raises(ValueError, match="model_type"):
        LLMConfig(arch={"hidden_size": 8})
    with pytest.raises(ValueError, match="llm.template"):
        LLMConfig(arch=TINY_ARCH, template="alpaca")
    with pytest.raises(FileNotFoundError, match="llm.path"):
        build_llm(LLMConfig(path="/nonexistent/model"), load_tokenizer(LLMConfig(arch=TINY_ARCH)))
    from tpo.heads.registry import task_pairs

    ids = TaskTokenIds.from_tokenizer(load_tokenizer(LLMConfig(arch=TINY_ARCH)), task_pairs())
    assert ids.begin == (
        32001,
        32000,
        32004,
    )
