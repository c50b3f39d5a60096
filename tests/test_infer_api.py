"""The inference API: tpo.load -> TPOPipeline.ask / ask_batch / ground / track on a toy world."""

import json
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from torch import nn

import tpo
from tpo.config.heads import MaskHeadConfig
from tpo.data.video import VideoError
from tpo.heads.mask import MaskHead
from tpo.heads.registry import names
from tpo.infer.answer import GroundedAnswer
from tpo.infer.api import nearest_frame, parse_time
from tpo.model.generate import GenerationOutput


def make_checkpoint(folder: Path) -> Path:
    """A random tiny stage-3 model without mask head saved as an inference folder."""
    from tpo.config import TPOConfig, load_config
    from tpo.heads.build import build_model
    from tpo.train.export import save_inference_folder

    cfg = load_config(TPOConfig, ["configs/tiny/stage3.yaml"], ["model.heads.mask=null"])
    return save_inference_folder(build_model(cfg.model), cfg, folder)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    from tpo.data.toyworld import generate_toyworld

    root = tmp_path_factory.mktemp("toyworld")
    generate_toyworld(root, 3, seed=0, workers=1)
    return root


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "final")


def test_weights_that_do_not_fit_the_config_name_both_files(ckpt, tmp_path):
    import shutil

    from tpo.infer.load import load_inference_model

    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    cfg = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(cfg.replace("r: 8", "r: 4", 1))
    with pytest.raises(ValueError, match=r"model.safetensors does not fit .*config.yaml.*size"):
        load_inference_model(copy)


@pytest.fixture(scope="session")
def pipe(ckpt):
    return tpo.load(ckpt)


def _video(world: Path, i: int = 0) -> str:
    return str(world / "videos" / f"toy_{i:05d}.mp4")


class StandInMaskHead(MaskHead):
    """SAM2 is too slow for unit tests: masks = pixels brighter than the frame's mean (the
    MaskHead's answer path, without its SAM2 backend)."""

    def __init__(self):
        nn.Module.__init__(self)
        self.cfg = MaskHeadConfig()  # its answer options (track the sampled frames)

    def propagate(self, prompt, frames, prompt_frame=0):
        self.prompt_frame = prompt_frame
        gray = frames.float().mean(1)
        return gray > gray.mean(dim=(1, 2), keepdim=True)

    def track_from_box(self, frames, box_xyxy, frame=0):
        from tpo.heads.tracking import TrackResult, boxes_from_masks

        masks = self.propagate(None, frames, frame)
        return TrackResult(masks, boxes_from_masks(masks))


def _generation(pipe, inp, heads: list[str]) -> GenerationOutput:
    """A hand-made generation output whose content tokens fire `heads` for one sample."""
    frames = inp.frames[None].to(pipe.dtype)
    vision, _ = pipe.model.mllm.encode_visual(frames)
    d = pipe.model.mllm.llm.width
    return GenerationOutput(
        text=["an answer"], token_ids=[[1, 2]], vision=vision,
        task_hidden=torch.randn(len(heads), d),
        task_head=torch.tensor([names().index(h) for h in heads]),
        task_sample=torch.zeros(len(heads), dtype=torch.long),
    )  # fmt: skip


def test_parse_time_and_nearest_frame():
    assert parse_time("Where is the cat at 3 s?") == 3.0
    assert parse_time("box it at 2.5 seconds please") == 2.5
    assert parse_time("at 4sec") == 4.0
    assert parse_time("Where is the cat?") is None
    assert parse_time("look at 3 cats") is None
    times = np.array([0.5, 1.5, 2.5, 3.5])
    assert nearest_frame(times, 2.4, 0) == 2
    assert nearest_frame(times, None, 1) == 1
    assert nearest_frame(times, 99.0, 0) == 3


def test_ask_is_well_formed(pipe, world):
    ans = pipe.ask(_video(world), "When does the red circle appear?", max_new_tokens=8)
    assert isinstance(ans, GroundedAnswer)
    assert isinstance(ans.text, str) and "[INST]" not in ans.text and "</s>" not in ans.text
    assert set(ans.heads) <= set(names())
    reader = decord.VideoReader(_video(world))
    assert ans.duration == pytest.approx(len(reader) / reader.get_avg_fps())
    assert ans.fps == pytest.approx(reader.get_avg_fps())
    json.dumps(ans.to_json())
    assert pipe.timings.new_tokens <= 8 + 2 and pipe.timings.generate > 0


def test_ground_every_head(pipe, world):
    inp = pipe.load_input(_video(world))
    h, w = decord.VideoReader(_video(world))[0].shape[:2]
    pipe.model.heads["mask"] = StandInMaskHead()
    try:
        gen = _generation(pipe, inp, ["temporal", "region", "mask"])
        ans = pipe.ground(gen, [inp], ["Where is the red circle?"])[0]
    finally:
        del pipe.model.heads["mask"]
    assert ans.heads == ["temporal", "region", "mask"]
    assert ans.windows
    for win in ans.windows:
        assert 0.0 <= win.start <= win.end <= ans.duration + 1e-6
    assert len(ans.saliency) == len(ans.saliency_times) > 0
    assert (ans.saliency_times >= 0).all() and (ans.saliency_times <= ans.duration).all()
    (box,) = ans.boxes
    x1, y1, x2, y2 = box.box
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    mid = len(inp.indices) // 2
    assert box.frame_index == inp.indices[mid]
    assert box.time == pytest.approx(inp.indices[mid] / inp.fps)
    assert ans.masks.masks.shape == (len(inp.indices), h, w)
    np.testing.assert_array_equal(ans.masks.frame_indices, inp.indices)
    back = GroundedAnswer.from_json(json.loads(json.dumps(ans.to_json())))
    np.testing.assert_array_equal(back.masks.masks, ans.masks.masks)


def test_region_frame_follows_named_time(pipe, world):
    inp = pipe.load_input(_video(world))
    gen = _generation(pipe, inp, ["region"])
    ans = pipe.ground(gen, [inp], ["What is at 1 s?"])[0]
    want = int(np.abs(inp.indices / inp.fps - 1.0).argmin())
    assert ans.boxes[0].frame_index == inp.indices[want]


def test_reader_and_tensor_inputs_match_path(pipe, world):
    path = _video(world, 1)
    q = "When does the blue square move?"
    inp_path = pipe.load_input(path)
    inp_reader = pipe.load_input(decord.VideoReader(path))
    np.testing.assert_array_equal(inp_path.indices, inp_reader.indices)
    torch.testing.assert_close(inp_path.frames, inp_reader.frames)
    # features through the path cache equal those encoded directly from the reader
    fa, ta = pipe.temporal_features(inp_path)
    fb, tb = pipe.temporal_features(inp_reader)
    torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ta, tb)
    frames = torch.from_numpy(decord.VideoReader(path).get_batch(list(range(16))).asnumpy())
    ans = pipe.ask(frames.permute(0, 3, 1, 2), q, max_new_tokens=4)
    assert ans.video is None and ans.duration == pytest.approx(16.0)  # tensors default to 1 fps


def test_image_is_one_frame(pipe, world, tmp_path):
    from PIL import Image

    img = decord.VideoReader(_video(world))[0].asnumpy()
    Image.fromarray(img).save(tmp_path / "frame.png")
    inp = pipe.load_input(tmp_path / "frame.png")
    assert inp.indices.tolist() == [0] and inp.frames.shape[0] == 1
    ans = pipe.ask(tmp_path / "frame.png", "What is in the picture?", max_new_tokens=4)
    assert isinstance(ans.text, str)


def test_batch_equals_one_by_one(pipe, world):
    pairs = [
        (_video(world, 0), "When does the red circle appear?"),
        (_video(world, 1), "Where is the blue square?"),
        (_video(world, 2), "What happens in the video? Describe it in detail."),
    ]
    batch = pipe.ask_batch(pairs, max_new_tokens=8)
    for (v, q), got in zip(pairs, batch):
        one = pipe.ask(v, q, max_new_tokens=8)
        assert got.text == one.text
        assert got.heads == one.heads
        assert [w.to_json() for w in got.windows] == pytest.approx(
            [w.to_json() for w in one.windows]
        )


def test_history_enters_the_prompt(pipe, world):
    hist = [("What colour is the circle?", "It is red.")]
    plain = pipe.collator.prompts([("Where is it?", None, [])]).input_ids
    chat = pipe.collator.prompts([("Where is it?", None, hist)]).input_ids
    assert chat.shape[1] > plain.shape[1]
    one = pipe.ask(_video(world), "Where is it?", history=hist, max_new_tokens=6)
    (two,) = pipe.ask_batch([(_video(world), "Where is it?")], histories=[hist], max_new_tokens=6)
    assert one.text == two.text


def test_track_uses_box_prompted_propagation(pipe, world):
    with pytest.raises(ValueError, match="no mask head"):
        pipe.track(_video(world), [10, 10, 40, 40])
    pipe.model.heads["mask"] = StandInMaskHead()
    try:
        ans = pipe.track(_video(world), [10, 10, 40, 40], frame=2)
    finally:
        del pipe.model.heads["mask"]
    n = len(decord.VideoReader(_video(world)))
    assert ans.masks.masks.shape[0] == n and ans.heads == ["mask"]
    assert all(0 <= b.frame_index < n for b in ans.boxes)


def test_bad_inputs(pipe, world, tmp_path):
    with pytest.raises(VideoError, match="missing.mp4"):
        pipe.ask(tmp_path / "missing.mp4", "What?")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="broken.mp4"):
        pipe.ask(tmp_path / "broken.mp4", "What?")
    with pytest.raises(ValueError, match="non-empty"):
        pipe.ask(_video(world), "   ")
    with pytest.raises(FileNotFoundError, match="not a tpo checkpoint"):
        tpo.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tpo.load(tmp_path / "nowhere")


def test_region_head_reads_the_asked_frame_patches(pipe, world):
    """Through the TaskHead protocol the region head gathers the asked frame's patches (default
    the middle sampled frame) and its box, in pixels, is the one of those patches."""
    from tpo.model.task_head import HeadQueries, HeadSample

    inp = pipe.load_input(_video(world))
    gen = _generation(pipe, inp, ["temporal", "region"])
    ans = pipe.ground(gen, [inp], ["What is at 1 s?"])[0]
    head = pipe.model.heads["region"]
    f = int(np.abs(inp.indices / inp.fps - 1.0).argmin())
    t = gen.vision.frames.shape[1]
    per_frame = gen.vision.patches.shape[1] // t
    query = gen.task_hidden[1:2]
    for asked, want in ((f, f), (None, t // 2)):
        q = HeadQueries(query, [0], [HeadSample(duration=1.0, asked_frame=asked)], gen.vision)
        patches = head.gather(q)
        torch.testing.assert_close(
            patches[0], gen.vision.patches[0, want * per_frame : (want + 1) * per_frame]
        )
    q = HeadQueries(query, [0], [HeadSample(duration=1.0, asked_frame=f)], gen.vision)
    box = head.run(query, head.gather(q)).boxes[0].clamp(0, 1)
    h, w = inp.size
    np.testing.assert_allclose(
        ans.boxes[0].box, (box * torch.tensor([w, h, w, h])).tolist(), rtol=1e-5
    )


def test_sampling_is_a_strategy_object(pipe, world):
    """Seeded sampling repeats itself and leaves the caller's RNG where it was."""
    from tpo.infer.decoding import Sampling

    q = "What happens in the video? Describe it in detail."
    state = torch.get_rng_state()
    a = pipe.ask(_video(world), q, max_new_tokens=8, decoding=Sampling(temperature=2.0, seed=4))
    b = pipe.ask(_video(world), q, max_new_tokens=8, decoding=Sampling(temperature=2.0, seed=4))
    assert a.text == b.text and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="either ensemble or decoding"):
        pipe.ask(_video(world), q, ensemble=2, decoding=Sampling(seed=1))


def test_given_mask_frames_are_an_option_of_the_same_path(pipe, world):
    """AskOptions.mask_frames: the mask head propagates through the given frames (prompted on
    the first) and the track carries their video frame numbers."""
    from tpo.infer.api import AskOptions

    inp = pipe.load_input(_video(world))
    given = np.array([1, 3, 5])
    head = pipe.model.heads["mask"] = StandInMaskHead()
    try:
        gen = _generation(pipe, inp, ["mask"])
        opts = AskOptions(asked_frame=2, mask_frames=inp.raw(given), mask_frame_indices=given)
        ans = pipe.predictor.ground(gen, [inp], ["Track it at 1 s"], [opts])[0]
        assert head.prompt_frame == 0
        plain = pipe.ground(gen, [inp], ["Track it"])[0]
    finally:
        del pipe.model.heads["mask"]
    np.testing.assert_array_equal(ans.masks.frame_indices, given)
    want = StandInMaskHead().propagate(None, inp.raw(given))
    np.testing.assert_array_equal(ans.masks.masks, want.numpy())
    np.testing.assert_array_equal(plain.masks.frame_indices, inp.indices)
