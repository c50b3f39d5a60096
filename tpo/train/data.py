"""The training data stream: records -> samples decoded in DataLoader workers -> TrainBatch.

Micro-batch k of rank r is a weighted draw seeded by (seed, k, r) (`WeightedDraws`), so a run
that resumes at micro-batch k only starts the sampler there: the sampler's whole state is its
position, which the engine's step already gives (no `torchdata.StatefulDataLoader` needed, and
none is installed for the pinned torch). Every tensor a step needs (LLM frames, the temporal
head's frames, the mask head's frames) is decoded in the workers; the model only encodes.
Bad samples are skipped in the workers and each batch carries the skips it met
(`TrainBatch.skipped`), which the main process counts once per record.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tpo.config.schema import TPOConfig
from tpo.data.dataset import Sample, VideoTaskDataset, sample_weights
from tpo.data.manifest import load_manifest, load_records
from tpo.data.templates import question_text
from tpo.heads import registry
from tpo.model.prompt import PromptCollator, Turn
from tpo.model.tokens import load_tokenizer
from tpo.model.tpo_model import TrainBatch
from tpo.stages.base import Stage
from tpo.train.distributed import DistInfo

log = logging.getLogger(__name__)


class WeightedDraws(Sampler[list[tuple[int, int]]]):
    """Endless batch sampler: micro-batch k (from `start` on) is `micro_batch` records drawn
    with replacement by `weights` `[n]` from a generator seeded by (seed, k, rank); each entry
    is `(k, record index)`, k being the epoch the dataset samples that record's frames with."""

    def __init__(
        self, weights: torch.Tensor, micro_batch: int, seed: int, dist: DistInfo, start: int = 0
    ) -> None:
        self.weights, self.micro_batch, self.seed = weights, micro_batch, seed
        self.rank, self.world = dist.rank, max(1, dist.world_size)
        self.start = start

    def draw(self, k: int) -> list[int]:
        """Record indices of micro-batch `k`."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + k) * self.world + self.rank)
        idx = torch.multinomial(self.weights, self.micro_batch, replacement=True, generator=gen)
        return idx.tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            yield [(k, i) for i in self.draw(k)]
            k += 1


class _Draws(Dataset):
    """`(epoch, index) -> Sample` over a `VideoTaskDataset` (the epoch is set per item, so it
    holds in every worker process)."""

    def __init__(self, dataset: VideoTaskDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class TrainData:
    """Weighted, deterministic stream of micro-batches: batch k of rank r depends on (seed, k, r).

    Datasets are mixed by manifest weight (with replacement) by `WeightedDraws`; samples are
    decoded and collated in `num_workers` DataLoader workers (0: in this process); bad samples
    are skipped and counted in `bad_samples` (reason -> count).
    """

    def __init__(
        self,
        dataset: VideoTaskDataset,
        weights: torch.Tensor,
        collator: PromptCollator,
        micro_batch: int,
        seed: int,
        dist: DistInfo,
        *,
        num_workers: int = 0,
        prefetch_factor: int = 2,
    ) -> None:
        self.dataset, self.weights, self.collator = dataset, weights, collator
        self.micro_batch, self.seed, self.dist = micro_batch, seed, dist
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor

    @property
    def bad_samples(self) -> Counter:
        """Bad samples skipped so far (by reason), in the batches consumed."""
        return self.dataset.bad_samples

    def state_dict(self) -> dict:
        """This rank's skip bookkeeping (the stream position is the engine's step)."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (before `iterate`, which starts the workers)."""
        self.dataset.load_state_dict(state)

    def loader(self, start: int) -> DataLoader:
        """The DataLoader of micro-batches from position `start` on."""
        workers = self.num_workers
        return DataLoader(
            _Draws(self.dataset),
            batch_sampler=WeightedDraws(
                self.weights, self.micro_batch, self.seed, self.dist, start
            ),
            collate_fn=functools.partial(collate, collator=self.collator),
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=self.dist.device.startswith("cuda"),
            # its own generator: creating the iterator must not draw from the global RNG, which
            # a resumed run restores and the model's dropout reads
            generator=torch.Generator().manual_seed(self.seed),
        )

    def iterate(self, start: int) -> Iterator[TrainBatch]:
        """Micro-batches from position `start` on; skips met in workers are counted here."""
        for batch in self.loader(start):
            for index, reason in batch.skipped:
                self.dataset.note_bad(index, reason)
            yield batch


def collate(samples: list[Sample], collator: PromptCollator) -> TrainBatch:
    """Samples -> TrainBatch: prompt tokens, frames, and each registered head's targets
    (`TaskHead.targets_from`) and extra inputs."""
    text = collator(
        [
            Turn(
                question_text(s.record),
                s.record.answer,
                s.record.history,
                frame_times=s.timestamps.tolist(),
            )
            for s in samples
        ]
    )
    heads = registry.heads()
    targets, mask_frames, box_frames = [], [], []
    for s in samples:
        t: dict = {}
        frames = None
        for head in heads:  # each head reads its own targets from the sample
            found = head.targets_from(s)
            if found is not None:
                t[head.name] = found.targets
                frames = found.mask_frames if found.mask_frames is not None else frames
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
        temporal_frames=[s.temporal_frames for s in samples],
        temporal_times=[s.temporal_times for s in samples],
        query_ids=collator.text_ids([s.record.question for s in samples]),
        qids=[s.record.qid for s in samples],
        skipped=[pair for s in samples for pair in zip(s.bad_records, s.skipped)],
    )


def build_train_data(cfg: TPOConfig, stage: Stage, dist: DistInfo) -> TrainData:
    """Records of the config's manifest -> dataset -> weighted micro-batch stream."""

    manifest = load_manifest(cfg.data.manifest)
    records, report = load_records(manifest, strict=False)
    if not records:
        raise ValueError(f"{cfg.data.manifest}: no usable records ({report.summary()})")
    tcfg = cfg.model.heads.temporal
    # the temporal head's frames are decoded here only for stages whose heads learn
    feature_rate = (
        (tcfg.feat_fps, tcfg.max_feats) if tcfg is not None and stage.head_losses else None
    )
    dataset = VideoTaskDataset(
        records,
        num_frames=cfg.data.num_frames,
        img_size=cfg.model.vision.img_size,
        sampling=cfg.data.train_sampling,
        seed=cfg.train.seed,
        strict=False,
        feature_rate=feature_rate,
        normalize=False,  # uint8 to the device, normalised there (TrainBatch.to)
        resize=cfg.model.vision.resize,
    )
    if dist.is_main:  # every rank loads the same records: count their skips once
        dataset.bad_samples.update({f"annotation_{k}": v for k, v in report.skipped.items()})
    weights = sample_weights(records, manifest.weights())
    return TrainData(
        dataset,
        weights,
        text_collator(cfg),
        cfg.train.micro_batch,
        cfg.train.seed,
        dist,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )


def text_collator(cfg: TPOConfig) -> PromptCollator:
    """The prompt collator of `cfg`'s tokenizer and template, without building the model
    (`tpo.model.build.build_collator` is the same from a built model)."""

    c, llm = cfg.model.connector, cfg.model.llm
    return PromptCollator(
        load_tokenizer(llm),
        num_visual_tokens=c.num_query + c.extra_query,
        max_len=llm.max_text_len,
        template=llm.template,
        system_msg=llm.system_msg,
        prompt_format=llm.prompt_format,
    )
