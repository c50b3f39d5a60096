"""POPEN's textual preference set P_t: the model's greedy answer y vs the ground truth y_c.

For samples whose answer is plain text (multiple choice, conversation turns without task
tokens), the model answers greedily (`MLLM.generate`, as `tpo.infer.api` does) from the video and
the instruction alone (earlier turns are left out: a P_t tuple holds no history), decoded with
its task tokens kept, and every
answer that differs from the ground truth (whitespace-normalised) becomes a record
{"video", "instruction", "y", "y_c", "L_y", "L_yc", "id", "synthetic": false} in the format of
`tpo.popen.textual`, with the edited-token lists filled by `tpo.popen.textual.fill_edit_indices`
over the answer's own tokens. When the model is right on every sample, each ground truth with a
toy-world word (colour, shape, direction, number) is corrupted by swapping that word
(`corrupt_answer`) and used as y, flagged "synthetic": true.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from tpo.data.dataset import Sample
from tpo.data.records import Record
from tpo.data.toyworld_annotate import NUMBERS
from tpo.data.toyworld_render import COLOURS, DIRECTIONS, SHAPES
from tpo.model.prompt import PromptCollator, Turn
from tpo.model.tokens import TASK_TOKENS
from tpo.popen.textual import TextualPreference, fill_edit_indices, write_textual_preferences
from tpo.train.data import question_text

log = logging.getLogger(__name__)

TEXT_TASKS = ("mc", "conversation")
_GROUPS = (COLOURS, SHAPES, DIRECTIONS, NUMBERS)
_WORDS = {w: g for g in _GROUPS for w in g}
_WORD_RE = re.compile(
    r"\b(" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def is_text_answer(record: Record) -> bool:
    """True for multiple-choice / conversation records whose answer holds no task token."""
    return record.task in TEXT_TASKS and not any(t in record.answer for t in TASK_TOKENS)


def corrupt_answer(text: str) -> str | None:
    """`text` with its first toy-world word (colour, shape, direction, number) replaced by the
    next word of the same kind (cyclically, keeping a leading capital); None when it has none."""
    m = _WORD_RE.search(text)
    if m is None:
        return None
    word = m.group(1)
    group = _WORDS[word.lower()]
    new = group[(group.index(word.lower()) + 1) % len(group)]
    if word[0].isupper():
        new = new.capitalize()
    return text[: m.start()] + new + text[m.end() :]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _answer_batch(model, samples: list[Sample], collator: PromptCollator, max_new_tokens: int):
    """Greedy answers of samples with the same frame count."""

    turns = [
        Turn(question_text(s.record), None, frame_times=s.timestamps.tolist()) for s in samples
    ]
    text = collator.prompts(turns)
    p = next(model.mllm.llm.parameters())
    frames = torch.stack([s.frames for s in samples]).to(p.device, p.dtype)
    gen = model.mllm.generate(
        frames,
        text.input_ids.to(p.device),
        text.attention_mask.to(p.device),
        max_new_tokens=max_new_tokens,
    )
    # keep the task tokens: a task pair in a text answer is part of the response being corrected
    tok = model.mllm.tokenizer
    return [tok.decode(ids, skip_special_tokens=False).strip() for ids in gen.token_ids]


def _entry(sample: Sample, y: str, synthetic: bool) -> TextualPreference:

    rec = sample.record
    return TextualPreference(
        video=rec.video,
        instruction=question_text(rec),
        y=y,
        y_c=rec.answer,
        extra={"id": f"{rec.dataset}/{rec.qid}", "synthetic": synthetic},
    )


@torch.no_grad()
def collect_textual(
    model,
    samples: Iterable[Sample],
    out_path: str | Path,
    *,
    collator: PromptCollator,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> Path:
    """Write P_t for the text-answer `samples` (others are skipped) to jsonl `out_path`
    (atomically); `limit`: at most this many text samples are answered. Returns the path."""
    was_training = model.training
    model.eval()
    pending: list[Sample] = []
    answered: list[tuple[Sample, str]] = []

    def flush() -> None:
        by_frames: dict[tuple, list[Sample]] = {}
        for s in pending:
            by_frames.setdefault(tuple(s.frames.shape), []).append(s)
        for group in by_frames.values():
            answered.extend(zip(group, _answer_batch(model, group, collator, max_new_tokens)))
        pending.clear()

    try:
        seen = 0
        for sample in tqdm(samples, desc="popen P_t", unit="sample"):
            if limit is not None and seen >= limit:
                break
            if not is_text_answer(sample.record):
                continue
            seen += 1
            pending.append(sample)
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    # an empty answer cannot be a P_t response (the format needs a non-empty y)
    prefs = [
        _entry(s, y, False) for s, y in answered if _norm(y) and _norm(y) != _norm(s.record.answer)
    ]
    if answered and not prefs:
        log.info(
            "collect_textual: the model is right on all %d samples: synthetic y", len(answered)
        )
        for s, _ in answered:
            y = corrupt_answer(s.record.answer)
            if y is not None:
                prefs.append(_entry(s, y, True))

    def tokenize(text: str) -> list[int]:  # as PromptCollator tokenises an answer
        return collator.tokenizer(text, add_special_tokens=False)["input_ids"]

    out = write_textual_preferences(fill_edit_indices(prefs, tokenize), out_path)
    log.info(
        "collect_textual: %d preference pairs from %d samples -> %s", len(prefs), len(answered), out
    )
    return out
