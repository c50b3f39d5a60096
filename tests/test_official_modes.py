"""Official-compatible modes on tpo's own models: region output "raw", the "videochat-tpo"
prompt format with any tokenizer, `GroundedAnswer.token_ids`, and a tiny model loaded with
`tpo.load` answering with the release's prompt and head-query decoding."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tpo
from tpo.config.heads import RegionHeadConfig
from tpo.heads.region import RegionHead
from tpo.infer.answer import GroundedAnswer
from tpo.model.prompt import VISUAL_TOKEN_ID, Turn
from tpo.model.task_head import HeadQueries, HeadSample

ROOT = Path(__file__).resolve().parents[1]


def test_raw_region_output_is_the_mlp_output_times_the_frame_size():
    head = RegionHead(RegionHeadConfig(hidden=16, output="raw"), 8, 4).eval()
    want = torch.tensor([0.62, 0.18, 0.35, 1.2])  # x1 > x2 and y2 outside the frame
    with torch.no_grad():
        query = torch.randn(1, 8)
        head.mlp[2].bias += want - head.mlp(query)[0]
        out = head(query)
    assert torch.allclose(out.boxes[0], head.mlp(query)[0]) and torch.allclose(out.boxes[0], want)
    sample = HeadSample(duration=4.0, frame_indices=np.arange(4), fps=1.0, size=(180, 320))
    (part,) = head.postprocess(out, HeadQueries(query, [0], [sample]), None)
    box = part["boxes"][0]
    assert box.box == pytest.approx((0.62 * 320, 0.18 * 180, 0.35 * 320, 1.2 * 180), rel=1e-6)
    assert box.frame_index == 2  # the middle sampled frame, as before


def test_region_output_is_checked():
    with pytest.raises(ValueError, match="region.output must be 'box' or 'raw'"):
        RegionHeadConfig(output="sigmoid")
    with pytest.raises(ValueError, match="excludes locate"):
        RegionHeadConfig(output="raw", refine=True, locate=True)


def test_token_ids_survive_the_json_round_trip():
    ans = GroundedAnswer(text="hi", token_ids=[np.int64(5), 32001, 7])
    back = GroundedAnswer.from_json(json.loads(json.dumps(ans.to_json())))
    assert back.token_ids == [5, 32001, 7] and back.to_json() == ans.to_json()
    assert GroundedAnswer.from_json({"text": "old"}).token_ids == []


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from tpo.config import TPOConfig, load_config
    from tpo.heads.build import build_model
    from tpo.train.export import save_inference_folder

    overrides = [
        "model.heads.mask=null", "model.llm.prompt_format=videochat-tpo", "model.heads.region.locate=false",
        "model.heads.region.refine=false",
        "model.llm.head_query=official", "model.heads.region.output=raw",
    ]  # fmt: skip
    cfg = load_config(TPOConfig, [ROOT / "configs/tiny/stage3.yaml"], overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # non-zero adapters, so merging them changes the weights
        for p in model.mllm.trainable_groups()["lora"]:
            p.normal_(std=0.05)
    folder = save_inference_folder(model, cfg, tmp_path_factory.mktemp("m") / "f")
    pipe = tpo.load(folder)
    pipe.model_folder = folder  # for the unmerged copy
    return pipe


def test_loaded_model_prompts_and_decodes_the_release_way(pipe):
    frames = torch.randint(0, 255, (4, 3, 48, 64), dtype=torch.uint8)
    question = "Give the start and end timestamp of the moment the square moves."
    ans = pipe.ask(frames, question, max_new_tokens=6)
    inp = pipe.load_input(frames)
    prompt = pipe.collator.prompts([Turn(question, frame_times=inp.times)])
    ids = prompt.input_ids[0]
    tok = pipe.model.mllm.tokenizer
    assert int((ids == tok.bos_token_id).sum()) == 3  # one BOS per segment
    n = pipe.model.mllm.num_visual_tokens
    assert int((ids == VISUAL_TOKEN_ID).sum()) == n
    text = tok.decode(ids[ids != VISUAL_TOKEN_ID].tolist())
    times = ", ".join(str(round(float(t), 1)) for t in inp.times)
    assert f"The video contains {len(inp.times)} frames sampled at {times} seconds.[/INST]" in text
    assert pipe.model.mllm.head_query == "official"
    frames_in = inp.frames[None].to(pipe.dtype)
    gen = pipe.model.mllm.generate(
        frames_in, prompt.input_ids, prompt.attention_mask, max_new_tokens=6
    )
    assert ans.token_ids == gen.token_ids[0] and 0 < len(ans.token_ids) <= 6
    assert tok.eos_token_id not in ans.token_ids
    assert GroundedAnswer.from_json(ans.to_json()).token_ids == ans.token_ids


def test_merged_lora_answers_as_the_adapters_do(pipe):
    unmerged = tpo.load(pipe.model_folder, merge_lora=False)
    frames = torch.randint(0, 255, (4, 3, 48, 64), dtype=torch.uint8)
    question = "Where is the square?"
    inp = pipe.load_input(frames)
    prompt = pipe.collator.prompts([Turn(question, frame_times=inp.times)])
    args = (inp.frames[None], prompt.input_ids, prompt.attention_mask)
    a = pipe.model.mllm.generate(*args, max_new_tokens=6)
    b = unmerged.model.mllm.generate(*args, max_new_tokens=6)
    assert a.token_ids == b.token_ids
    with torch.no_grad():
        out_a = pipe.model.mllm(*args, return_logits=True).logits
        out_b = unmerged.model.mllm(*args, return_logits=True).logits
    assert (out_a - out_b).abs().max() < 1e-4 and not torch.equal(out_a, out_b)
