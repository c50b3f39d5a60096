"""The assembled tiny MLLM: gradients by group, LM loss on answers, visual splice, head queries."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tpo.config import TPOConfig, load_config
from tpo.heads.registry import names, task_pairs
from tpo.model.build import build_collator, build_mllm
from tpo.model.mllm import label_positions, position_ids
from tpo.model.prompt import IGNORE_INDEX, VISUAL_TOKEN_ID, Turn

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(TPOConfig, [ROOT / "configs/tiny/model.yaml"]).model
TEMP, BOXES, TRACKING, TRACK_BOX = 32002, 32003, 32005, 32006
TIME_BEGIN, BOX_BEGIN, TRACK_BEGIN = 32001, 32000, 32004


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    model = build_mllm(CFG, pairs=task_pairs())
    defaults = {
        name: [p.requires_grad for p in ps] for name, ps in model.trainable_groups().items()
    }
    return model, defaults


@pytest.fixture()
def model(built):
    return built[0].eval()


@pytest.fixture()
def collator(model):
    return build_collator(CFG, model)


def frames(b: int, f: int = 2) -> torch.Tensor:
    size = CFG.vision.img_size
    return torch.randn(b, f, 3, size, size)


def test_groups_and_default_freezing(built):
    _, defaults = built
    assert set(defaults) == {"vision", "connector", "connector_proj", "lora", "task_tokens", "llm"}
    assert not any(defaults["llm"])  # base LLM frozen when LoRA is on
    assert all(defaults["lora"]) and all(defaults["task_tokens"]) and all(defaults["connector"])


def test_backward_under_bf16_autocast_reaches_only_trained_groups(model, collator):
    model.train()
    model.set_trainable(["connector", "lora", "task_tokens"])
    groups = model.trainable_groups()
    with torch.no_grad():  # LoRA B starts at zero, which would hide the gradient of A
        for p in groups["lora"]:
            if not p.any():
                p.normal_(std=0.02)
    batch = collator(
        [
            ("When does the red square appear?", "At <time_begin><temp>."),
            ("Track the object in <track_box>.", "Here <track_begin><tracking>."),
        ]
    )
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames(2), batch.input_ids, batch.attention_mask, batch.labels, boxes=boxes)
    assert torch.isfinite(out.loss)
    out.loss.backward()

    def nonzero(p):
        return p.grad is not None and bool(p.grad.abs().sum() > 0)

    assert all(nonzero(p) for p in groups["lora"])
    assert all(nonzero(p) for p in groups["connector_proj"])
    assert sum(nonzero(p) for p in groups["connector"]) > len(groups["connector_proj"])
    for p in groups["vision"] + groups["llm"]:
        assert p.grad is None
    tt = model.task_tokens
    # content vectors: rows of <temp> and <tracking> are used, <boxes> is not
    assert (tt.content.grad.abs().sum(-1) > 0).tolist() == [True, False, True]
    assert all(nonzero(p) for p in tt.box_encoder.parameters())
    # new vocabulary rows: only the begin tokens present are read from the table
    # (content tokens and <track_box> are substituted), in TASK_TOKENS order
    (delta,) = model.llm.trainable_groups()["task_tokens"]
    assert (delta.grad.abs().sum(-1) > 0).tolist() == [
        False,
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    model.zero_grad(set_to_none=True)


def test_loss_is_cross_entropy_over_answer_tokens_only(model, collator):
    answers = ["It is red.", "Yes <box_begin><boxes>."]
    batch = collator([("What colour?", answers[0]), ("Is there a box in the frame?", answers[1])])
    out = model(frames(2), batch.input_ids, batch.attention_mask, batch.labels, return_logits=True)
    logits, labels = out.logits[:, :-1].float(), batch.labels[:, 1:]
    kept = labels != IGNORE_INDEX
    tok = model.tokenizer
    counts = [len(tok(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]  # + eos
    assert kept.sum(1).tolist() == counts
    assert torch.allclose(out.loss, F.cross_entropy(logits[kept], labels[kept]), atol=1e-5)


def test_training_loss_on_label_rows_equals_the_full_logits_loss(model, collator):
    batch = collator([("What colour?", "It is red."), ("Where is it?", "Yes <box_begin><boxes>.")])
    keep = label_positions(batch.labels)
    shifted = batch.labels[:, 1:] != IGNORE_INDEX
    assert keep.tolist() == shifted.any(0).nonzero()[:, 0].tolist() and len(keep) < shifted.shape[1]
    grads, video = [], frames(2)
    for return_logits in (True, False):  # full [b, s, V] logits vs the label rows only
        out = model(
            video,
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            return_logits=return_logits,
        )
        out.loss.backward()
        (delta,) = model.llm.trainable_groups()["task_tokens"]
        grads.append((out.loss.detach(), delta.grad.clone()))
        model.zero_grad(set_to_none=True)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6) and grads[0][1].abs().sum() > 0


def test_visual_tokens_spliced_like_a_python_loop(model, collator):
    turns = [
        Turn("Short?"),
        Turn("A much longer question about the moving blue circle?"),
        Turn("No video here?", has_video=False),
    ]
    batch = collator.prompts(turns)  # left padding, rows of different length
    ids = batch.input_ids
    q = model.num_visual_tokens
    visual = torch.randn(3, q, model.llm.width)
    got = model.embed_inputs(ids, visual)
    table = model.llm.input_embeddings()
    for i in range(3):
        k = 0
        for j in range(ids.shape[1]):
            if ids[i, j] == VISUAL_TOKEN_ID:
                expected = visual[i, k]
                k += 1
            else:
                expected = table(ids[i, j].view(1, 1))[0, 0]
            assert torch.equal(got[i, j], expected), (i, j)
        assert k == (q if turns[i].has_video else 0)


def test_content_and_track_box_embeddings(model, collator):
    batch = collator([("Follow <track_box> now.", "Sure <track_begin><tracking>.")])
    box = torch.tensor([[0.25, 0.25, 0.75, 0.5]])
    emb = model.embed_inputs(
        batch.input_ids, torch.zeros(1, model.num_visual_tokens, model.llm.width), box
    )
    ids = batch.input_ids[0]
    assert torch.equal(emb[0, ids == TRACKING][0], model.task_tokens.content[2])
    assert torch.allclose(emb[0, ids == TRACK_BOX][0], model.task_tokens.encode_boxes(box)[0])
    with pytest.raises(ValueError, match="track_box"):
        model.embed_inputs(
            batch.input_ids, torch.zeros(1, model.num_visual_tokens, model.llm.width)
        )
    with pytest.raises(ValueError, match="visual positions"):
        model.embed_inputs(batch.input_ids, torch.zeros(1, 3, model.llm.width), box)


def test_head_queries_are_hidden_states_at_content_tokens(model, collator):
    batch = collator(
        [
            ("Q one?", "At <time_begin><temp> in <box_begin><boxes>."),
            ("Q two is longer than one?", "Mask <track_begin><tracking>."),
        ]
    )
    fr = frames(2)
    ids, mask = batch.input_ids, batch.attention_mask
    out = model(fr, ids, mask, batch.labels)
    assert out.task_head.tolist() == [0, 1, 2] and out.task_sample.tolist() == [0, 0, 1]
    _, visual = model.encode_visual(fr)
    hidden = model.llm(
        inputs_embeds=model.embed_inputs(ids, visual),
        attention_mask=mask,
        position_ids=position_ids(mask),
        output_hidden_states=True,
    ).hidden_states[-1]
    where = [
        (i, j)
        for i in range(2)
        for j in range(ids.shape[1])
        if ids[i, j] in (TEMP, BOXES, TRACKING)
    ]
    expected = torch.stack([hidden[i, j] for i, j in where])
    assert torch.allclose(out.task_hidden, expected, atol=1e-6)
    per = out.per_sample(2)
    assert per[0][1].tolist() == [0, 1] and per[1][1].tolist() == [2]
    region, sample = out.for_head(names().index("region"))
    assert sample.tolist() == [0] and torch.equal(region[0], out.task_hidden[1])
    assert names()[out.task_head[2]] == "mask"


def test_image_input_and_text_only(model, collator):
    batch = collator([("What is shown?", "A red square.")])
    out = model(frames(1, f=1), batch.input_ids, batch.attention_mask, batch.labels)
    assert out.vision.frames.shape[:2] == (1, 1) and torch.isfinite(out.loss)
    assert out.task_hidden.shape == (0, model.llm.width)
    text = collator([Turn("Say hi.", "Hi.", has_video=False)])
    out = model(None, text.input_ids, text.attention_mask, text.labels)
    assert out.vision is None and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="no frames"):
        model(None, batch.input_ids, batch.attention_mask)
