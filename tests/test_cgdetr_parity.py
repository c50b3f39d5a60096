"""CG-DETR parity with the release: the reduced official folder, converted by `tpo convert`,
runs its temporal head on the inputs the official code was given and reproduces every output
(`expected/cgdetr.*`): logits, spans, saliency, t2v attention, the auxiliary decoder outputs
(<= 1e-4), the padded-text variant, and after post-processing the answer window and the list
of windows. End to end, `ask()` answers the temporal question from features given as npz
files, in seconds of the video."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import tpo
from tpo.heads import cgdetr_layout
from tpo.heads import official_layout as layout
from tpo.heads.cgdetr import official_windows

TOL = 1e-4
CLIP_DIM = 32  # in.v_feat [..., :32] are the clip features, [..., -2:] the TEF the head appends


@pytest.fixture(scope="module")
def ref(parity_reference):
    expected = parity_reference / "expected"
    tensors = load_file(expected / "cgdetr.safetensors")
    notes = json.loads((expected / "cgdetr.json").read_text())["notes"]
    run = json.loads((expected / "run.json").read_text())
    return tensors, notes, run, expected


@pytest.fixture(scope="module")
def pipe(converted_reduced):
    torch.set_num_threads(1)
    return tpo.load(converted_reduced)


def _run(pipe, e, padded: bool = False):
    net = pipe.model.heads["temporal"].net
    q = "in.q_feat_padded" if padded else "in.q_feat"
    m = "in.q_mask_padded" if padded else "in.q_mask"
    with torch.no_grad():
        return net(e[q], e[m], e["in.v_feat"], e["in.v_mask"], e["in.prompt_token"][:, 0])


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_every_cg_model_tensor_maps_both_ways(parity_reference, converted_reduced):
    src = load_file(parity_reference / "official-reduced" / "model.safetensors")
    cg = {k: v for k, v in src.items() if k.startswith(cgdetr_layout.OFFICIAL_PREFIX)}
    assert len(cg) == 285
    names = {k: layout.to_tpo(k) for k in cg}
    assert len(set(names.values())) == 285  # one tpo tensor each
    assert all(layout.to_official(t) == k for k, t in names.items())
    with safe_open(str(converted_reduced / "model.safetensors"), "pt") as f:
        held = {k for k in f.keys() if k.startswith(layout.CGDETR_PREFIX)}  # noqa: SIM118
        assert held == set(names.values())
        assert all(torch.equal(f.get_tensor(names[k]), v) for k, v in cg.items())
    with pytest.raises(KeyError, match="cg_model.no_such"):
        layout.to_tpo("cg_model.no_such.weight")


def test_outputs_equal_the_release(pipe, ref):
    e = ref[0]
    out = _run(pipe, e)
    diffs = {
        "pred_logits": _diff(out.pred_logits, e["out.pred_logits"]),
        "pred_spans": _diff(out.pred_spans, e["out.pred_spans"]),
        "saliency_scores": _diff(out.saliency, e["out.saliency_scores"]),
        "t2vattnvalues": _diff(out.t2v_attn, e["out.t2vattnvalues"]),
        "aux_pred_spans": _diff(
            torch.stack([a["pred_spans"] for a in out.aux]), e["out.aux_pred_spans"]
        ),
        "aux_pred_logits": _diff(
            torch.stack([a["pred_logits"] for a in out.aux]), e["out.aux_pred_logits"]
        ),
    }
    print("cgdetr parity max abs diff:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL, diffs


def test_padded_text_gives_the_release_outputs(pipe, ref):
    e = ref[0]
    out = _run(pipe, e, padded=True)
    for name, got in (
        ("pred_logits", out.pred_logits),
        ("pred_spans", out.pred_spans),
        ("saliency_scores", out.saliency),
    ):
        assert _diff(got, e[f"out.padded.{name}"]) <= TOL, name


def _same_up_to_ties(got: list[list[float]], want: list[list[float]]) -> None:
    """Equal lists, except that windows whose scores differ by < 1e-4 may swap places."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if g == pytest.approx(w, abs=1e-4):
            continue
        tied = [x for x in want if abs(x[2] - g[2]) < 1e-4]
        assert any(g == pytest.approx(x, abs=1e-4) for x in tied), (i, g, w)


def test_post_processing_gives_the_release_windows(pipe, ref):
    e, notes = ref[0], ref[1]
    out = _run(pipe, e)
    wins = official_windows(out.pred_logits[0], out.pred_spans[0], notes["duration_s"], 1.0)
    assert wins[0] == notes["post.relevant_window"]  # the answer: identical
    _same_up_to_ties(wins, notes["post.pred_relevant_windows"])
    fp16 = out.saliency[0].half().float().tolist()
    assert fp16 == pytest.approx(notes["post.saliency_scores"], abs=1e-3)


def test_ask_answers_from_npz_features(pipe, ref, tmp_path):
    e, notes, run, expected = ref
    frames = load_file(expected / "vision.safetensors")["in.raw_frames_uint8"]
    video = tmp_path / "video.npz"
    query = tmp_path / "query.npz"
    np.savez(video, features=e["in.v_feat"][0, :, :CLIP_DIM].numpy())
    np.savez(query, last_hidden_state=e["in.q_feat"][0].numpy())
    ans = pipe.ask(
        frames, run["prompts"]["temporal"], max_new_tokens=20,
        video_features=video, query_features=query,
    )  # fmt: skip
    assert ans.heads == ["temporal"]
    got = [[w.start, w.end, w.score] for w in ans.windows]
    assert got[0] == notes["post.relevant_window"]
    _same_up_to_ties(got, notes["post.pred_relevant_windows"])
    assert len(ans.saliency) == 8  # one per clip (second) of the video


def test_missing_or_misshapen_features_are_clear_errors(pipe, ref):
    e, _, run, expected = ref
    frames = load_file(expected / "vision.safetensors")["in.raw_frames_uint8"]
    question = run["prompts"]["temporal"]
    with pytest.raises(ValueError, match="video_features"):
        pipe.ask(frames, question, max_new_tokens=20, query_features=e["in.q_feat"][0].numpy())
    with pytest.raises(ValueError, match="width 32"):
        pipe.ask(
            frames, question, max_new_tokens=20,
            video_features=e["in.v_feat"][0].numpy(),  # TEF included: 34 wide
            query_features=e["in.q_feat"][0].numpy(),
        )  # fmt: skip


def test_criterion_weight_sets_eos_coef(parity_reference, converted_reduced):
    record = json.loads((converted_reduced / layout.OFFICIAL_FILE).read_text())
    src = load_file(parity_reference / "official-reduced" / "model.safetensors")
    assert record["criterion_weight"] == src[layout.CRITERION_WEIGHT].tolist()
