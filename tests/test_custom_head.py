"""A fourth head defined here alone: registered, trained a few steps, answered by `ask()`.

The counting head has its own task tokens `<count_begin><count>`, reads its targets from the
training sample (the count the answer text starts with), reads the encoder's per-frame
features of its sample besides the `<count>` query, has its own criterion and answers a
`count` field; no library file knows it. Its batches come from the real training `collate`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tpo.heads import registry
from tpo.infer.answer import GroundedAnswer
from tpo.infer.decoding import Decoded
from tpo.model.task_head import HeadQueries, HeadTargets, TaskHead

MAX_COUNT = 4


class CountCriterion(nn.Module):
    """Cross-entropy of the predicted count against `targets[i]["count"]`."""

    weight_dict = {"loss_ce": 1.0}

    def forward(self, logits: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        gt = torch.stack([t["count"] for t in targets]).to(logits.device)
        return {"loss_ce": nn.functional.cross_entropy(logits.float(), gt)}


class CountHead(TaskHead):
    """How many bright squares: an MLP on the `<count>` query and the mean frame feature."""

    name = "count"
    tokens = ("<count_begin>", "<count>")

    @classmethod
    def from_config(cls, cfg, d_llm: int, d_vision: int) -> CountHead:
        return cls(d_llm, d_vision)

    def __init__(self, d_llm: int, d_vision: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_llm + d_vision, 32), nn.ReLU(), nn.Linear(32, MAX_COUNT + 1)
        )

    @classmethod
    def targets_from(cls, sample) -> HeadTargets | None:
        """The count an answer such as '3. <count_begin><count>' starts with."""
        answer = sample.record.answer
        if cls.tokens[1] not in answer:
            return None
        return HeadTargets({"count": torch.tensor(int(answer.split(".")[0]))})

    def gather(self, queries: HeadQueries) -> Tensor:
        """The mean per-frame feature `[m, d_v]` of each query's video."""
        return queries.vision.frames[torch.tensor(queries.rows)].mean(1)

    def run(self, hidden: Tensor, inputs: Tensor) -> Tensor:
        return self.mlp(torch.cat([hidden.float(), inputs.float()], -1))  # [m, MAX_COUNT + 1]

    def criterion(self) -> nn.Module:
        return CountCriterion()

    def postprocess(self, output: Tensor, queries: HeadQueries, inputs: Tensor) -> list[dict]:
        return [{"count": int(c)} for c in output.argmax(-1).tolist()]


def squares(k: int, f: int = 4, size: int = 64) -> Tensor:
    """uint8 frames `[f, 3, size, size]`: `k` white squares on black."""
    frames = torch.zeros(f, 3, size, size, dtype=torch.uint8)
    for i in range(k):
        x = 4 + 15 * i
        frames[:, :, 8:20, x : x + 12] = 255
    return frames


class ForceBegin:
    """A decoding strategy of this test: greedy, but the answer starts with `token`."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, mllm, frames, input_ids, attention_mask, *, max_new_tokens, pooled=None):
        token = self.token

        def first(ids, scores):
            if ids.shape[1] == 0:  # the first generated step (the prompt went in as embeddings)
                scores = torch.full_like(scores, float("-inf"))
                scores[:, token] = 0.0
            return scores

        gen = mllm.generate(
            frames, input_ids, attention_mask, max_new_tokens=max_new_tokens,
            logits_processor=[first],
        )  # fmt: skip
        return Decoded(gen)


def _sample(answer: str, frames: Tensor, i: int):
    from tpo.data.dataset import Sample
    from tpo.data.records import Record

    rec = Record(f"squares_{i}.mp4", "How many squares?", answer, "conversation", str(i), "test")
    f = frames.shape[0]
    return Sample(frames=frames, timestamps=torch.arange(f, dtype=torch.float32),
                  indices=np.arange(f), record=rec, index=i, clip_start=0.0, duration=float(f))  # fmt: skip


@pytest.fixture
def count_head():
    registry.register(CountHead)
    yield CountHead
    registry.unregister(CountHead.name)


def test_a_fourth_head_trains_and_answers(count_head):
    from tpo.config import TPOConfig, load_config
    from tpo.data.video import normalize_frames
    from tpo.infer.api import TPOPipeline
    from tpo.model.build import build_collator
    from tpo.stages import get_stage
    from tpo.train.builders import build_train_model
    from tpo.train.data import collate

    cfg = load_config(TPOConfig, ["configs/tiny/stage3.yaml"], ["model.heads.mask=null"])
    model = build_train_model(cfg, get_stage(3)).float()
    assert registry.names()[-1] == "count" and "count" in model.heads
    mllm = model.mllm
    k = mllm.task_tokens.index("count")
    assert mllm.tokenizer.convert_tokens_to_ids("<count>") == mllm.task_tokens.ids.content[k]
    assert mllm.task_tokens.content.shape[0] == 4  # a learned vector for <count> too
    collator = build_collator(cfg.model, mllm)
    img = cfg.model.vision.img_size
    counts = [1, 2, 3, 1]
    samples = [_sample(f"{c}. <count_begin><count>", normalize_frames(squares(c), img), i)
               for i, c in enumerate(counts)]  # fmt: skip
    samples.append(_sample("Some squares.", normalize_frames(squares(2), img), 4))  # text only
    batch = collate(samples, collator)
    assert [t.get("count", {}).get("count") for t in batch.targets[:4]] == counts
    assert batch.targets[4] == {}
    model.lm_weight = 0.0  # the count loss alone: its gradients reach the query's embedding
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for step in range(15):
        opt.zero_grad()
        out = model(batch)
        out["loss"].backward()
        if step == 0:
            head_grad = sum(float(p.grad.abs().sum()) for p in model.heads["count"].parameters())
            token_grad = mllm.task_tokens.content.grad
            assert head_grad > 0
            assert float(token_grad[k].abs().sum()) > 0, "<count>'s embedding learns"
            assert float(token_grad[:k].abs().sum()) == 0, "no other head fired"
        opt.step()
        losses.append(float(out["loss/count/loss_ce"]))
    assert losses[-1] < 0.5 * losses[0], losses

    pipe = TPOPipeline(model, collator, num_frames=cfg.data.num_frames, img_size=img)
    begin = mllm.task_tokens.ids.begin[k]
    ans = pipe.ask(squares(2), "How many squares?", max_new_tokens=4, decoding=ForceBegin(begin))
    assert ans.heads == ["count"]
    assert ans.outputs["count"]["count"] in range(MAX_COUNT + 1)
    back = GroundedAnswer.from_json(json.loads(json.dumps(ans.to_json())))
    assert back.outputs == ans.outputs and back.heads == ["count"]
