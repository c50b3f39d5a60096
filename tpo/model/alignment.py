"""Video-text contrastive alignment of the visual tokens with the LLM's word embeddings.

VideoChat2 aligns its vision side before instruction tuning (its stage 1: video-text
contrastive, matching and captioning losses), and TPO starts from those aligned weights. A
model whose vision encoder and Q-Former start random (the tiny toy-world model) has no such
start, and the LM loss alone does not teach a random Q-Former which patches matter. This loss
gives it the missing signal: the mean visual token of each video is pulled towards the mean
input embedding of the words that answer a question about it, against the other videos of the
batch (InfoNCE in both directions, as CLIP and VideoChat2's VTC). The word embeddings are the
fixed target (detached), so the connector learns to speak in the LLM's input space.

Written here because the libraries' contrastive losses (e.g. CLIP's) take one positive per row;
answers repeat within a batch ("Green."), and all rows with the same answer are positives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tpo.model.prompt import IGNORE_INDEX


class VideoTextAlignment(nn.Module):
    """`(visual [b, q, d], labels [b, s], embed) -> scalar` contrastive loss over the batch.

    Rows take part when they have video and an answer without task tokens (a task answer such as
    "It is here: <box_begin><boxes>." names the task, not the video). With fewer than two
    different answers among them the loss is an exact zero that still reaches `visual`.
    """

    def __init__(self, task_token_ids: tuple[int, ...], temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"alignment temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.register_buffer("task_ids", torch.tensor(task_token_ids), persistent=False)

    def forward(
        self, visual: Tensor, labels: Tensor, embed: nn.Module, has_video: Tensor | None = None
    ) -> Tensor:
        """visual [b, q, d]; labels [b, s] (IGNORE_INDEX off the answer); embed: ids -> [.., d];
        has_video [b] bool (default all)."""
        answer = labels != IGNORE_INDEX  # [b, s]
        has_task = torch.isin(labels, self.task_ids.to(labels.device)).any(1)
        rows = answer.any(1) & ~has_task
        if has_video is not None:
            rows &= has_video.to(rows.device)
        idx = rows.nonzero()[:, 0]
        texts = [tuple(labels[i][answer[i]].tolist()) for i in idx.tolist()]
        index = {t: k for k, t in enumerate(dict.fromkeys(texts))}  # answer -> its number
        if len(index) < 2:
            return visual.float().sum() * 0.0
        with torch.no_grad():
            ids = labels[idx].clamp(min=0)
            weight = answer[idx].unsqueeze(-1).float()  # [n, s, 1]
            words = (embed(ids).float() * weight).sum(1) / weight.sum(1)  # [n, d]
            text = F.normalize(words, dim=-1)
        video = F.normalize(visual[idx.to(visual.device)].float().mean(1), dim=-1)  # [n, d]
        logits = video @ text.to(video.device).T / self.temperature  # [n, n]
        answer_id = torch.tensor([index[t] for t in texts], device=logits.device)
        same = (answer_id[:, None] == answer_id[None, :]).float()  # symmetric: rows = columns
        target = same / same.sum(1, keepdim=True)
        to_text = -(target * logits.log_softmax(1)).sum(1).mean()
        to_video = -(target * logits.log_softmax(0)).sum(0).mean()
        return (to_text + to_video) / 2
