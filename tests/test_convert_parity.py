"""Module parity with the official code: the reduced official checkpoint, converted and read by
`tpo.load` (fp32), reproduces through tpo's modules what the official code computed from it
(`parity/expected/`): the ViT and its LayerNorm (video and image), the Q-Former and the visual
tokens, the spliced prompt embeddings, the LLM's final hidden states and last logits, and the
raw region box. Each figure is the max absolute difference (printed with -s)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tpo
from tpo.model.prompt import VISUAL_TOKEN_ID

TOL = 1e-4
PROMPTS = ("temporal", "region", "mask", "plain")


@pytest.fixture(scope="module")
def model(converted_reduced):
    return tpo.load(converted_reduced, dtype=torch.float32).model


@pytest.fixture(scope="module")
def expected(parity_reference):
    def read(component: str) -> dict[str, torch.Tensor]:
        folder = parity_reference / "expected"
        described = json.loads((folder / f"{component}.json").read_text())["tensors"]
        tensors = load_file(str(folder / f"{component}.safetensors"))
        assert set(described) <= set(tensors), component  # the .json describes each tensor
        return tensors

    return read


def _diff(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    diff = (got.float() - want.float()).abs().max().item()
    print(f"parity {name}: max abs diff {diff:.2e}")
    return diff


def _keep_input(seen: dict):
    """A forward hook that keeps its module's input (and leaves the output alone)."""

    def hook(module, args, out) -> None:
        seen["in"] = args[0]

    return hook


def _vision(model, frames: torch.Tensor):
    """(ViT output before vision_layernorm [b, t, p, d], after it [b, t*p, d])."""
    seen: dict = {}
    hook = model.mllm.vision.vision_layernorm.register_forward_hook(_keep_input(seen))
    try:
        out = model.mllm.vision(frames)
    finally:
        hook.remove()
    b, t = frames.shape[:2]
    return seen["in"].view(b, t, -1, seen["in"].shape[-1]), out.patches


@torch.no_grad()
def test_vision(model, expected):
    vision = expected("vision")
    vit, ln = _vision(model, vision["in.video"])
    assert _diff("vision out.vit", vit, vision["out.vit"]) <= TOL
    assert _diff("vision out.vision_layernorm", ln, vision["out.vision_layernorm"]) <= TOL
    vit, ln = _vision(model, vision["in.image"])
    assert _diff("vision out.image_vit", vit, vision["out.image_vit"]) <= TOL
    assert (
        _diff("vision out.image_vision_layernorm", ln, vision["out.image_vision_layernorm"]) <= TOL
    )


def _qformer_hidden(connector, patches: torch.Tensor) -> torch.Tensor:
    seen: dict = {}
    hook = connector.project_up.register_forward_hook(_keep_input(seen))
    try:
        visual = connector(patches)
    finally:
        hook.remove()
    return seen["in"], visual


@torch.no_grad()
def test_connector(model, expected):
    connector, vision = expected("connector"), expected("vision")
    queries = torch.cat(
        [model.mllm.connector.query_tokens, model.mllm.connector.extra_query_tokens], 1
    )
    assert _diff("connector in.query_tokens_cat", queries, connector["in.query_tokens_cat"]) == 0
    hidden, visual = _qformer_hidden(model.mllm.connector, connector["in.vision_layernorm"])
    assert (
        _diff("connector out.qformer_query_hidden", hidden, connector["out.qformer_query_hidden"])
        <= TOL
    )
    assert _diff("connector out.visual_tokens", visual, connector["out.visual_tokens"]) <= TOL
    _, image = _vision(model, vision["in.image"])
    hidden, visual = _qformer_hidden(model.mllm.connector, image)
    assert (
        _diff(
            "connector out.image_qformer_query_hidden",
            hidden,
            connector["out.image_qformer_query_hidden"],
        )
        <= TOL
    )
    assert (
        _diff("connector out.image_visual_tokens", visual, connector["out.image_visual_tokens"])
        <= TOL
    )


def _embed(model, ids, index, visual, boxes=None):
    """tpo's splice of the official ids: the visual positions marked, the rest as given."""
    ids = ids.masked_fill(index.bool(), VISUAL_TOKEN_ID)
    return model.mllm.embed_inputs(ids, visual, boxes)


@torch.no_grad()
def test_prompts(model, expected):
    prompts, vision = expected("prompts"), expected("vision")
    _, visual = model.mllm.encode_visual(vision["in.video"])
    for name in PROMPTS:
        ids, index = prompts[f"{name}.input_ids"], prompts[f"{name}.video_index"]
        embeds = _embed(model, ids, index, visual)
        assert (
            _diff(f"prompts {name}.inputs_embeds", embeds, prompts[f"{name}.inputs_embeds"]) <= TOL
        )
        out = model.mllm.llm(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), output_hidden_states=True
        )
        assert (
            _diff(
                f"prompts {name}.last_hidden", out.hidden_states[-1], prompts[f"{name}.last_hidden"]
            )
            <= TOL
        )
        assert (
            _diff(f"prompts {name}.logits_last", out.logits[:, -1], prompts[f"{name}.logits_last"])
            <= TOL
        )
    # a <track_box> prompt: the box goes through loc_encoder into the prompt
    ids, index = prompts["track_box.input_ids"], prompts["track_box.video_index"]
    embeds = _embed(model, ids, index, visual, prompts["track_box.boxes"])
    assert (
        _diff("prompts track_box.inputs_embeds", embeds, prompts["track_box.inputs_embeds"]) <= TOL
    )
    # the image prompt: one frame through the image path
    _, image = model.mllm.encode_visual(vision["in.image"])
    embeds = _embed(model, prompts["image.input_ids"], prompts["image.image_index"], image)
    assert _diff("prompts image.inputs_embeds", embeds, prompts["image.inputs_embeds"]) <= TOL
    # the training forward's semantics: <time_begin><temp> teacher-forced
    ids = prompts["teacher_forced.input_ids"]
    index = torch.zeros_like(ids, dtype=torch.uint8)
    index[:, : prompts["temporal.video_index"].shape[1]] = prompts["temporal.video_index"]
    embeds = _embed(model, ids, index, visual)
    assert (
        _diff(
            "prompts teacher_forced.inputs_embeds", embeds, prompts["teacher_forced.inputs_embeds"]
        )
        <= TOL
    )
    out = model.mllm.llm(
        inputs_embeds=embeds, attention_mask=torch.ones_like(ids), output_hidden_states=True
    )
    hidden = out.hidden_states[-1]
    assert (
        _diff("prompts teacher_forced.last_hidden", hidden, prompts["teacher_forced.last_hidden"])
        <= TOL
    )
    temp = hidden[0, -1]  # the <temp> position, the last one
    assert (
        _diff("prompts teacher_forced.temp_hidden", temp, prompts["teacher_forced.temp_hidden"])
        <= TOL
    )


@torch.no_grad()
def test_heads(model, expected):
    heads, generate = expected("heads"), expected("generate")
    query = generate["region.prompt_token"]
    assert torch.equal(query, heads["region.prompt_token"])
    box = model.heads["region"].mlp(query)  # the raw loc_decoder output (normalised xyxy)
    assert _diff("heads region.box", box, heads["region.box"]) <= TOL
    sparse = model.heads["mask"].prompt_mlp(heads["mask.prompt_token"]).view(1, 3, 256)
    assert _diff("heads mask.sam_prompt", sparse, heads["mask.sam_prompt"]) <= TOL
    # the teacher-forced <temp> hidden through loc_decoder (the training forward's query)
    temp = expected("prompts")["teacher_forced.temp_hidden"]
    box = model.heads["region"].mlp(temp)
    assert (
        _diff(
            "heads teacher_forced.region_box_from_temp_hidden",
            box,
            heads["teacher_forced.region_box_from_temp_hidden"],
        )
        <= TOL
    )
