"""Video-text contrastive alignment: values by hand, positives, skipped rows, gradients, learning."""

import math

import pytest
import torch
from torch import nn

from tpo.model.alignment import VideoTextAlignment
from tpo.model.prompt import IGNORE_INDEX

TASK = (7, 8)  # stand-in task-token ids


def _embed() -> nn.Embedding:
    """Token 5 -> [1, 0], token 6 -> [0, 1], token 7 (a task token) -> [1, 1]."""
    emb = nn.Embedding(10, 2)
    with torch.no_grad():
        emb.weight.zero_()
        emb.weight[5] = torch.tensor([1.0, 0.0])
        emb.weight[6] = torch.tensor([0.0, 1.0])
        emb.weight[7] = torch.tensor([1.0, 1.0])
    return emb


def _labels(*answers: list[int], length: int = 4) -> torch.Tensor:
    rows = [[IGNORE_INDEX] * (length - len(a)) + a for a in answers]
    return torch.tensor(rows)


def test_two_videos_two_answers_match_the_hand_value():
    loss = VideoTextAlignment(TASK, temperature=0.5)
    visual = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]]])  # [b=2, q=1, d=2]: norms do not matter
    got = loss(visual, _labels([5], [6]), _embed())
    # logits [[1, 0], [0, 1]] / 0.5: each row and column is -log(e^2 / (e^2 + 1))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)


def test_equal_answers_are_positives_of_each_other():
    loss = VideoTextAlignment(TASK, temperature=1.0)
    visual = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    got = loss(visual, _labels([5, 6, 5], [6], [5, 6, 5]), _embed())
    # text of rows 0 and 2: mean([1,0],[0,1],[1,0]) -> direction (2, 1)/sqrt(5); row 1: (0, 1)
    a, b = 2 / math.sqrt(5), 1 / math.sqrt(5)
    logits = torch.tensor([[a, 0.0, a], [b, 1.0, b], [a, 0.0, a]])
    same = torch.tensor([[0.5, 0, 0.5], [0, 1.0, 0], [0.5, 0, 0.5]])
    rows = -(same * logits.log_softmax(1)).sum(1).mean()
    cols = -(same * logits.log_softmax(0)).sum(0).mean()
    assert got.item() == pytest.approx(((rows + cols) / 2).item(), abs=1e-6)


def test_task_answers_and_rows_without_video_are_left_out():
    loss = VideoTextAlignment(TASK, temperature=0.5)
    visual = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]], [[5.0, -1.0]], [[1.0, 1.0]]])
    labels = _labels([5], [6], [5, 7], [6])
    has_video = torch.tensor([True, True, True, False])
    got = loss(visual, labels, _embed(), has_video)
    # row 2 answers with a task token and row 3 has no video: as the two-row case
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)


def test_one_answer_only_gives_an_exact_zero_that_still_reaches_the_tokens():
    visual = torch.randn(3, 2, 2, requires_grad=True)
    got = VideoTextAlignment(TASK)(visual, _labels([5], [5], [6, 7]), _embed())
    assert got.item() == 0.0
    got.backward()
    assert visual.grad is not None and visual.grad.abs().sum() == 0


def test_gradient_reaches_the_visual_tokens_but_not_the_word_embeddings():
    emb = _embed()
    visual = torch.randn(2, 3, 2, requires_grad=True)
    VideoTextAlignment(TASK)(visual, _labels([5], [6]), emb).backward()
    assert visual.grad.abs().sum() > 0
    assert emb.weight.grad is None


def test_a_projection_learns_to_align_videos_with_their_answers():
    torch.manual_seed(0)
    words = nn.Embedding(12, 16)
    answers = torch.arange(4) + 5  # four answers, one per video class
    videos = torch.randn(4, 6, 8)  # [class, q, d_v] fixed video features
    proj = nn.Linear(8, 16)
    loss_fn = VideoTextAlignment((), temperature=0.1)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    history = []
    for _ in range(100):
        pick = torch.randint(4, (8,))
        noisy = videos[pick] + 0.1 * torch.randn(8, 6, 8)
        labels = _labels(*[[int(answers[k])] for k in pick], length=2)
        loss = loss_fn(proj(noisy), labels, words)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # the least it can be: log(#positives) per row, all positives equally likely
        floor = torch.log((pick[:, None] == pick[None, :]).sum(1).float()).mean()
        history.append(loss.item() - floor.item())
    assert sum(history[-10:]) / 10 < 0.1 * sum(history[:10]) / 10
    with torch.no_grad():  # each video's nearest answer is its own
        video = nn.functional.normalize(proj(videos).mean(1), dim=-1)
        text = nn.functional.normalize(words(answers), dim=-1)
        assert torch.equal((video @ text.T).argmax(1), torch.arange(4))


def test_bad_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        VideoTextAlignment(TASK, temperature=0.0)
