"""The Python inference API: `tpo.load(folder)` -> `TPOPipeline`; `.ask(video, question)` ->
`GroundedAnswer` (text, heads fired, time windows in seconds, pixel boxes, mask tracks).

>>> pipe = tpo.load("outputs/stage3/final")
>>> ans = pipe.ask("data/toyworld/videos/toy_00000.mp4", "When does the red circle appear?")
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tpo.data.video import FrameSource, VideoError, load_video, normalize_frames, open_source
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack, TimeWindow
from tpo.infer.predict import asked_frame_patches, run_temporal_head
from tpo.model.mllm import HEADS
from tpo.model.prompt import PromptCollator, Turn

# "at 3 s", "at 2.5 seconds", "at 4sec": the time a region/mask question asks about
_AT_TIME = re.compile(r"\bat\s+(\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE)


def parse_time(question: str) -> float | None:
    """The seconds named by "at X s" in `question` (the first such phrase), else None."""
    m = _AT_TIME.search(question)
    return float(m.group(1)) if m else None


def nearest_frame(times: np.ndarray, at: float | None, default: int) -> int:
    """Position in `times` `[f]` (seconds) nearest to `at`; `default` when `at` is None."""
    if at is None:
        return default
    return int(np.abs(np.asarray(times, dtype=np.float64) - at).argmin())


@dataclass
class VideoInput:
    """One decoded question video: the opened `source`, sampled frame `indices` `[f]` and their
    normalised `frames` `[f, 3, S, S]`; `size` (H, W) of the video; `path` is set when the source is a file."""

    source: FrameSource
    indices: np.ndarray
    frames: torch.Tensor
    size: tuple[int, int]
    path: str | None = None

    @property
    def fps(self) -> float:
        """Frame rate of the source."""
        return float(self.source.fps)

    @property
    def duration(self) -> float:
        """Seconds of the whole source (an image: 1 / fps)."""
        return float(self.source.duration)

    @property
    def times(self) -> np.ndarray:
        """`[f]` seconds of the sampled frames."""
        return self.indices / self.fps

    def raw(self, indices: np.ndarray | None = None) -> torch.Tensor:
        """uint8 frames `[k, 3, H, W]` at the video's resolution (default: the sampled ones)."""
        return self.source.read(self.indices if indices is None else indices)


@dataclass
class Timings:
    """Seconds spent by the last `ask_batch`: decoding video, generating (vision + LLM), heads."""

    decode: float = 0.0
    generate: float = 0.0
    heads: float = 0.0
    new_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class TPOPipeline:
    """A loaded TPOModel with its prompt collator; answers grounded questions about videos.

    `num_frames`: frames the LLM sees per video (the config's `data.num_frames`);
    `img_size`: the vision encoder's input size; `ensemble_k`: K of `ask(ensemble=True)`.
    """

    def __init__(
        self,
        model,
        collator: PromptCollator,
        *,
        num_frames: int,
        img_size: int,
        ensemble_k: int = 3,
    ) -> None:
        self.model = model.eval()
        self.collator = collator
        self.num_frames = num_frames
        self.img_size = img_size
        self.ensemble_k = ensemble_k
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
        clip = load_video(src, num_frames or self.num_frames, img_size=self.img_size)
        file = str(video) if isinstance(video, str | Path) and Path(video).is_file() else None
        return VideoInput(src, np.asarray(clip.indices), clip.frames, clip.orig_size, file)

    def ask(
        self,
        video,
        question: str,
        *,
        num_frames: int | None = None,
        max_new_tokens: int = 64,
        history: Sequence[tuple[str, str]] | None = None,
        ensemble: int | None = None,
        ensemble_temperature: float = 0.7,
        ensemble_score: str = "logp",
        seed: int | None = None,
    ) -> GroundedAnswer:
        """Answer `question` about `video`; `history` [(question, answer), ...] for multi-turn chat.

        `ensemble` K (True: `self.ensemble_k`): the POPEN preference ensemble
        (tpo.popen.ensemble_infer): K responses sampled at `ensemble_temperature` (under `seed`),
        scored by `ensemble_score` ("logp": mean token log-prob; "dpo": implicit DPO reward vs
        the LLM without LoRA). The answer is the best-scored response (text, temporal and region
        heads); only the mask head takes the preference-attention combination of the responses'
        `<tracking>` embeddings. `GroundedAnswer.ensemble` records K, the scores and the texts.
        """
        return self.ask_batch(
            [(video, question)], num_frames=num_frames, max_new_tokens=max_new_tokens,
            histories=[list(history or [])], ensemble=ensemble,
            ensemble_temperature=ensemble_temperature, ensemble_score=ensemble_score, seed=seed,
        )[0]  # fmt: skip

    @torch.no_grad()
    def ask_batch(
        self,
        pairs: Sequence[tuple[object, str]],
        *,
        num_frames: int | None = None,
        max_new_tokens: int = 64,
        histories: Sequence[Sequence[tuple[str, str]]] | None = None,
        ensemble: int | None = None,
        ensemble_temperature: float = 0.7,
        ensemble_score: str = "logp",
        seed: int | None = None,
    ) -> list[GroundedAnswer]:
        """Answer (video, question) pairs as padded batches (one per frame count: images and
        videos do not share one); greedy answers equal those of `ask` one by one. The ensemble
        arguments are those of `ask` (a seeded ensemble repeats for the same batch)."""
        from tpo.popen.ensemble_infer import EnsembleOptions, ensemble_answers, resolve_k

        n_ens = resolve_k(ensemble, self.ensemble_k)
        opts = None
        if n_ens is not None:
            opts = EnsembleOptions(n_ens, ensemble_temperature, ensemble_score, seed=seed)
        pairs = list(pairs)
        if not pairs:
            raise ValueError("ask_batch: expected at least one (video, question) pair")
        histories = list(histories) if histories is not None else [[] for _ in pairs]
        if len(histories) != len(pairs):
            raise ValueError(f"ask_batch: {len(histories)} histories for {len(pairs)} pairs")
        for k, item in enumerate(pairs):
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(f"ask_batch: pair {k} must be (video, question), got {item!r}")
            _check_question(item[1], k)
        self.timings = Timings()
        t0 = time.perf_counter()
        inputs = [self.load_input(v, num_frames) for v, _ in pairs]
        self.timings.decode = time.perf_counter() - t0
        answers: list[GroundedAnswer | None] = [None] * len(pairs)
        groups: dict[int, list[int]] = {}
        for k, inp in enumerate(inputs):
            groups.setdefault(len(inp.indices), []).append(k)
        for rows in groups.values():
            turns = [Turn(pairs[k][1], None, list(histories[k])) for k in rows]
            text = self.collator.prompts(turns)
            frames = torch.stack([inputs[k].frames for k in rows]).to(self.device, self.dtype)
            t0 = time.perf_counter()
            prompt = (frames, text.input_ids.to(self.device), text.attention_mask.to(self.device))
            records = None
            if opts is None:
                gen = self.model.mllm.generate(*prompt, max_new_tokens=max_new_tokens)
            else:
                gen, records = ensemble_answers(self.model.mllm, *prompt, opts, max_new_tokens)
            t1 = time.perf_counter()
            self.timings.generate += t1 - t0
            self.timings.new_tokens += sum(len(ids) for ids in gen.token_ids)
            grounded = self.ground(gen, [inputs[k] for k in rows], [pairs[k][1] for k in rows])
            self.timings.heads += time.perf_counter() - t1
            for j, (k, ans) in enumerate(zip(rows, grounded)):
                ans.ensemble = None if records is None else records[j]
                answers[k] = ans
        return answers  # type: ignore[return-value]

    def ground(
        self, gen, inputs: Sequence[VideoInput], questions: Sequence[str]
    ) -> list[GroundedAnswer]:
        """Run the heads on a `GenerationOutput`'s content-token queries: one answer per input.

        A region box is on the question's frame ("at X s", else the middle sampled frame), in
        pixels of the video; a mask track covers the sampled frames, prompted on the question's
        frame (else the first); temporal windows are in seconds of the whole video.
        """
        answers = [
            GroundedAnswer(text=t, video=inp.path, duration=inp.duration, fps=inp.fps)
            for t, inp in zip(gen.text, inputs)
        ]
        device, dtype = self.device, self.dtype
        for k in range(len(gen.task_head)):
            i, name = int(gen.task_sample[k]), HEADS[int(gen.task_head[k])]
            ans, inp = answers[i], inputs[i]
            if name not in ans.heads:
                ans.heads.append(name)
            if name not in self.model.heads:
                continue
            query = gen.task_hidden[k : k + 1].to(device, dtype)
            if name == "temporal" and not ans.windows:
                self._temporal(query, inp, ans)
            elif name == "region":
                f = nearest_frame(inp.times, parse_time(questions[i]), len(inp.indices) // 2)
                ans.boxes.append(self._region(query, gen, i, f, inp))
            elif name == "mask" and ans.masks is None:
                f = nearest_frame(inp.times, parse_time(questions[i]), 0)
                masks = self.model.heads["mask"].propagate(query[0], inp.raw(), prompt_frame=f)
                ans.masks = MaskTrack(masks.cpu().numpy(), inp.indices, inp.fps)
        return answers

    def temporal_features(self, inp: VideoInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal-head features `[t, d]` and their times `[t]` s over the whole video."""
        from tpo.heads.temporal_features import sample_feature_times

        cache = self.model.temporal_features
        if inp.path is not None:
            return cache(inp.path, inp.duration)
        # not a file (reader or tensor): the cache keys by path, so encode directly
        times = sample_feature_times(inp.duration, cache.feat_fps, cache.max_feats)
        idx = np.clip(
            np.round(times.numpy() * inp.fps).astype(np.int64), 0, inp.source.num_total - 1
        )
        frames = normalize_frames(inp.raw(idx), self.img_size).to(self.device, self.dtype)
        return cache.encode(frames).float().cpu(), times

    def _temporal(self, query: torch.Tensor, inp: VideoInput, ans: GroundedAnswer) -> None:
        feats, stamps = self.temporal_features(inp)
        wins, saliency = run_temporal_head(self.model, query, feats, stamps, inp.duration)
        ans.windows = [TimeWindow(s, e, sc) for s, e, sc in wins]
        ans.saliency = np.asarray(saliency)
        ans.saliency_times = stamps.numpy()[: len(ans.saliency)]

    def _region(self, query, gen, i: int, f: int, inp: VideoInput) -> BoxPrediction:
        patches = asked_frame_patches(self.model, gen, i, f)
        norm = self.model.heads["region"](query, patches).boxes[0].float().clamp(0, 1).cpu()
        h, w = inp.size
        box = (norm * torch.tensor([w, h, w, h], dtype=torch.float32)).tolist()
        idx = int(inp.indices[f])
        return BoxPrediction(tuple(box), idx, idx / inp.fps)

    def track(self, video, box_xyxy: Sequence[float], frame: int = 0) -> GroundedAnswer:
        """Track the object in pixel `box_xyxy` of video frame `frame` over all frames (the
        `<track_box>` path): masks (MaskTrack) and one box per frame where the object is seen."""
        mask_head = self.model.heads["mask"] if "mask" in self.model.heads else None
        if mask_head is None or not hasattr(mask_head, "track_from_box"):
            raise ValueError("track: this model has no mask head (config model.heads.mask is null)")
        inp = self.load_input(video, 1)
        n = inp.source.num_total
        if not 0 <= frame < n:
            raise ValueError(f"track: frame {frame} outside [0, {n}) of {inp.source.name}")
        indices = np.arange(n)
        result = mask_head.track_from_box(inp.raw(indices), box_xyxy, frame)
        masks = result.masks.cpu().numpy()
        boxes = [
            BoxPrediction(tuple(b), int(j), j / inp.fps)
            for j, b in enumerate(result.boxes.float().tolist())
            if not np.isnan(b).any()
        ]
        return GroundedAnswer(
            text="", heads=["mask"], boxes=boxes, masks=MaskTrack(masks, indices, inp.fps),
            video=inp.path, duration=inp.duration, fps=inp.fps,
        )  # fmt: skip


def _check_question(question: object, k: int = 0) -> None:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question {k}: expected a non-empty string, got {question!r}")


def load(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TPOPipeline:
    """A TPOPipeline from an inference folder (config.yaml + model.safetensors) or a training
    checkpoint folder; local files only."""
    from tpo.config import TPOConfig, load_config
    from tpo.model.build import build_collator
    from tpo.train.export import load_inference_model

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} is not a tpo checkpoint: no config.yaml inside it (expected an inference "
            "folder from `tpo export` or a training checkpoint folder)"
        )
    cfg = load_config(TPOConfig, [folder / "config.yaml"])
    model = load_inference_model(folder, device, dtype)
    collator = build_collator(cfg.model, model.mllm)
    from tpo.popen.ensemble_infer import default_k

    return TPOPipeline(
        model, collator, num_frames=cfg.data.num_frames, img_size=cfg.model.vision.img_size,
        ensemble_k=default_k(cfg),
    )  # fmt: skip
