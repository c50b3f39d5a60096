"""POPEN preference ensemble at inference (`TPOPipeline.ask(ensemble=K)`) and `tpo popen evaluate`.

A random tiny stage-3 model; SAM2 is replaced by a stand-in mask head that records its query.
A random model almost never says `<tracking>`, so a logits processor forces `<track_begin>`
as the second generated token of chosen responses (the model's own processor then forces
`<tracking>`); every other token is sampled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from tpo.config.heads import MaskHeadConfig
from tpo.heads.mask import MaskHead
from tpo.heads.registry import names
from tpo.infer.answer import GroundedAnswer
from tpo.infer.ensemble import (
    EnsembleGeneration,
    EnsembleOptions,
    best_generation,
    ensemble_generate,
    resolve_k,
)
from tpo.infer.preference import preference_attention, preference_weights
from tpo.model.generate import GenerationOutput
from tpo.model.prompt import Turn

QUESTION = "Track the red circle through the video."
MASK, REGION = names().index("mask"), names().index("region")


def tiny_config(mask_null: bool = True):
    from tpo.config import TPOConfig, load_config

    over = ["model.heads.mask=null"] if mask_null else []
    return load_config(TPOConfig, ["configs/tiny/stage3.yaml"], over)


class RecordingMaskHead(MaskHead):
    """SAM2 stand-in: records each query; masks = pixels brighter than the frame's mean (the
    MaskHead's answer path, without its SAM2 backend)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.queries: list[torch.Tensor] = []
        self.cfg = MaskHeadConfig()  # its answer options (track the sampled frames)

    def propagate(self, prompt, frames, prompt_frame=0):
        self.queries.append(prompt.detach().clone())
        gray = frames.float().mean(1)
        return gray > gray.mean(dim=(1, 2), keepdim=True)


class ForceRows(LogitsProcessor):
    """Force `token` as generated token `step` of the rows `rows` (None: every row)."""

    def __init__(self, step: int, token: int, rows: list[int] | None) -> None:
        self.step, self.token, self.rows = step, token, rows

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.step:
            return scores
        rows = range(len(scores)) if self.rows is None else self.rows
        for r in rows:
            scores[r] = float("-inf")
            scores[r, self.token] = 0.0
        return scores


@pytest.fixture(scope="module")
def pipe():
    from tpo.heads.build import build_model
    from tpo.infer.api import TPOPipeline
    from tpo.model.build import build_collator

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model).float().eval()
    with torch.no_grad():  # non-zero adapters: the policy differs from its reference
        for p in model.mllm.trainable_groups()["lora"]:
            p.normal_(std=0.05)
    model.heads["mask"] = RecordingMaskHead()
    collator = build_collator(cfg.model, model.mllm)
    return TPOPipeline(
        model, collator, num_frames=cfg.data.num_frames, img_size=cfg.model.vision.img_size
    )


def force_tracking(monkeypatch, pipe, rows: list[int] | None = None) -> None:
    """Make generation say `<track_begin>` (then `<tracking>`) at step 1 in `rows`."""
    llm = pipe.model.mllm.llm
    original = llm.generate
    begin = pipe.model.mllm.task_tokens.ids.begin[MASK]

    def generate(**kwargs):
        procs = [ForceRows(1, begin, rows), *kwargs.pop("logits_processor")]
        return original(logits_processor=LogitsProcessorList(procs), **kwargs)

    monkeypatch.setattr(llm, "generate", generate)


def video(world: Path) -> str:
    return str(world / "videos" / "toy_00000.mp4")


def prompt(pipe, world):
    """(frames [1, f, 3, S, S], input_ids [1, s], attention_mask [1, s]) as ask builds them."""
    inp = pipe.load_input(video(world))
    text = pipe.collator.prompts([Turn(QUESTION, None, [])])
    return inp.frames[None].to(pipe.dtype), text.input_ids, text.attention_mask


@torch.no_grad()
def teacher_forced(pipe, frames, ids, response: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference by the training forward: (token log-probs [L], first <tracking> hidden [d])."""
    full = torch.cat([ids, torch.tensor([response])], 1)
    out = pipe.model.mllm(frames, full, torch.ones_like(full), return_logits=True)
    s = ids.shape[1]
    logp = out.logits[0, s - 1 : -1].float().log_softmax(-1)
    picked = logp.gather(-1, torch.tensor(response)[:, None])[:, 0]
    hidden = out.task_hidden[out.task_head == MASK]
    return picked, hidden[0] if len(hidden) else None


def test_ensemble_drives_mask_head_with_preference_combination(pipe, world, monkeypatch):
    force_tracking(monkeypatch, pipe)
    frames, ids, mask = prompt(pipe, world)
    ens = ensemble_generate(pipe.model.mllm, frames, ids, mask, EnsembleOptions(3, seed=5), 6, MASK)
    head = pipe.model.heads["mask"]
    ans = pipe.ask(video(world), QUESTION, ensemble=3, seed=5, max_new_tokens=6)
    responses = ens.samples.token_ids
    assert len(set(map(tuple, responses))) > 1  # sampled, not three copies of one answer
    # scores = mean token log-prob, hidden states = <tracking>'s, both by the training forward
    refs = [teacher_forced(pipe, frames, ids, r) for r in responses]
    means = torch.stack([lp.mean() for lp, _ in refs])
    hidden = torch.stack([h for _, h in refs])
    assert ens.log_gamma[0] == pytest.approx(means.tolist(), abs=1e-4)
    torch.testing.assert_close(ens.hidden[0], hidden, atol=1e-4, rtol=1e-4)
    expected = preference_attention(hidden[None], means[None])[0]
    torch.testing.assert_close(head.queries[-1], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected, hidden.mean(0), atol=1e-6)  # not a plain mean
    # the answer: one mask per sampled frame, the best-scored response's text, K scores
    inp = pipe.load_input(video(world))
    assert ans.masks.masks.shape[0] == len(inp.indices) and "mask" in ans.heads
    rec = ans.ensemble
    assert rec.k == 3 and rec.used == [True] * 3
    assert rec.scores == pytest.approx(means.tolist(), abs=1e-4)
    assert rec.weights == pytest.approx(preference_weights(hidden, means).tolist(), abs=1e-4)
    assert rec.best == int(np.argmax(rec.scores)) and ans.text == rec.texts[rec.best]
    back = GroundedAnswer.from_json(json.loads(json.dumps(ans.to_json())))
    assert back.ensemble == rec


def test_k1_combination_is_the_response_embedding(pipe, world, monkeypatch):
    force_tracking(monkeypatch, pipe)
    frames, ids, mask = prompt(pipe, world)
    ens = ensemble_generate(pipe.model.mllm, frames, ids, mask, EnsembleOptions(1, seed=3), 6, MASK)
    pipe.ask(video(world), QUESTION, ensemble=1, seed=3, max_new_tokens=6)
    query = pipe.model.heads["mask"].queries[-1]
    assert torch.equal(query, ens.hidden[0, 0]) and torch.equal(ens.combined[0], ens.hidden[0, 0])
    _, ref = teacher_forced(pipe, frames, ids, ens.samples.token_ids[0])
    torch.testing.assert_close(query, ref, atol=1e-4, rtol=1e-4)


def test_same_seed_same_answer_and_rng_untouched(pipe, world, monkeypatch):
    force_tracking(monkeypatch, pipe)
    head = pipe.model.heads["mask"]
    state = torch.get_rng_state()
    a = pipe.ask(video(world), QUESTION, ensemble=3, seed=7, max_new_tokens=6)
    b = pipe.ask(video(world), QUESTION, ensemble=3, seed=7, max_new_tokens=6)
    assert torch.equal(torch.get_rng_state(), state)  # the seed forks the RNG
    assert a.ensemble == b.ensemble and a.text == b.text
    assert torch.equal(head.queries[-1], head.queries[-2])
    np.testing.assert_array_equal(a.masks.masks, b.masks.masks)
    c = pipe.ask(video(world), QUESTION, ensemble=3, seed=8, max_new_tokens=6)
    assert c.ensemble.texts != a.ensemble.texts


def test_only_responses_with_tracking_join(pipe, world, monkeypatch):
    force_tracking(monkeypatch, pipe, rows=[0, 2])
    frames, ids, mask = prompt(pipe, world)
    ens = ensemble_generate(pipe.model.mllm, frames, ids, mask, EnsembleOptions(3, seed=1), 6, MASK)
    assert ens.used[0].tolist() == [True, False, True]
    keep = torch.tensor([0, 2])
    expected = preference_attention(ens.hidden[:, keep], ens.log_gamma[:, keep])
    torch.testing.assert_close(ens.combined, expected)
    assert ens.weights[0, 1] == 0 and float(ens.weights[0].sum()) == pytest.approx(1.0)
    monkeypatch.undo()  # nothing forced: no response has <tracking>, so no mask
    ans = pipe.ask(video(world), QUESTION, ensemble=2, seed=1, max_new_tokens=4)
    assert ans.masks is None and "mask" not in ans.heads and ans.ensemble.used == [False] * 2


def test_best_response_keeps_its_queries_and_gains_the_mask():
    """Hand-made: response 0 (best) fired the region head only, response 1 the mask head."""
    d = 4
    samples = GenerationOutput(
        text=["box it", "track it"], token_ids=[[1], [2]], vision=None,
        task_hidden=torch.arange(2 * d, dtype=torch.float32).view(2, d),
        task_head=torch.tensor([REGION, MASK]), task_sample=torch.tensor([0, 1]),
    )  # fmt: skip
    combined = torch.full((1, d), 9.0)
    ens = EnsembleGeneration(
        samples=samples, log_gamma=torch.tensor([[-0.1, -2.0]]),
        hidden=torch.zeros(1, 2, d), used=torch.tensor([[False, True]]),
        combined=combined, weights=torch.tensor([[0.0, 1.0]]), best=torch.tensor([0]),
    )  # fmt: skip
    gen = best_generation(ens, MASK)
    assert gen.text == ["box it"] and gen.token_ids == [[1]]
    assert gen.task_head.tolist() == [REGION, MASK] and gen.task_sample.tolist() == [0, 0]
    torch.testing.assert_close(gen.task_hidden, torch.stack([samples.task_hidden[0], combined[0]]))


def test_dpo_score_is_beta_times_policy_minus_reference(pipe, world, monkeypatch):
    force_tracking(monkeypatch, pipe)
    frames, ids, mask = prompt(pipe, world)
    opts = EnsembleOptions(2, score="dpo", beta=0.5, seed=2)
    ens = ensemble_generate(pipe.model.mllm, frames, ids, mask, opts, 5, MASK)
    expected = []
    for r in ens.samples.token_ids:
        policy, _ = teacher_forced(pipe, frames, ids, r)
        with pipe.model.mllm.llm.model.disable_adapter():
            ref, _ = teacher_forced(pipe, frames, ids, r)
        expected.append(0.5 * float(policy.sum() - ref.sum()))
    assert ens.log_gamma[0].tolist() == pytest.approx(expected, abs=1e-4)
    assert any(abs(v) > 1e-3 for v in expected)  # the adapters matter


def test_bad_arguments(pipe, world):
    assert resolve_k(None) is None and resolve_k(True, 5) == 5 and resolve_k(2) == 2
    for kwargs, match in (
        ({"ensemble": 0}, "K >= 1"),
        ({"ensemble": 2, "ensemble_score": "vote"}, "ensemble_score"),
        ({"ensemble": 2, "ensemble_temperature": 0.0}, "ensemble_temperature"),
    ):
        with pytest.raises(ValueError, match=match):
            pipe.ask(video(world), QUESTION, **kwargs)


def test_evaluate_cli_writes_the_table(world, tmp_path, capsys):
    """2 expressions, a model without mask head: every mask is empty in both settings, so
    gIoU = the fraction of frames whose GT is empty and cIoU = 0."""
    from safetensors.torch import save_file

    from tpo.cli import main
    from tpo.config import to_yaml
    from tpo.heads.build import build_model

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(
        {k: v for k, v in state.items() if not k.startswith("criterion")},
        ckpt / "model.safetensors",
    )
    (ckpt / "config.yaml").write_text(to_yaml(cfg))
    ann = world / "annotations" / "mevis_test"
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(ckpt), "--annotations", str(ann), "--videos", str(world / "videos")]
    argv += ["--limit", "2", "--ensemble", "2", "--batch-size", "2", "--out", str(out)]
    assert main(["popen", "evaluate", *argv]) == 0
    table = (out / "table.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["greedy", "ensemble K=2"]
    assert rows[1]["mean_tracking_responses"] == 0.0  # a random model never says <tracking>
    assert "| greedy |" in table and "| ensemble K=2 |" in table
    # the GT by hand: per predicted expression and frame, is the union of its objects empty?
    meta = json.loads((ann / "meta_expressions.json").read_text())["videos"]
    rles = json.loads((ann / "mask_dict.json").read_text())

    def area(rle) -> int:
        if rle is None:
            return 0
        return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))

    (done,) = out.glob("*/greedy/done.jsonl")
    empty = []
    for line in done.read_text().splitlines():
        item = json.loads(line)
        entry = meta[item["vid"]]
        annos = entry["expressions"][item["eid"]]["anno_id"]
        for j in range(len(entry["frames"])):
            empty.append(all(area(rles[str(a)][j]) == 0 for a in annos))
    for r in rows:
        assert r["n"] == 2 and r["no_head"] == 2
        assert r["gIoU"] == pytest.approx(np.mean(empty), abs=1e-6)
        assert r["cIoU"] == 0.0
        assert f"{100 * r['gIoU']:.2f}" in table
    assert main(["popen", "evaluate", *argv[:-2], "--ensemble", "0", "--out", str(out)]) == 2
