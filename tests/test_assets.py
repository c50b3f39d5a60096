"""The SmolLM2 asset: GGUF -> HF folder; the `small` config loads it and answers in English."""

import json
from pathlib import Path

import pytest
import torch

from tpo.config import TPOConfig, load_config
from tpo.heads.registry import task_pairs
from tpo.model.assets import convert_smollm2
from tpo.model.build import build_collator, build_mllm
from tpo.model.prompt import Turn
from tpo.model.tokens import TASK_TOKENS

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "build/assets/smollm2"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """`make assets` output when present, else a fresh conversion (about 30 s on one core)."""
    if (BUILT / "config.json").is_file():
        return BUILT
    return convert_smollm2(tmp_path_factory.mktemp("assets") / "smollm2")


def test_converted_folder_is_a_plain_fp32_llama(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        576,
        30,
        49152,
    )
    assert (smollm2 / "model.safetensors").is_file() and (smollm2 / "tokenizer.json").is_file()
    assert not list(smollm2.parent.glob(f".{smollm2.name}.*"))  # no temp folder left behind


def test_small_config_loads_smollm2_and_answers_in_english(smollm2):
    cfg = load_config(
        TPOConfig,
        [ROOT / "configs/small/model.yaml"],
        [f"model.llm.path={smollm2}", f"model.llm.tokenizer={smollm2}"],
    ).model
    model = build_mllm(cfg, pairs=task_pairs()).eval()
    tok = model.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in TASK_TOKENS] == list(range(49152, 49159))
    assert model.llm.model.get_input_embeddings().weight.shape[0] == 49159
    prompts = build_collator(cfg, model).prompts(
        [Turn("What is the capital of France?", has_video=False)]
    )
    torch.manual_seed(0)
    out = model.generate(None, prompts.input_ids, prompts.attention_mask, max_new_tokens=16)
    answer = out.text[0]
    assert answer.isascii() and len(answer.split()) >= 2
    assert "Paris" in answer
