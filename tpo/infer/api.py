"""The Python inference API: `tpo.load(folder)` -> `TPOPipeline`; `.ask(video, question)` ->
`GroundedAnswer` (text, heads fired, time windows in seconds, pixel boxes, mask tracks, and any
other head's outputs). The pipeline answers through the one predictor (`tpo.infer.predictor`).

>>> pipe = tpo.load("outputs/stage3/final")
>>> ans = pipe.ask("data/toyworld/videos/toy_00000.mp4", "When does the red circle appear?")
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tpo.config import TPOConfig, load_saved_config
from tpo.heads.cgdetr_features import as_features
from tpo.infer.answer import BoxPrediction, GroundedAnswer, MaskTrack
from tpo.infer.decoding import Decoding
from tpo.infer.ensemble import DEFAULT_K, EnsembleOptions, PreferenceEnsemble, default_k, resolve_k
from tpo.infer.load import load_inference_model
from tpo.infer.predictor import (
    AskOptions,
    Predictor,
    Timings,
    VideoInput,
    nearest_frame,
    parse_time,
)
from tpo.model.build import build_collator
from tpo.model.prompt import PromptCollator

__all__ = [
    "AskOptions", "GroundedAnswer", "TPOPipeline", "VideoInput", "load", "nearest_frame",
    "parse_time",
]  # fmt: skip


class TPOPipeline:
    """A loaded TPOModel with its prompt collator; answers grounded questions about videos.

    `num_frames`: frames the LLM sees per video (the config's `data.num_frames`);
    `img_size`: the vision encoder's input size; `resize`: the frame resize kernel
    (`model.vision.resize`); `ensemble_k`: K of `ask(ensemble=True)`.
    """

    def __init__(
        self,
        model,
        collator: PromptCollator,
        *,
        num_frames: int,
        img_size: int,
        resize: str = "uint8",
        ensemble_k: int = DEFAULT_K,
    ) -> None:
        self.predictor = Predictor(
            model, collator, num_frames=num_frames, img_size=img_size, resize=resize
        )
        self.ensemble_k = ensemble_k

    model = property(lambda self: self.predictor.model, doc="The TPOModel.")
    collator = property(lambda self: self.predictor.collator, doc="The prompt collator.")
    num_frames = property(lambda self: self.predictor.num_frames, doc="LLM frames per video.")
    img_size = property(lambda self: self.predictor.img_size, doc="Vision input size.")
    device = property(lambda self: self.predictor.device, doc="Device of the parameters.")
    dtype = property(lambda self: self.predictor.dtype, doc="Compute dtype of the LLM.")

    @property
    def timings(self) -> Timings:
        """Seconds spent by the last `ask` / `ask_batch`."""
        return self.predictor.timings

    def load_input(self, video, num_frames: int | None = None) -> VideoInput:
        """Open and sample `video` (path, image path, decord VideoReader or frames `[f, 3, H, W]`)."""
        return self.predictor.load_input(video, num_frames)

    def ground(self, gen, inputs: Sequence[VideoInput], questions: Sequence[str]):
        """Run the heads on a `GenerationOutput`'s queries (see `Predictor.ground`)."""
        return self.predictor.ground(gen, inputs, questions)

    def temporal_features(self, inp: VideoInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features `[t, d]` and their times `[t]` s of `inp` (the model's source)."""
        compute = self.predictor.frame_features(inp)
        if compute is None:
            raise ValueError("temporal_features: this model has no per-frame feature source")
        return compute()

    def ask(
        self,
        video,
        question: str,
        *,
        num_frames: int | None = None,
        max_new_tokens: int = 64,
        history: Sequence[tuple[str, str]] | None = None,
        ensemble: int | bool | None = None,
        ensemble_temperature: float = 0.7,
        ensemble_score: str = "logp",
        seed: int | None = None,
        decoding: Decoding | None = None,
        options: AskOptions | None = None,
        video_features=None,
        query_features=None,
    ) -> GroundedAnswer:
        """Answer `question` about `video`; `history` [(question, answer), ...] for multi-turn chat.

        `decoding`: a strategy object (`tpo.infer.decoding`; default greedy). `ensemble` K (True:
        `self.ensemble_k`) is shorthand for `PreferenceEnsemble` (tpo.infer.ensemble): K responses
        sampled at `ensemble_temperature` (under `seed`), scored by `ensemble_score` ("logp":
        mean token log-prob; "dpo": implicit DPO reward vs the LLM without LoRA). The answer is
        the best-scored response; only the mask head takes the preference-attention combination
        of the responses' `<tracking>` embeddings. `GroundedAnswer.ensemble` records K, the
        scores and the texts. `options`: evaluation options (`AskOptions`).
        `video_features` `[t, d]` / `query_features` `[l, d]` (numpy array, tensor, or the path
        of an npz holding `features` / `last_hidden_state`): this question's features for
        CG-DETR, in place of its sources' (merged into `options`).
        """
        return self.ask_batch(
            [(video, question)], num_frames=num_frames, max_new_tokens=max_new_tokens,
            histories=[list(history or [])], ensemble=ensemble,
            ensemble_temperature=ensemble_temperature, ensemble_score=ensemble_score, seed=seed,
            decoding=decoding, options=[options], video_features=[video_features],
            query_features=[query_features],
        )[0]  # fmt: skip

    @torch.no_grad()
    def ask_batch(
        self,
        pairs: Sequence[tuple[object, str]],
        *,
        num_frames: int | None = None,
        max_new_tokens: int = 64,
        histories: Sequence[Sequence[tuple[str, str]]] | None = None,
        ensemble: int | bool | None = None,
        ensemble_temperature: float = 0.7,
        ensemble_score: str = "logp",
        seed: int | None = None,
        decoding: Decoding | None = None,
        options: Sequence[AskOptions | None] | None = None,
        video_features: Sequence | None = None,
        query_features: Sequence | None = None,
    ) -> list[GroundedAnswer]:
        """Answer (video, question) pairs as padded batches; greedy answers equal those of `ask`
        one by one. The other arguments are those of `ask`, one per pair for `options`,
        `video_features` and `query_features` (None entries allowed; a seeded ensemble repeats
        for the same batch)."""
        n_ens = resolve_k(ensemble, self.ensemble_k)
        if n_ens is not None:
            if decoding is not None:
                raise ValueError("ask: give either ensemble or decoding, not both")
            opts = EnsembleOptions(n_ens, ensemble_temperature, ensemble_score, seed=seed)
            decoding = PreferenceEnsemble(opts)
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
        options = _with_features(len(pairs), options, video_features, query_features)
        self.predictor.timings = Timings()
        t0 = time.perf_counter()
        inputs = [self.load_input(v, num_frames) for v, _ in pairs]
        self.predictor.timings.decode = time.perf_counter() - t0
        return self.predictor.answer(
            inputs, [q for _, q in pairs], histories, options=options, decoding=decoding,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip

    def track(self, video, box_xyxy: Sequence[float], frame: int = 0) -> GroundedAnswer:
        """Track the object in pixel `box_xyxy` of video frame `frame` over all frames (the
        `<track_box>` path): masks (MaskTrack) and one box per frame where the object is seen."""
        mask_head = next(
            (h for h in self.model.heads.values() if hasattr(h, "track_from_box")), None
        )
        if mask_head is None:
            raise ValueError("track: this model has no mask head (no head that tracks a box)")
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
            text="", heads=[mask_head.name], boxes=boxes, masks=MaskTrack(masks, indices, inp.fps),
            video=inp.path, duration=inp.duration, fps=inp.fps,
        )  # fmt: skip


def _with_features(
    n: int,
    options: Sequence[AskOptions | None] | None,
    video: Sequence | None,
    query: Sequence | None,
) -> list[AskOptions | None] | None:
    """The `n` pairs' options with their given video / query features (`as_features`) set."""
    for name, given in (("options", options), ("video_features", video), ("query_features", query)):
        if given is not None and len(given) != n:
            raise ValueError(f"ask_batch: {len(given)} {name} for {n} pairs")
    if video is None and query is None:
        return None if options is None else list(options)
    merged: list[AskOptions | None] = []
    for k in range(n):
        opt = None if options is None else options[k]
        v = None if video is None else video[k]
        q = None if query is None else query[k]
        if v is None and q is None:
            merged.append(opt)
            continue
        changes: dict[str, torch.Tensor] = {}
        if v is not None:
            changes["video_features"] = as_features(v, "video")
        if q is not None:
            changes["query_features"] = as_features(q, "query")
        merged.append(dataclasses.replace(opt or AskOptions(), **changes))
    return merged


def _check_question(question: object, k: int = 0) -> None:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question {k}: expected a non-empty string, got {question!r}")


def load(
    path: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
) -> TPOPipeline:
    """A TPOPipeline from an inference folder (config.yaml + model.safetensors) or a training
    checkpoint folder; local files only. `merge_lora` folds the LoRA adapters into the base
    weights for speed (`LanguageModel.merge_adapters`; the loaded model is then for inference)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} is not a tpo checkpoint: no config.yaml inside it (expected an inference "
            "folder from `tpo export` or a training checkpoint folder)"
        )
    cfg = load_saved_config(TPOConfig, folder / "config.yaml")
    model = load_inference_model(folder, device, dtype)
    if merge_lora:
        model.mllm.llm.merge_adapters()
    collator = build_collator(cfg.model, model.mllm)

    return TPOPipeline(
        model, collator, num_frames=cfg.data.num_frames, img_size=cfg.model.vision.img_size,
        resize=cfg.model.vision.resize, ensemble_k=default_k(cfg),
    )  # fmt: skip
