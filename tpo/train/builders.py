"""Builders the engine is given for real runs: the TPO model and the manifest's data stream."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import torch

from tpo.config.schema import TPOConfig
from tpo.data.dataset import Sample, VideoTaskDataset, sample_weights
from tpo.model.prompt import PromptCollator, Turn
from tpo.model.tpo_model import TPOTrainModel, TrainBatch
from tpo.stages.base import Stage
from tpo.train.distributed import DistInfo

log = logging.getLogger(__name__)

MASK_FRAMES = 3  # annotated frames per mask sample that the mask loss is computed on


def build_train_model(cfg: TPOConfig, stage: Stage) -> TPOTrainModel:
    """`build_model(cfg.model)` + the criterion and the loss switches of `stage`."""
    from tpo.heads.build import build_criterion, build_model

    model = build_model(cfg.model)
    heads = dict(model.heads)
    criterion = build_criterion(heads, cfg.model, lm_weight=stage.lm_weight)
    features = model.temporal_features
    if features is not None and "vision" in stage.groups(cfg.train.extra_groups):
        features.memory_items = 0  # the cache assumes a frozen encoder: recompute every time
    alignment = None
    if cfg.train.align_weight > 0:
        from tpo.model.alignment import VideoTextAlignment

        alignment = VideoTextAlignment(model.mllm.task_tokens.ids.all, cfg.train.align_temperature)
    return TPOTrainModel(
        model.mllm,
        heads,
        criterion,
        temporal_features=features,
        lm_weight=stage.lm_weight,
        head_losses=stage.head_losses,
        alignment=alignment,
        align_weight=cfg.train.align_weight,
    )


class TrainData:
    """Weighted, deterministic stream of micro-batches: batch k of rank r depends on (seed, k, r).

    Datasets are mixed by manifest weight (with replacement); bad samples are skipped and
    counted in `bad_samples` (reason -> count).
    """

    def __init__(
        self,
        dataset: VideoTaskDataset,
        weights: torch.Tensor,
        collator: PromptCollator,
        micro_batch: int,
        seed: int,
        dist: DistInfo,
    ) -> None:
        self.dataset, self.weights, self.collator = dataset, weights, collator
        self.micro_batch, self.seed, self.dist = micro_batch, seed, dist

    @property
    def bad_samples(self) -> Counter:
        """Bad samples skipped so far (by reason)."""
        return self.dataset.bad_samples

    def state_dict(self) -> dict:
        """This rank's skip bookkeeping (the stream position is the engine's step)."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.dataset.load_state_dict(state)

    def iterate(self, start: int) -> Iterator[TrainBatch]:
        """Micro-batches from position `start` on."""
        k = start
        while True:
            gen = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + k) * max(1, self.dist.world_size) + self.dist.rank
            )
            idx = torch.multinomial(self.weights, self.micro_batch, replacement=True, generator=gen)
            self.dataset.set_epoch(k)
            yield collate([self.dataset[int(i)] for i in idx], self.collator)
            k += 1


def question_text(record) -> str:
    """The user turn of a record: multiple-choice questions list their lettered options."""
    if record.task == "mc" and record.options:
        from tpo.data.templates import mc_prompt

        return mc_prompt(record.question, record.options)
    return record.question


def collate(samples: list[Sample], collator: PromptCollator) -> TrainBatch:
    """Samples -> TrainBatch: prompt tokens, frames and per-head targets."""
    text = collator(
        [Turn(question_text(s.record), s.record.answer, s.record.history) for s in samples]
    )
    targets, mask_frames, box_frames = [], [], []
    for s in samples:
        t: dict = {}
        if s.spans is not None:
            t["temporal"] = {"spans": s.spans}
            if s.saliency is not None:
                t["temporal"]["saliency"] = s.saliency
        if s.box is not None:
            t["region"] = {"boxes": s.box}
        frames = None
        if s.masks is not None and s.mask_valid is not None and bool(s.mask_valid.any()):
            frames, masks = collate_mask_frames(s)
            t["mask"] = {"masks": masks}
        targets.append(t)
        mask_frames.append(frames)
        box_frames.append(-1 if s.box_frame is None else s.box_frame)
    return TrainBatch(
        frames=torch.stack([s.frames for s in samples]),
        input_ids=text.input_ids,
        attention_mask=text.attention_mask,
        labels=text.labels,
        targets=targets,
        videos=[s.record.video for s in samples],
        durations=[s.duration for s in samples],
        clip_starts=[s.clip_start for s in samples],
        box_frames=torch.tensor(box_frames),
        mask_frames=mask_frames,
    )


def build_train_data(cfg: TPOConfig, stage: Stage, dist: DistInfo) -> TrainData:
    """Records of the config's manifest -> dataset -> weighted micro-batch stream."""
    from tpo.data.manifest import load_manifest, load_records

    manifest = load_manifest(cfg.data.manifest)
    records, report = load_records(manifest, strict=False)
    if not records:
        raise ValueError(f"{cfg.data.manifest}: no usable records ({report.summary()})")
    dataset = VideoTaskDataset(
        records,
        num_frames=cfg.data.num_frames,
        img_size=cfg.model.vision.img_size,
        sampling=cfg.data.train_sampling,
        seed=cfg.train.seed,
        strict=False,
    )
    if dist.is_main:  # every rank loads the same records: count their skips once
        dataset.bad_samples.update({f"annotation_{k}": v for k, v in report.skipped.items()})
    weights = sample_weights(records, manifest.weights())
    return TrainData(
        dataset, weights, text_collator(cfg), cfg.train.micro_batch, cfg.train.seed, dist
    )


def text_collator(cfg: TPOConfig) -> PromptCollator:
    """The prompt collator of `cfg`'s tokenizer and template, without building the model
    (`tpo.model.build.build_collator` is the same from a built model)."""
    from tpo.model.tokens import load_tokenizer

    c, llm = cfg.model.connector, cfg.model.llm
    return PromptCollator(
        load_tokenizer(llm),
        num_visual_tokens=c.num_query + c.extra_query,
        max_len=llm.max_text_len,
        template=llm.template,
        system_msg=llm.system_msg,
    )


def evenly_spaced(idx: torch.Tensor, k: int) -> torch.Tensor:
    """Up to `k` entries of `idx` `[m]`, spread evenly from its first to its last."""
    return idx[torch.linspace(0, len(idx) - 1, min(k, len(idx))).round().long()]


def annotated_mask_frames(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled positions of a mask sample with a GT mask: (object visible `[m]`, empty `[m']`)."""
    seen = sample.masks.flatten(1).any(1)
    return (sample.mask_valid & seen).nonzero()[:, 0], (sample.mask_valid & ~seen).nonzero()[:, 0]


def read_mask_frames(sample: Sample, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled frames `pick` `[k]` of a mask sample, uint8 `[k, 3, H0, W0]` read at the
    video's resolution, and their GT masks bool `[k, H0, W0]`."""
    from tpo.data.video import open_source

    frames = open_source(sample.record.video).read(sample.indices[pick.numpy()])
    return frames, sample.masks[pick]


def collate_mask_frames(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The annotated sampled frames of a mask sample that the mask loss sees (at most
    MASK_FRAMES), as `read_mask_frames`.

    Frames where the object is visible come first (spread over its visible span), plus one
    annotated frame without it when there is one, so the head learns both to segment and to
    predict nothing; frames taken evenly from the whole clip would mostly be empty (objects
    come and go), and a head trained on them learns to predict nothing at all.
    """
    visible, absent = annotated_mask_frames(sample)
    if len(visible) and len(absent):
        n_vis = min(len(visible), MASK_FRAMES - 1)
        pick = torch.cat(
            [evenly_spaced(visible, n_vis), evenly_spaced(absent, MASK_FRAMES - n_vis)]
        )
    else:
        pick = evenly_spaced(visible if len(visible) else absent, MASK_FRAMES)
    return read_mask_frames(sample, pick.sort().values)
