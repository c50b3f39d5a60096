"""The `TaskHead` protocol: what a head declares and the one way the model calls it.

A head is an `nn.Module` subclass of `TaskHead` declaring
- `name` and `tokens` (begin, content): the task pair that routes an answer to it;
- the inputs it reads, by picking them in `gather(queries)` from a `HeadQueries`: the content
  tokens' hidden states and, per query, the `HeadSample` of its batch row (the encoder's patches
  of the asked frame, per-frame features, raw or given frames, duration...);
- `run(hidden, inputs)`: the head's forward on those inputs (training and inference alike);
- `targets_from(sample)`: the targets (and extra per-row inputs) a training sample gives it,
  built in the data-loader workers by `tpo.train.data.collate`;
- `criterion()`: its loss module (a dict of named losses + `weight_dict`), built for training;
- `prepare_targets(targets, inputs)`: targets re-expressed on the inputs it gathered (identity
  by default); it runs after `gather` and before `run`, and may add target-derived inputs that
  the training forward reads (CG-DETR's clips inside the moments);
- `predict(queries)` / `postprocess(output, queries, inputs)`: at inference, one answer part per query,
  a dict of answer fields (the built-in heads fill `GroundedAnswer`'s typed fields; any other
  key lands in `GroundedAnswer.outputs[name]`).

The training forward (`TPOModel`), the criterion, the predictor and the answer all loop over
the heads through these methods; none of them names a head. Heads are listed in
`tpo.heads.registry`, whose order is the head index of the content tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import Tensor, nn

from tpo.model.tokens import TaskPair

if TYPE_CHECKING:
    from tpo.config.schema import ModelConfig
    from tpo.data.dataset import Sample
    from tpo.model.vision import VisionOutput


@dataclass
class HeadSample:
    """What one batch row offers the heads; training and inference fill the same fields.

    duration: seconds of the clip the question is about, starting at `clip_start` s of the video;
    video: its path (a cache key), None when not a file; asked_frame: position in the `f`
    sampled frames of the frame the question asks about (None: the head's default);
    frame_features: computes per-frame features `[t, d]` (or `[t, p, d]`) and their times `[t]`
    in seconds of the clip (may lie outside [0, duration]); read_frames: uint8 sampled frames
    `[f, 3, H, W]` at the video's resolution (given video frame numbers `[k]`: those frames);
    frame_indices `[f]`: their video frame numbers; video_frames: frames in the whole video;
    mask_frames: uint8 `[k, 3, H, W]` frames a mask head predicts on (training: the annotated
    sampled frames; inference: frames given by an evaluation, else the sampled frames) with
    their video frame numbers `mask_frame_indices` `[k]`; fps and size (H, W) of the video;
    question: the question asked (inference); query_ids `[l]` int64: token ids of the
    question (training and inference; the LLM-embedding query source of CG-DETR reads them);
    qid: the annotation's question id (npz query features are keyed by it);
    video_features `[t, d]` / query_features `[l, d]`: features given for this one question
    (`ask(video_features=..., query_features=...)`), used instead of the head's sources.
    """

    duration: float
    clip_start: float = 0.0
    video: str | None = None
    asked_frame: int | None = None
    frame_features: Callable[[], tuple[Tensor, Tensor]] | None = None
    read_frames: Callable[..., Tensor] | None = None
    frame_indices: np.ndarray | None = None
    video_frames: int | None = None
    mask_frames: Tensor | None = None
    mask_frame_indices: np.ndarray | None = None
    fps: float | None = None
    size: tuple[int, int] | None = None
    question: str | None = None
    query_ids: Tensor | None = None
    qid: str | None = None
    video_features: Tensor | None = None
    query_features: Tensor | None = None


@dataclass
class HeadTargets:
    """What a training sample gives one head: its `targets` (the dict its criterion reads for
    that row) and, optionally, `mask_frames` uint8 `[k, 3, H, W]` frames the head predicts on
    (offered back as `HeadSample.mask_frames`)."""

    targets: dict[str, Any]
    mask_frames: Tensor | None = None


@dataclass
class HeadQueries:
    """The queries routed to one head: `hidden` `[m, d_llm]`, the batch row of each (`rows`),
    `samples[j]` the HeadSample of query j's row, and the batch's encoder output `vision`
    (patches `[b, f*p, d_v]`, None without frames)."""

    hidden: Tensor
    rows: list[int]
    samples: list[HeadSample]
    vision: VisionOutput | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, j: int) -> HeadQueries:
        """The view of query `j` alone."""
        return HeadQueries(self.hidden[j : j + 1], [self.rows[j]], [self.samples[j]], self.vision)


class TaskHead(nn.Module):
    """Base of every task head (see the module docstring for the protocol).

    Class attributes: `name`, `tokens`; `once`: at inference only a sample's first query of
    this head is answered (False: every query adds a part); `poolable`: a multi-response
    decoding (the preference ensemble) may pool this head's queries across responses.
    """

    name: ClassVar[str]
    tokens: ClassVar[tuple[str, str]]  # (begin, content), e.g. ("<time_begin>", "<temp>")
    once: ClassVar[bool] = True
    poolable: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_llm: int, d_vision: int) -> TaskHead | None:
        """The head `cfg` configures (None: not configured); widths of the LLM and encoder."""
        raise TypeError(f"{cls.__name__} must define from_config")

    @classmethod
    def targets_from(cls, sample: Sample) -> HeadTargets | None:
        """This head's targets in a training sample (None: the sample has none for it).

        Runs in the data-loader workers; the default reads `sample.targets[name]`, a dict a
        dataset reader may fill for heads the built-in readers do not know."""
        found = sample.targets.get(cls.name)
        return None if found is None else HeadTargets(dict(found))

    def bind(self, mllm: nn.Module) -> None:
        """Called once by `build_model` with the MLLM (a head reading the LLM's embeddings keeps
        a reference here, outside its own parameters); nothing by default."""

    def frame_feature_source(self, cfg: ModelConfig, mllm: nn.Module):
        """The per-frame feature source this head reads (`(video, duration) -> (feats [t, d],
        times [t])`, offered as `HeadSample.frame_features`), or None (the default)."""
        return None

    def gather(self, queries: HeadQueries) -> Any:
        """The inputs `run` needs for these queries (head-specific)."""
        return None

    def run(self, hidden: Tensor, inputs: Any) -> Any:
        """The head's forward on the queries `hidden` `[m, d_llm]` and gathered `inputs`."""
        return self(hidden)

    def criterion(self) -> nn.Module:
        """The head's loss: `(outputs, targets) -> dict of named losses`, with a `weight_dict`."""
        raise TypeError(f"{type(self).__name__} must define criterion()")

    def prepare_targets(self, targets: list[dict], inputs: Any) -> list[dict]:
        """Targets of the queries, expressed on what `gather` picked (identity by default)."""
        return targets

    def predict(self, queries: HeadQueries) -> list[dict[str, Any]]:
        """Inference: one answer part per query (gather, run, postprocess)."""
        inputs = self.gather(queries)
        return self.postprocess(self.run(queries.hidden, inputs), queries, inputs)

    def postprocess(self, output: Any, queries: HeadQueries, inputs: Any) -> list[dict[str, Any]]:
        """One answer part (answer field -> value, JSON-ready for non-built-in fields) per query."""
        raise TypeError(f"{type(self).__name__} must define postprocess()")

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """All parameters as one group `{name}_head`."""
        return {f"{self.name}_head": list(self.parameters())}


def head_pairs(heads: Sequence[type[TaskHead]]) -> list[TaskPair]:
    """The task pairs of head classes, in their order (their head indices)."""
    return [TaskPair(h.name, *h.tokens) for h in heads]
