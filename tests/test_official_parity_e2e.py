"""End to end through `tpo.load(converted folder)`: the reduced release checkpoint, converted,
answers the reference's four questions about its raw frames as the release did: identical
prompt ids and greedy tokens (`GroundedAnswer.token_ids`), head queries within 1e-4
(`head_step_hidden`), the raw region box x (W, H, W, H).

The folder is `official-reduced/` converted by `tpo convert videochat-tpo` (the
`converted_reduced` fixture); its config selects the official modes. Masks: the embedding-
prompted frame and SAM2's propagation through every frame, IoU >= 0.99 with the release's.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import tpo
from tpo.model.prompt import VISUAL_TOKEN_ID, Turn

HEADS = {"temporal": "temporal", "region": "region", "mask": "mask", "plain": None}


@pytest.fixture(scope="module")
def setup(converted_reduced, parity_reference):
    torch.set_num_threads(1)
    pipe = tpo.load(converted_reduced)
    ref = parity_reference / "expected"
    run = json.loads((ref / "run.json").read_text())
    frames = load_file(ref / "vision.safetensors")["in.raw_frames_uint8"]  # the whole video
    return pipe, ref, run, frames


def _features(ref, name: str) -> dict:
    """The temporal question's CG-DETR features (clip features without the TEF, query)."""
    if name != "temporal":
        return {}
    cg = load_file(ref / "cgdetr.safetensors")
    return {"video_features": cg["in.v_feat"][0, :, :32], "query_features": cg["in.q_feat"][0]}


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
        ans = pipe.ask(frames, question, max_new_tokens=20, **_features(ref, name))
        assert ans.token_ids == expected[f"{name}.tokens"].tolist(), name
        if HEADS[name] is None:
            assert ans.heads == []
        else:
            assert ans.heads == [HEADS[name]], name


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
        diff = (gen.task_hidden.float() - want).abs().max().item()
        print(f"parity e2e {name} head query: max abs diff {diff:.2e}")
        assert diff <= 1e-4, name


def test_frames_are_prepared_as_the_release(setup):
    pipe, ref, run, frames = setup
    video = load_file(ref / "vision.safetensors")["in.video"][0]  # [8, 3, 224, 224]
    got = pipe.load_input(frames).frames
    diff = (got - video).abs().max().item()
    print(f"parity e2e in.video from the raw frames: max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_region_box_is_the_raw_output_in_pixels(setup):
    pipe, ref, run, frames = setup
    box = load_file(ref / "heads.safetensors")["region.box"]
    h, w = run["video"]["raw_hw"]
    ans = pipe.ask(frames, run["prompts"]["region"], max_new_tokens=20)
    want = (box * torch.tensor([w, h, w, h])).tolist()
    assert ans.boxes and ans.boxes[0].box == pytest.approx(want, abs=1e-4 * w)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def test_masks_track_every_frame_as_the_release(setup):
    pipe, ref, run, frames = setup
    sam = load_file(ref / "sam2.safetensors")
    want = sam["out.masks"][:, 0]  # [8, H, W] bool, every frame of the video
    ans = pipe.ask(frames, run["prompts"]["mask"], max_new_tokens=20)
    assert ans.heads == ["mask"] and ans.masks is not None
    got = torch.from_numpy(ans.masks.masks)  # [f, H, W] bool on the tracked frames
    assert list(ans.masks.frame_indices) == list(range(want.shape[0]))
    ious = [_iou(got[i], want[i].bool()) for i in range(want.shape[0])]
    print("parity mask IoU per frame:", [round(x, 5) for x in ious])
    assert min(ious) >= 0.99, ious


def test_masks_track_every_frame_of_a_longer_video(setup):
    pipe, ref, run, frames = setup
    longer = torch.cat([frames, frames.flip(0)[:4]])  # 12 frames at 1 fps; the LLM sees 8
    inp = pipe.load_input(longer)
    assert len(inp.indices) == 8 < longer.shape[0]
    ans = pipe.ask(longer, run["prompts"]["mask"], max_new_tokens=20)
    assert list(ans.masks.frame_indices) == list(range(12))
    assert ans.masks.masks.shape == (12, *frames.shape[-2:])
