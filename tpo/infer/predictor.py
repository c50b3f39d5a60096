"""The one predictor: (video, question[, history]) -> `GroundedAnswer`.

`Predictor(model, collator, ...)` prompts the MLLM through a decoding strategy
(`tpo.infer.decoding`: Greedy, Sampling, `tpo.infer.ensemble.PreferenceEnsemble`), then runs
every head that fired on its queries through the `TaskHead` protocol and merges their answer
parts. `TPOPipeline.ask` / `ask_batch`, the benchmark runners, the learning bench and POPEN's
evaluation all answer through `Predictor.answer`; evaluation options (given mask frames, a fixed
asked frame) are per-question `AskOptions` of that same path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tpo.data.video import (
    FrameSource,
    VideoError,
    frames_at,
    load_video,
    open_source,
)
from tpo.heads.temporal_features import sample_feature_times
from tpo.infer.answer import GroundedAnswer
from tpo.infer.decoding import Decoding, Greedy
from tpo.model.prompt import PromptCollator, Turn
from tpo.model.task_head import HeadSample
from tpo.model.tpo_model import TPOModel

# "at 3 s", "at 2.5 seconds", "at 4sec": the time a region/mask question asks about
_AT_TIME = re.compile(r"\bat\s+(\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE)


def parse_time(question: str) -> float | None:
    """The seconds named by "at X s" in `question` (the first such phrase), else None."""
    m = _AT_TIME.search(question)
    return float(m.group(1)) if m else None


def nearest_frame(times: np.ndarray, at: float | None, default: int | None) -> int | None:
    """Position in `times` `[f]` (seconds) nearest to `at`; `default` when `at` is None."""
    if at is None:
        return default
    return int(np.abs(np.asarray(times, dtype=np.float64) - at).argmin())


@dataclass
class VideoInput:
    """One decoded question video: the opened `source`, sampled frame `indices` `[f]` and their
    normalised `frames` `[f, 3, S, S]`; `size` (H, W) of the video; `path` is set when the source
    is a file. A question about a clip sets `clip_start` s and `clip_duration` s."""

    source: FrameSource
    indices: np.ndarray
    frames: torch.Tensor
    size: tuple[int, int]
    path: str | None = None
    clip_start: float = 0.0
    clip_duration: float | None = None

    @property
    def fps(self) -> float:
        """Frame rate of the source."""
        return float(self.source.fps)

    @property
    def duration(self) -> float:
        """Seconds of the clip (default: the whole source; an image: 1 / fps)."""
        return float(self.clip_duration or self.source.duration)

    @property
    def times(self) -> np.ndarray:
        """`[f]` seconds of the sampled frames."""
        return self.indices / self.fps

    def raw(self, indices: np.ndarray | None = None) -> torch.Tensor:
        """uint8 frames `[k, 3, H, W]` at the video's resolution (default: the sampled ones)."""
        return self.source.read(self.indices if indices is None else indices)


@dataclass
class AskOptions:
    """Evaluation options of one question: `asked_frame`, the position in the sampled frames of
    the frame it asks about (None: "at X s" in the question, else each head's default);
    `mask_frames` uint8 `[k, 3, H, W]` frames a mask head propagates through instead of the
    sampled ones, at video frames `mask_frame_indices` `[k]`; `qid`: the question's id (npz
    query features are keyed by it); `video_features` `[t, d]` / `query_features` `[l, d]`
    float32: features of this question that CG-DETR reads instead of its sources'."""

    asked_frame: int | None = None
    mask_frames: torch.Tensor | None = None
    mask_frame_indices: np.ndarray | None = None
    qid: str | None = None
    video_features: torch.Tensor | None = None
    query_features: torch.Tensor | None = None


@dataclass
class Timings:
    """Seconds spent by the last `answer`: decoding video, generating (vision + LLM), heads."""

    decode: float = 0.0
    generate: float = 0.0
    heads: float = 0.0
    new_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A TPOModel + its prompt collator answering grounded questions (see the module docstring).

    `num_frames`: frames the LLM sees per video; `img_size`: the vision encoder's input size;
    `resize`: the frame resize kernel (`tpo.data.video.RESIZE_MODES`, the config's
    `model.vision.resize`); `decoding`: the default strategy (greedy).
    """

    def __init__(
        self,
        model: TPOModel,
        collator: PromptCollator,
        *,
        num_frames: int,
        img_size: int,
        resize: str = "uint8",
        decoding: Decoding | None = None,
    ) -> None:
        self.model = model.eval()
        self.collator = collator
        self.num_frames, self.img_size, self.resize = num_frames, img_size, resize
        self.decoding: Decoding = decoding or Greedy()
        self.timings = Timings()

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the LLM."""
        return next(self.model.mllm.llm.parameters()).dtype

    def load_input(self, video, num_frames: int | None = None) -> VideoInput:
        """Open and sample `video` (path, image path, decord VideoReader or frames `[f, 3, H, W]`)."""
        if isinstance(video, str | Path):
            path = Path(video)
            if not path.exists():
                raise VideoError(f"{path}: no such video or image file", "missing")
        src = open_source(video)
        clip = load_video(
            src, num_frames or self.num_frames, img_size=self.img_size, resize=self.resize
        )
        path = str(video) if isinstance(video, str | Path) and Path(video).is_file() else None
        return VideoInput(src, np.asarray(clip.indices), clip.frames, clip.orig_size, path)

    def pooled_head(self) -> int | None:
        """Head index of the first built head a multi-response decoding may pool, else None."""
        for name, head in self.model.heads.items():
            if getattr(head, "poolable", False):
                return self.model.mllm.task_tokens.index(name)
        return None

    @torch.no_grad()
    def answer(
        self,
        inputs: Sequence[VideoInput],
        questions: Sequence[str],
        histories: Sequence[Sequence[tuple[str, str]]] | None = None,
        *,
        options: Sequence[AskOptions | None] | None = None,
        decoding: Decoding | None = None,
        max_new_tokens: int = 64,
    ) -> list[GroundedAnswer]:
        """One answer per (input, question) as padded batches (one per frame count: images and
        videos do not share one); greedy answers equal those of one call per question."""
        n = len(inputs)
        if len(questions) != n:
            raise ValueError(f"Predictor.answer: {len(questions)} questions for {n} inputs")
        histories = list(histories) if histories is not None else [[] for _ in range(n)]
        opts = list(options) if options is not None else [None] * n
        if len(histories) != n or len(opts) != n:
            raise ValueError(f"Predictor.answer: expected {n} histories and options")
        decode = decoding or self.decoding
        answers: list[GroundedAnswer | None] = [None] * n
        groups: dict[int, list[int]] = {}
        for k, inp in enumerate(inputs):
            groups.setdefault(len(inp.indices), []).append(k)
        for rows in groups.values():
            text = self.collator.prompts(
                [
                    Turn(questions[k], None, list(histories[k]), frame_times=inputs[k].times)
                    for k in rows
                ]
            )
            frames = torch.stack([inputs[k].frames for k in rows]).to(self.device, self.dtype)
            t0 = time.perf_counter()
            out = decode(
                self.model.mllm, frames, text.input_ids.to(self.device),
                text.attention_mask.to(self.device), max_new_tokens=max_new_tokens,
                pooled=self.pooled_head(),
            )  # fmt: skip
            t1 = time.perf_counter()
            self.timings.generate += t1 - t0
            self.timings.new_tokens += sum(len(ids) for ids in out.gen.token_ids)
            grounded = self.ground(
                out.gen,
                [inputs[k] for k in rows],
                [questions[k] for k in rows],
                [opts[k] for k in rows],
            )
            self.timings.heads += time.perf_counter() - t1
            for j, (k, ans) in enumerate(zip(rows, grounded)):
                ans.ensemble = None if out.records is None else out.records[j]
                answers[k] = ans
        return answers  # type: ignore[return-value]

    def answer_samples(
        self,
        samples: Sequence,
        questions: Sequence[str],
        *,
        options: Sequence[AskOptions | None] | None = None,
        decoding: Decoding | None = None,
        max_new_tokens: int = 64,
    ) -> list[GroundedAnswer]:
        """`answer` for `tpo.data.dataset.Sample`s (their decoded frames and clips): the form
        the benchmark runners and the learning bench call."""
        return self.answer(
            [sample_input(s) for s in samples], questions, options=options, decoding=decoding,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip

    def ground(
        self,
        gen,
        inputs: Sequence[VideoInput],
        questions: Sequence[str],
        options: Sequence[AskOptions | None] | None = None,
    ) -> list[GroundedAnswer]:
        """Run the heads on a `GenerationOutput`'s queries: one answer per input.

        Each head fired gets its queries with the HeadSample of their input; a head with `once`
        answers a sample's first query only. Windows are in seconds of the video, boxes in its
        pixels on the asked frame, mask tracks over the sampled (or given) frames.
        """
        options = list(options) if options is not None else [None] * len(inputs)
        answers = [
            GroundedAnswer(
                text=t, video=inp.path, duration=inp.duration, fps=inp.fps, token_ids=list(ids)
            )
            for t, ids, inp in zip(gen.text, gen.token_ids, inputs)
        ]
        names = self.model.mllm.task_tokens.names
        for k in range(len(gen.task_head)):  # heads fired, in order of first firing
            ans = answers[int(gen.task_sample[k])]
            name = names[int(gen.task_head[k])]
            if name not in ans.heads:
                ans.heads.append(name)
        samples = [self.head_sample(i, q, o) for i, q, o in zip(inputs, questions, options)]
        gen.task_hidden = gen.task_hidden.to(self.device, self.dtype)
        for name, (queries, _) in self.model.route(gen, samples).items():
            head = self.model.heads[name]
            seen: set[int] = set()
            for j, row in enumerate(queries.rows):
                if head.once and row in seen:
                    continue
                seen.add(row)
                (part,) = head.predict(queries.select(j))
                answers[row].add(name, part)
        return answers

    def head_sample(
        self, inp: VideoInput, question: str, opt: AskOptions | None = None
    ) -> HeadSample:
        """What the heads may read about one question video."""
        opt = opt or AskOptions()
        asked = opt.asked_frame
        if asked is None:
            asked = nearest_frame(inp.times, parse_time(question), None)
        return HeadSample(
            duration=inp.duration,
            clip_start=inp.clip_start,
            video=inp.path,
            asked_frame=asked,
            frame_features=self.frame_features(inp),
            read_frames=inp.raw,
            frame_indices=inp.indices,
            video_frames=inp.source.num_total,
            mask_frames=opt.mask_frames,
            mask_frame_indices=opt.mask_frame_indices,
            fps=inp.fps,
            size=inp.size,
            question=question,
            query_ids=self.collator.text_ids([question])[0],
            qid=opt.qid,
            video_features=opt.video_features,
            query_features=opt.query_features,
        )

    def frame_features(self, inp: VideoInput):
        """`() -> (feats [t, d], times [t] s of the clip)` of `inp` from the model's per-frame
        feature source (None without one); a source that is not a file is encoded directly."""
        cache = self.model.temporal_features
        if cache is None:
            return None

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            end = inp.clip_start + inp.duration
            if inp.path is not None:
                feats, times = cache(inp.path, end)
                return feats, times - inp.clip_start

            # not a file (reader or tensor): the cache keys by path, so encode directly
            times = sample_feature_times(end, cache.feat_fps, cache.max_feats)
            frames = frames_at(inp.source, times, self.img_size, resize=self.resize)
            frames = frames.to(self.device, self.dtype)
            return cache.encode(frames).float().cpu(), times - inp.clip_start

        return compute


def sample_input(sample, size: tuple[int, int] | None = None) -> VideoInput:
    """The VideoInput of a `tpo.data.dataset.Sample` (its frames, clip and source)."""
    src = open_source(sample.record.video)
    if size is None:
        size = tuple(src.read(np.asarray(sample.indices[:1])).shape[-2:])
    return VideoInput(
        src, np.asarray(sample.indices), sample.frames, size, sample.record.video,
        clip_start=sample.clip_start, clip_duration=sample.duration,
    )  # fmt: skip
