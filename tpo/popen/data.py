"""The micro-batch stream of a POPEN stage: the stage's own batch + textual and seg pairs.

Micro-batch k holds the base `TrainBatch` k of the stage's manifest (`build_train_data`), then
`popen.pairs_per_step` textual pairs and `popen.pairs_per_step` segmentation pairs drawn by a
generator seeded with (seed, k, rank); the seg pairs follow the curriculum phase of the
optimizer step k belongs to (k // grad_accum). So batch k depends only on (config, k, rank):
`iterate(start)` resumes exactly. The pairs are drawn in DataLoader workers
(`data.num_workers`, as the base stream); bad preference records are skipped there and
counted once in the main process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tpo.config.schema import TPOConfig
from tpo.data.manifest import load_manifest, load_records
from tpo.model.tpo_model import TrainBatch
from tpo.popen.collect import load_segmentation_preferences, sample_id
from tpo.popen.curriculum import Curriculum
from tpo.popen.pair_sources import Draw, SegSource, TextualSource, load_textual
from tpo.popen.pairs import SegPairs, TextualPairs
from tpo.stages.base import Stage
from tpo.train.data import build_train_data, text_collator
from tpo.train.distributed import DistInfo
from tpo.train.ds_config import grad_accum_steps

log = logging.getLogger(__name__)


@dataclass
class PopenBatch:
    """One micro-batch: the stage's batch (None when popen.base_weight is 0), textual and seg
    pairs (one group per frame count), and the optimizer step / curriculum phase it is for."""

    base: TrainBatch | None = None
    textual: list[TextualPairs] = field(default_factory=list)
    seg: list[SegPairs] = field(default_factory=list)
    step: int = 0
    phase: str = "coarse"

    def __len__(self) -> int:
        """Samples in the micro-batch (base samples + pairs)."""
        base = len(self.base) if self.base is not None else 0
        return base + sum(len(g) for g in self.textual) + sum(len(g) for g in self.seg)

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> PopenBatch:
        """Move every part to `device` (frames in `dtype`)."""
        return PopenBatch(
            None if self.base is None else self.base.to(device, dtype),
            [g.to(device, dtype) for g in self.textual],
            [g.to(device, dtype) for g in self.seg],
            self.step,
            self.phase,
        )


class PopenData:
    """TrainData of a POPEN stage (see the module docstring)."""

    def __init__(
        self,
        base,
        textual: TextualSource | None,
        seg: SegSource | None,
        curriculum,
        *,
        pairs_per_step: int,
        grad_accum: int,
        dist: DistInfo,
        seed: int = 0,
        num_workers: int = 0,
        prefetch_factor: int = 2,
    ) -> None:
        if base is None and textual is None and seg is None:
            raise ValueError("popen: nothing to train on (no base data, no preferences)")
        self.base, self.textual, self.seg, self.curriculum = base, textual, seg, curriculum
        self.pairs_per_step, self.grad_accum, self.dist = pairs_per_step, grad_accum, dist
        self.seed, self.num_workers, self.prefetch_factor = seed, num_workers, prefetch_factor

    def _parts(self) -> dict:
        """The streams this one draws from, by name (absent ones left out)."""
        parts = {"base": self.base, "textual": self.textual, "seg": self.seg}
        return {name: part for name, part in parts.items() if part is not None}

    @property
    def bad_samples(self) -> Counter:
        """Bad samples skipped so far (base data and preferences, by reason)."""
        total = Counter()
        for part in self._parts().values():
            total.update(part.bad_samples)
        return total

    def state_dict(self) -> dict:
        """Every part's skip bookkeeping (see `TrainData.state_dict`)."""
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        for name, part in self._parts().items():
            if state.get(name) is not None:
                part.load_state_dict(state[name])

    def phase(self, step: int) -> str:
        """Curriculum phase of optimizer step `step`; an epoch is one pass over the seg set."""
        seen = step * self.grad_accum * max(1, self.dist.world_size) * self.pairs_per_step
        epoch = seen // len(self.seg) if self.seg is not None else 0
        return self.curriculum.phase(step, epoch)

    def draw_pairs(self, k: int) -> tuple[Draw, Draw]:
        """The textual and seg pairs of micro-batch k (runs in a loader worker)."""
        empty = Draw([])
        phase = self.phase(k // self.grad_accum)
        textual = self.textual.draw(k, self.pairs_per_step) if self.textual is not None else empty
        seg = self.seg.draw(k, self.pairs_per_step, phase) if self.seg is not None else empty
        return textual, seg

    def pair_loader(self, start: int) -> DataLoader:
        """The DataLoader of micro-batch k's pairs, k = start, start + 1, ..."""
        workers = self.num_workers
        return DataLoader(
            _PairDraws(self),
            sampler=_From(start),
            batch_size=None,  # one item is one micro-batch's pairs
            collate_fn=_as_is,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),  # not the global RNG
        )

    def iterate(self, start: int) -> Iterator[PopenBatch]:
        """Micro-batches from position `start` on."""
        base = self.base.iterate(start) if self.base is not None else None
        pairs = None
        if self.textual is not None or self.seg is not None:
            pairs = iter(self.pair_loader(start))
        for k in count(start):
            textual, seg = next(pairs) if pairs is not None else (Draw([]), Draw([]))
            for source, draw in ((self.textual, textual), (self.seg, seg)):
                for i, reason in draw.bad:
                    source.note_bad(i, reason)
            step = k // self.grad_accum
            yield PopenBatch(
                base=next(base) if base is not None else None,
                textual=textual.groups,
                seg=seg.groups,
                step=step,
                phase=self.phase(step),
            )


class _PairDraws(Dataset):
    """Micro-batch position k -> its (textual, seg) `Draw`s."""

    def __init__(self, data: PopenData) -> None:
        self.data = data

    def __getitem__(self, k: int) -> tuple[Draw, Draw]:
        return self.data.draw_pairs(k)


class _From(Sampler[int]):
    """Positions start, start + 1, ... (endless)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return count(self.start)


def _as_is(item):
    return item


def build_popen_data(cfg: TPOConfig, stage: Stage, dist: DistInfo) -> PopenData:
    """The stage's data stream (`build_train_data`) plus preference pairs, per `cfg.popen`."""
    pc = cfg.popen
    base = build_train_data(cfg, stage, dist) if pc.base_weight > 0 else None
    collator = base.collator if base is not None else text_collator(cfg)
    textual = seg = None
    if pc.textual is not None and pc.weight_t > 0:
        tok = collator.tokenizer
        prefs, bad = load_textual(
            pc.textual, lambda s: tok(s, add_special_tokens=False)["input_ids"]
        )
        textual = TextualSource(
            prefs,
            collator,
            num_frames=cfg.data.num_frames,
            img_size=cfg.model.vision.img_size,
            sampling=cfg.data.train_sampling,
            seed=cfg.train.seed,
            dist=dist,
        )
        if dist.is_main:  # every rank reads the same file: count its skips once
            textual.bad_samples.update(bad)
    if pc.segmentation is not None and pc.weight_s > 0:
        records, _ = load_records(load_manifest(cfg.data.manifest), strict=False)
        seg = SegSource(
            load_segmentation_preferences(pc.segmentation),
            {sample_id(r): r for r in records},
            collator,
            img_size=cfg.model.vision.img_size,
            seed=cfg.train.seed,
            dist=dist,
        )
    log.info(
        "popen: %s textual and %s segmentation preference samples; %d pairs of each per "
        "micro-batch",
        len(textual.prefs) if textual is not None else "no",
        len(seg) if seg is not None else "no",
        pc.pairs_per_step,
    )
    return PopenData(
        base,
        textual,
        seg,
        Curriculum(pc.curriculum_switch_step, pc.curriculum_switch_epoch),
        pairs_per_step=pc.pairs_per_step,
        grad_accum=grad_accum_steps(cfg.train, dist.world_size),
        dist=dist,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )
