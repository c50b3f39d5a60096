"""End to end through `tpo.load(converted folder)`: the reduced release checkpoint, converted,
answers the reference's four questions about its raw frames as the release did: identical
prompt ids and greedy tokens (`GroundedAnswer.token_ids`), head queries within 1e-4
(`head_step_hidden`), the raw region box x (W, H, W, H).

Needs the converted folder of `official-reduced/` (`tpo convert videochat-tpo`): the
`converted_reduced` fixture reads its path from TPO_CONVERTED_REDUCED and skips without it.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tpo
from tpo.model.prompt import VISUAL_TOKEN_ID, Turn

HEADS = {"temporal": "temporal", "region": "region", "mask": "mask", "plain": None}


@pytest.fixture(scope="module")
def converted_reduced():
    path = os.environ.get("TPO_CONVERTED_REDUCED")
    if not path:
        pytest.skip("no converted reduced checkpoint: set TPO_CONVERTED_REDUCED to its folder")
    return Path(path)


@pytest.fixture(scope="module")
def setup(converted_reduced, parity_reference):
    torch.set_num_threads(1)
    pipe = tpo.load(converted_reduced)
    ref = parity_reference / "expected"
    run = json.loads((ref / "run.json").read_text())
    frames = load_file(ref / "vision.safetensors")["in.raw_frames_uint8"]  # the whole video
    return pipe, ref, run, frames


def test_prompt_ids_and_tokens_equal_the_release(setup):
    pipe, ref, run, frames = setup
    prompts = load_file(ref / "prompts.safetensors")
    expected = load_file(ref / "generate.safetensors")
    inp = pipe.load_input(frames)
    assert [str(round(float(t), 1)) for t in inp.times] == run["video"]["frame_times_s"]
    for name, question in run["prompts"].items():
        batch = pipe.collator.prompts([Turn(question, frame_times=inp.times)])
        ids = batch.input_ids.masked_fill(batch.input_ids == VISUAL_TOKEN_ID, 0)
        assert ids.tolist() == prompts[f"{name}.input_ids"].tolist(), name
        ans = pipe.ask(frames, question, max_new_tokens=20)
        assert ans.token_ids == expected[f"{name}.tokens"].tolist(), name
        if HEADS[name] is None:
            assert ans.heads == []
        else:
            assert HEADS[name] in ans.heads or HEADS[name] not in pipe.model.heads


def test_head_queries_equal_the_release(setup):
    pipe, ref, run, frames = setup
    expected = load_file(ref / "generate.safetensors")
    inp = pipe.load_input(frames)
    mllm = pipe.model.mllm
    for name in ("temporal", "region", "mask"):
        batch = pipe.collator.prompts([Turn(run["prompts"][name], frame_times=inp.times)])
        gen = mllm.generate(
            inp.frames[None].to(pipe.dtype), batch.input_ids, batch.attention_mask,
            max_new_tokens=20,
        )  # fmt: skip
        want = expected[f"{name}.head_step_hidden"]
        assert gen.task_hidden.shape == want.shape, name
        assert (gen.task_hidden.float() - want).abs().max() <= 1e-4, name


def test_region_box_is_the_raw_output_in_pixels(setup):
    pipe, ref, run, frames = setup
    box = load_file(ref / "heads.safetensors")["region.box"]
    h, w = run["video"]["raw_hw"]
    ans = pipe.ask(frames, run["prompts"]["region"], max_new_tokens=20)
    want = (box * torch.tensor([w, h, w, h])).tolist()
    assert ans.boxes and ans.boxes[0].box == pytest.approx(want, abs=1e-4 * w)
