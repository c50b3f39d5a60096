"""The preference pairs of a POPEN micro-batch: textual (P_t) and segmentation (P_s) groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TextualPairs:
    """m textual pairs whose media have one frame count.

    frames `[m, f, 3, H, W]` (shared by the chosen and rejected row of a pair);
    input_ids / attention_mask / labels `[2m, s]`: rows :m the chosen answers y_c, rows m: the
    rejected answers y of the same pairs; edit_mask `[2m, s]` bool: the edited answer tokens
    (L_yc on chosen rows, L_y on rejected rows); sources: file:line of each pair.
    """

    frames: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    edit_mask: torch.Tensor
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> TextualPairs:
        """Move to `device`; frames take the compute `dtype`."""
        return TextualPairs(
            self.frames.to(device, dtype),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.edit_mask.to(device),
            list(self.sources),
        )


@dataclass
class SegPairs:
    """n segmentation pairs over u clean inputs of one frame count.

    frames `[u, f, 3, H, W]`, input_ids / attention_mask `[u, s]`: the clean prompt + answer
    of each preference sample; ids: their sample ids; rows `[n]` long: the clean row of each
    pair; h_w, h_l `[n, d_llm]` float32: the collected embeddings of its winner and loser.
    """

    frames: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    h_w: torch.Tensor
    h_l: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> SegPairs:
        """Move to `device`; frames take the compute `dtype`, embeddings stay float32."""
        return SegPairs(
            self.frames.to(device, dtype),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.rows.to(device),
            self.h_w.to(device),
            self.h_l.to(device),
            list(self.ids),
        )
