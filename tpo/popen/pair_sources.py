"""Where the pairs of a POPEN micro-batch come from: textual and segmentation preferences.

Draws depend only on (seed, micro-batch k, rank) and on the preference set: a bad record (its
media unreadable, its clean input not rebuildable) is replaced by the next one, the same way
whatever happened before, so a resumed stream equals the uninterrupted one. Draws may run in
DataLoader workers: a draw returns the bad records it met (`Draw.bad`), and the main process
counts each once with `note_bad`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tpo.data.loader_utils import numbered_lines
from tpo.data.records import Record
from tpo.data.video import VideoError, load_video
from tpo.model.prompt import IGNORE_INDEX, PromptCollator, Turn
from tpo.popen.collect import clean_batch
from tpo.popen.curriculum import PHASES, preference_pairs
from tpo.popen.pairs import SegPairs, TextualPairs
from tpo.popen.seg_store import SegPreference
from tpo.popen.textual import TextualPreference, fill_edit_indices, parse_line
from tpo.train.distributed import DistInfo

log = logging.getLogger(__name__)

_TEXTUAL, _SEG = 1, 2  # generator streams


def _generator(seed: int, k: int, dist: DistInfo, stream: int) -> torch.Generator:
    world = max(1, dist.world_size)
    return torch.Generator().manual_seed(((seed * 1_000_003 + k) * world + dist.rank) * 4 + stream)


@dataclass
class Draw:
    """The pair groups drawn for one micro-batch, and the (record, reason) skips met."""

    groups: list
    bad: list[tuple[int, str]] = field(default_factory=list)


def edit_mask(labels: torch.Tensor, edits: Sequence[Sequence[int]]) -> torch.Tensor:
    """bool `[b, s]`: True at the answer positions (labels != -100, in order) listed in
    `edits[row]` (indices into the answer's own tokens; indices cut off by truncation drop)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for row, idx in enumerate(edits):
        pos = (labels[row] != IGNORE_INDEX).nonzero()[:, 0]
        keep = torch.tensor([i for i in idx if i < len(pos)], dtype=torch.long)
        mask[row, pos[keep]] = True
    return mask


class TextualSource:
    """Textual preferences -> TextualPairs; frames sampled per (seed, k, preference) with the
    stage's train sampling; a preference whose media cannot be read is replaced, when drawn,
    by the next one."""

    def __init__(
        self,
        prefs: list[TextualPreference],
        collator: PromptCollator,
        *,
        num_frames: int,
        img_size: int,
        sampling: str,
        seed: int,
        dist: DistInfo,
    ) -> None:
        if not prefs:
            raise ValueError("popen.textual: no usable textual preferences")
        self.prefs, self.collator = prefs, collator
        self.num_frames, self.img_size, self.sampling = num_frames, img_size, sampling
        self.seed, self.dist = seed, dist
        self.bad_samples: Counter = Counter()
        self._counted: set[int] = set()  # counted as bad (main process)
        self._seen_bad: set[int] = set()  # met as bad in this process (logged once)

    def note_bad(self, i: int, reason: str) -> None:
        """Count preference i as bad (once)."""
        if i not in self._counted:
            self._counted.add(i)
            self.bad_samples[reason] += 1

    def state_dict(self) -> dict:
        """Skip counts and the preferences already counted as bad."""
        return {"bad_samples": dict(self.bad_samples), "counted": sorted(self._counted)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.bad_samples, self._counted = Counter(state["bad_samples"]), set(state["counted"])

    def _frames(self, i: int, k: int, bad: list[tuple[int, str]]) -> torch.Tensor | None:
        p = self.prefs[i]
        rng = np.random.default_rng([self.seed, k, i])
        try:
            clip = load_video(
                p.video, self.num_frames, self.sampling, img_size=self.img_size, rng=rng
            )
        except VideoError as err:
            bad.append((i, f"popen_textual_video_{err.reason}"))
            if i not in self._seen_bad:
                self._seen_bad.add(i)
                log.warning("popen: skipping textual preference %s: %s", p.source, err)
            return None
        return clip.frames

    def draw(self, k: int, n: int) -> Draw:
        """n pairs for micro-batch k (a bad medium is replaced by the next preference)."""
        gen = _generator(self.seed, k, self.dist, _TEXTUAL)
        picks = torch.randint(len(self.prefs), (n,), generator=gen).tolist()
        chosen: list[tuple[int, torch.Tensor]] = []
        bad: list[tuple[int, str]] = []
        for i in picks:
            for j in range(len(self.prefs)):
                idx = (i + j) % len(self.prefs)
                frames = self._frames(idx, k, bad)
                if frames is not None:
                    chosen.append((idx, frames))
                    break
            else:
                raise RuntimeError(f"popen.textual: no readable media ({dict(self.bad_samples)})")
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for idx, frames in chosen:
            groups.setdefault(tuple(frames.shape), []).append((idx, frames))
        return Draw([self._collate(g) for g in groups.values()], bad)

    def _collate(self, group: list[tuple[int, torch.Tensor]]) -> TextualPairs:
        prefs = [self.prefs[i] for i, _ in group]
        history = [[tuple(t) for t in p.extra.get("history", [])] for p in prefs]
        turns = [Turn(p.instruction, p.y_c, h) for p, h in zip(prefs, history)]
        turns += [Turn(p.instruction, p.y, h) for p, h in zip(prefs, history)]
        text = self.collator(turns)
        edits = [p.l_yc for p in prefs] + [p.l_y for p in prefs]
        return TextualPairs(
            torch.stack([f for _, f in group]),
            text.input_ids,
            text.attention_mask,
            text.labels,
            edit_mask(text.labels, edits),
            [p.source for p in prefs],
        )


class SegSource:
    """Segmentation preferences -> SegPairs following the curriculum phase.

    A sample whose record is not among `records` (keyed by sample id) or whose runs give no
    pair in either phase is dropped and counted; one whose clean input cannot be rebuilt is
    replaced, when drawn, by the next sample of the phase's pool.
    """

    def __init__(
        self,
        prefs: list[SegPreference],
        records: dict[str, Record],
        collator: PromptCollator,
        *,
        img_size: int,
        seed: int,
        dist: DistInfo,
    ) -> None:

        self.collator, self.img_size, self.seed, self.dist = collator, img_size, seed, dist
        self.records = records
        skipped: Counter = Counter()
        self.prefs, self.pairs = [], []
        for p in prefs:
            if p.id not in records:
                skipped["popen_seg_no_record"] += 1
                continue
            pairs = {ph: preference_pairs(p.tiers, ph) for ph in PHASES}
            if not any(pairs.values()):
                skipped["popen_seg_no_pairs"] += 1
                continue
            self.prefs.append(p)
            self.pairs.append(pairs)
        if not self.prefs:
            raise ValueError(
                f"popen.segmentation: none of {len(prefs)} preference samples is usable "
                f"({dict(skipped)}); were they collected from data.manifest's records?"
            )
        # every rank reads the same preferences: their skips count once
        self.bad_samples: Counter = skipped if dist.is_main else Counter()
        # per phase, the samples that have pairs in it (a phase without any uses the other's)
        self.eligible = {ph: [i for i, p in enumerate(self.pairs) if p[ph]] for ph in PHASES}
        self._ok: dict[int, bool] = {}  # whether sample i's clean input rebuilds (a cache)
        self._counted: set[int] = set()  # counted as bad (main process)
        self._reason: dict[int, str] = {}

    def note_bad(self, i: int, reason: str) -> None:
        """Count sample i as bad (once)."""
        self._ok[i] = False
        if i not in self._counted:
            self._counted.add(i)
            self.bad_samples[reason] += 1

    def __len__(self) -> int:
        return len(self.prefs)

    def state_dict(self) -> dict:
        """Skip counts and which samples were checked (and whether they were usable)."""
        return {"bad_samples": dict(self.bad_samples), "ok": [[i, v] for i, v in self._ok.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.bad_samples = Counter(state["bad_samples"])
        self._ok = {int(i): bool(v) for i, v in state["ok"]}
        self._counted = {i for i, ok in self._ok.items() if not ok}

    def _usable(self, i: int, bad: list[tuple[int, str]]) -> bool:
        """Whether sample i's clean input can be rebuilt (checked once per process; a pure
        function of i); a bad one is added to `bad`."""
        if i not in self._ok:
            try:
                clean_batch([self.prefs[i]], self.records, self.collator, img_size=self.img_size)
                self._ok[i] = True
            except ValueError as err:  # VideoError and AnnotationError are ValueErrors
                self._ok[i] = False
                self._reason[i] = f"popen_seg_{getattr(err, 'reason', 'clean_input')}"
                log.warning("popen: skipping seg preference %s: %s", self.prefs[i].id, err)
        if not self._ok[i]:
            bad.append((i, self._reason.get(i, "popen_seg_clean_input")))
        return self._ok[i]

    def draw(self, k: int, n: int, phase: str) -> Draw:
        """n (sample, winner, loser) pairs for micro-batch k in curriculum `phase`."""
        bad: list[tuple[int, str]] = []
        if not self.eligible[phase]:
            phase = "fine" if phase == "coarse" else "coarse"
        pool = self.eligible[phase]
        gen = _generator(self.seed, k, self.dist, _SEG)
        picks: list[tuple[int, int, int]] = []
        for j in torch.randint(len(pool), (n,), generator=gen).tolist():
            for step in range(len(pool)):
                i = pool[(j + step) % len(pool)]
                if self._usable(i, bad):
                    break
            else:
                raise RuntimeError(f"popen.segmentation: no usable sample ({self.bad_samples})")
            pairs = self.pairs[i][phase]
            w, lo = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
            picks.append((i, w, lo))
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for pick in picks:
            groups.setdefault(len(self.prefs[pick[0]].frame_indices), []).append(pick)
        out = []
        for group in groups.values():
            unique = list(dict.fromkeys(i for i, _, _ in group))
            prefs = [self.prefs[i] for i in unique]
            clean = clean_batch(prefs, self.records, self.collator, img_size=self.img_size)
            out.append(
                SegPairs(
                    clean.frames,
                    clean.input_ids,
                    clean.attention_mask,
                    torch.tensor([unique.index(i) for i, _, _ in group]),
                    torch.stack([self.prefs[i].embeddings[w] for i, w, _ in group]).float(),
                    torch.stack([self.prefs[i].embeddings[lo] for i, _, lo in group]).float(),
                    [p.id for p in prefs],
                )
            )
        return Draw(out, bad)


def load_textual(
    path: str | Path, tokenize: Callable[[str], list[int]]
) -> tuple[list[TextualPreference], Counter]:
    """Textual preferences of a jsonl with their edit indices filled; bad lines are skipped
    and counted (reason -> count), each logged with its file:line."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"popen.textual: no file {path} (collect it with `tpo popen collect`)"
        )
    prefs, bad = [], Counter()
    for _, where, line in numbered_lines(path):
        try:
            # one record at a time, so that a bad line is skipped, not fatal
            (pref,) = fill_edit_indices([parse_line(line, where)], tokenize)
        except ValueError as err:
            bad["popen_textual_malformed"] += 1
            log.warning("popen: skipping %s: %s", where, err)
            continue
        if not pref.l_y and not pref.l_yc:
            bad["popen_textual_no_edit"] += 1
            log.warning("popen: skipping %s: y and y_c have the same tokens", where)
            continue
        prefs.append(pref)
    return prefs, bad
