"""Official modes against what the release computed (`expected/` of the parity reference), at
the level of the parts this needs, without the converter: the prompt ids of `process_qa` from
the release's tokenizer files, and the release's greedy loop (`llm.head_query: official`) on
the reduced checkpoint's LLM (HF Mistral + PEFT LoRA loaded from its `lm.*` tensors) fed the
official prompt embeddings: identical tokens and head queries (`head_step_hidden`)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tpo.config.model import LLMConfig
from tpo.heads.registry import task_pairs
from tpo.model.generate_official import generate_official
from tpo.model.llm import LanguageModel
from tpo.model.prompt import VISUAL_TOKEN_ID, PromptCollator, Turn, timestamp_message
from tpo.model.tokens import TaskTokenIds, TaskTokens, load_tokenizer

PROMPTS = ("temporal", "region", "mask", "plain")
# the release's task vectors, by the begin token of their pair
TASK_VECTORS = {"<time_begin>": "temporal_token", "<box_begin>": "box_token",
                "<track_begin>": "track_token"}  # fmt: skip


@pytest.fixture(scope="module")
def ref(parity_reference):
    return parity_reference


@pytest.fixture(scope="module")
def tokenizer(ref):
    cfg = LLMConfig(
        arch={"model_type": "mistral"}, tokenizer=str(ref / "official-reduced"),
        prompt_format="videochat-tpo",
    )  # fmt: skip
    return load_tokenizer(cfg, task_pairs())


def test_timestamp_message_prints_times_as_python_rounds_them():
    assert timestamp_message([0.0, 1.25, 2.0 / 3.0]) == (
        " The video contains 3 frames sampled at 0.0, 1.2, 0.7 seconds."
    )


def test_prompt_ids_and_video_positions_equal_process_qa(ref, tokenizer):
    run = json.loads((ref / "expected/run.json").read_text())
    expected = load_file(ref / "expected/prompts.safetensors")
    times = [float(t) for t in run["video"]["frame_times_s"]]
    collator = PromptCollator(tokenizer, 96, max_len=1024, prompt_format="videochat-tpo")
    questions = {**run["prompts"], "track_box": run["track_box_question"]}
    for name, question in questions.items():
        batch = collator.prompts([Turn(question, frame_times=times)])
        video = batch.input_ids == VISUAL_TOKEN_ID
        ids = batch.input_ids.masked_fill(video, 0)  # the release writes id 0 at the video
        assert ids.tolist() == expected[f"{name}.input_ids"].tolist(), name
        assert video.tolist() == expected[f"{name}.video_index"].bool().tolist(), name


def _official_llm(ref, tokenizer):
    """The reduced checkpoint's LLM as the release builds it: Mistral resized to the tokenizer,
    PEFT LoRA (r 16, alpha 32) on the 8 targets, the `lm.*` tensors loaded by name."""
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig.from_json_file(ref / "official-reduced/llm_config.json")
    config.vocab_size = len(tokenizer)
    base = MistralForCausalLM(config).eval()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "lm_head"]  # fmt: skip
    lm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                         target_modules=targets))  # fmt: skip
    tensors, vectors = {}, {}
    with safe_open(ref / "official-reduced/model.safetensors", "pt") as f:
        for key in f.keys():
            if key.startswith("lm."):
                tensors[key.removeprefix("lm.")] = f.get_tensor(key)
            elif key in TASK_VECTORS.values():
                vectors[key] = f.get_tensor(key).reshape(-1)
    missing, unexpected = lm.load_state_dict(tensors, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k]
    return lm.eval(), vectors


class _OfficialPrompt(torch.nn.Module):
    """The MLLM surface generate_official reads, around the release's LLM: the prompt
    embeddings are the official `pad_text_embeds` output (no vision here)."""

    def __init__(self, lm, tokenizer, vectors, embeds):
        super().__init__()
        pairs = task_pairs()
        ids = TaskTokenIds.from_tokenizer(tokenizer, pairs)
        self.llm = LanguageModel(lm, ids, embeds.shape[-1])
        self.task_tokens = TaskTokens(ids, embeds.shape[-1], 8)
        with torch.no_grad():
            for i, pair in enumerate(pairs):
                self.task_tokens.content[i] = vectors[TASK_VECTORS[pair.begin]]
        self.tokenizer = tokenizer
        self.embeds = embeds

    def embed_inputs(self, input_ids, visual=None, boxes=None):
        return self.embeds


def test_greedy_tokens_and_head_queries_equal_the_release(ref, tokenizer):
    lm, vectors = _official_llm(ref, tokenizer)
    prompts = load_file(ref / "expected/prompts.safetensors")
    expected = load_file(ref / "expected/generate.safetensors")
    worst = 0.0
    for name in PROMPTS:
        embeds = prompts[f"{name}.inputs_embeds"]
        model = _OfficialPrompt(lm, tokenizer, vectors, embeds)
        ids, mask = prompts[f"{name}.input_ids"], prompts[f"{name}.attention_mask"]
        gen = generate_official(model, None, ids, mask, max_new_tokens=20)
        assert gen.token_ids[0] == expected[f"{name}.tokens"].tolist(), name
        if name == "plain":
            assert len(gen.task_head) == 0
            continue
        want = expected[f"{name}.head_step_hidden"]
        assert gen.task_hidden.shape == want.shape
        worst = max(worst, float((gen.task_hidden - want).abs().max()))
    print(f"head_step_hidden max abs diff {worst:.2e}")
    assert worst <= 1e-4, worst


def test_release_tokenizer_is_read_the_legacy_way_by_its_class(ref, tokenizer):
    plain = load_tokenizer(
        LLMConfig(arch={"model_type": "mistral"}, tokenizer=str(ref / "official-reduced")),
        task_pairs(),
    )
    assert type(plain) is type(tokenizer) and len(plain) == 32007
    text = " [INST] Track the object <track_box> through the video. [/INST] "
    assert (
        plain(text, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_timestamp_question_needs_frame_times(tokenizer):
    collator = PromptCollator(tokenizer, 4, prompt_format="videochat-tpo")
    with pytest.raises(ValueError, match="has no frame_times"):
        collator.prompts([Turn("Give the timestamp of the jump.")])
    plain = collator.prompts([Turn("What happens?")])  # no timestamp: no times needed
    assert int((plain.input_ids == tokenizer.bos_token_id).sum()) == 3
