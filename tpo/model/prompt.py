"""Prompt templates and the text collator: (question, answer, history) -> padded token tensors.

The visual tokens have no token ids: the collator writes `VISUAL_TOKEN_ID` (a negative sentinel
that never reaches the embedding table) at the positions where the MLLM later puts the
connector's visual tokens, so every sequence already has its final length and padding side.

Two prompt formats: "tpo" tokenises the template text once (one BOS); "videochat-tpo" is the
release's `process_qa`: `[INST] <Video>`, `</Video>{msg}[/INST]` and ` [INST] {q} [/INST] ` each
tokenised on their own with a BOS (3 BOS), where `msg` says the sampled frames' times when the
question contains "timestamp".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

VID_PLACEHOLDER = "[<VID_PLH>]"  # the official placeholder text in the prompt
VISUAL_TOKEN_ID = -200  # input_ids value at visual-token positions
IGNORE_INDEX = -100  # labels value of positions without LM loss


@dataclass
class Turn:
    """One question/answer with optional earlier turns [(question, answer), ...]."""

    question: str
    answer: str | None = None  # None: a prompt for generation
    history: list[tuple[str, str]] = field(default_factory=list)
    has_video: bool = True
    frame_times: Sequence[float] | None = None  # [f] s of the sampled frames (timestamp message)


@dataclass
class TextBatch:
    """Padded token tensors; visual positions hold VISUAL_TOKEN_ID.

    input_ids [b, s] long, attention_mask [b, s] long, labels [b, s] long (IGNORE_INDEX except
    on answer tokens and the closing eos; None for generation prompts).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None


def build_prompt(
    question: str,
    history: Sequence[tuple[str, str]] | None = None,
    system_msg: str = "",
    template: str = "mistral",
    has_video: bool = True,
) -> str:
    """The prompt text up to where the answer starts; the video sits at VID_PLACEHOLDER.

    mistral (official): "[INST] <Video>[<VID_PLH>]</Video>{msg}[/INST] [INST] {q} [/INST]";
    chatml: "<|im_start|>system\\n{msg}<|im_end|>\\n<|im_start|>user\\n<Video>..</Video>\\n{q}
    <|im_end|>\\n<|im_start|>assistant\\n". Earlier turns come before the question.
    """
    video = f"<Video>{VID_PLACEHOLDER}</Video>" if has_video else ""
    history = list(history or [])
    if template == "mistral":
        text = f"[INST] {video}{system_msg}[/INST]" if (video or system_msg) else ""
        for q, a in history:
            text += f" [INST] {q} [/INST] {a}"
        return f"{text} [INST] {question} [/INST]".lstrip()
    if template == "chatml":
        text = f"<|im_start|>system\n{system_msg}<|im_end|>\n" if system_msg else ""
        first = f"{video}\n" if video else ""
        for q, a in history:
            text += (
                f"<|im_start|>user\n{first}{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
            )
            first = ""
        return text + f"<|im_start|>user\n{first}{question}<|im_end|>\n<|im_start|>assistant\n"
    raise ValueError(f"unknown prompt template {template!r} (expected 'mistral' or 'chatml')")


PROMPT_FORMATS = ("tpo", "videochat-tpo")
TIMESTAMP_WORD = "timestamp"  # the release adds the frame times when the question has it


def timestamp_message(frame_times: Sequence[float]) -> str:
    """The release's `msg` for a timestamp question: " The video contains N frames sampled at
    t0, t1, ... seconds." with each time as Python prints `round(t, 1)`."""
    times = ", ".join(str(round(float(t), 1)) for t in frame_times)
    return f" The video contains {len(frame_times)} frames sampled at {times} seconds."


def official_segments(turn: Turn, system_msg: str = "") -> list[str]:
    """The texts the release tokenises one by one (each gets a BOS); the video sits at
    VID_PLACEHOLDER inside the first. Earlier turns (the release has none) are one more
    segment each, ` [INST] {q} [/INST] {a}`, before the question's ` [INST] {q} [/INST] `."""
    msg = system_msg
    if TIMESTAMP_WORD in turn.question:
        if turn.frame_times is None:
            raise ValueError(
                "prompt_format 'videochat-tpo': the question asks for a timestamp but the turn "
                "has no frame_times (the message lists the sampled frames' times)"
            )
        msg = timestamp_message(turn.frame_times)
    video = f"<Video>{VID_PLACEHOLDER}</Video>" if turn.has_video else ""
    segments = [f"[INST] {video}{msg.rstrip()}[/INST]"]
    segments += [f" [INST] {q} [/INST] {a}" for q, a in turn.history]
    segments.append(f" [INST] {turn.question} [/INST] " if turn.question else " ")
    return segments


def _as_turn(sample) -> Turn:
    if isinstance(sample, Turn):
        return sample
    if isinstance(sample, tuple | list) and 1 <= len(sample) <= 5:
        return Turn(*sample)
    raise TypeError(
        "expected a Turn or (question, answer, history, has_video, frame_times) tuple, "
        f"got {sample!r}"
    )


class PromptCollator:
    """Tokenises turns into a TextBatch: right padding for training, left for generation.

    Truncation to `max_len` keeps the BOS, the text up to the video and all visual tokens: the
    prompt text after the video is cut from its start (the question's end and the answer's
    start survive), then the answer is cut from its end. `prompt_format`: see the module
    docstring ("videochat-tpo" needs the mistral template).
    """

    def __init__(
        self,
        tokenizer,
        num_visual_tokens: int,
        max_len: int = 512,
        template: str = "mistral",
        system_msg: str = "",
        prompt_format: str = "tpo",
    ) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}"
            )
        if prompt_format == "videochat-tpo" and template != "mistral":
            raise ValueError("prompt_format 'videochat-tpo' needs the mistral template")
        self.tokenizer = tokenizer
        self.num_visual = num_visual_tokens
        self.max_len = max_len
        self.template = template
        self.system_msg = system_msg
        self.prompt_format = prompt_format
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        # Mistral prompts start with <s>; ChatML ones carry no BOS.
        self.bos = [tokenizer.bos_token_id] if template == "mistral" and tokenizer.bos_token else []

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def text_ids(self, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """Token ids `[l]` int64 of each text, without special tokens (None: no token), e.g.
        the question ids CG-DETR's LLM query source embeds (`HeadSample.query_ids`)."""
        return [
            torch.tensor(ids, dtype=torch.long) if ids else None
            for ids in self._encode(list(texts))
        ]

    def _prompt_parts(self, turns: list[Turn]) -> tuple[list[list[int]], list[list[int]]]:
        """Per turn, the tokens up to and including the video and the prompt tokens after it."""
        visual = [VISUAL_TOKEN_ID] * self.num_visual
        if self.prompt_format == "tpo":
            heads, tails = [], []
            for t in turns:
                text = build_prompt(
                    t.question, t.history, self.system_msg, self.template, t.has_video
                )
                head, _, tail = text.partition(VID_PLACEHOLDER) if t.has_video else ("", "", text)
                heads.append(head)
                tails.append(tail)
            enc = self._encode(heads + tails)
            n = len(turns)
            return [
                self.bos + h + (visual if t.has_video else []) for t, h in zip(turns, enc[:n])
            ], enc[n:]
        # videochat-tpo: every segment (and each side of the video) tokenised alone, with a BOS
        chunks = []
        for t in turns:
            first, *rest = official_segments(t, self.system_msg)
            chunks.append(first.split(VID_PLACEHOLDER) + rest)
        enc = iter(self._encode([c for row in chunks for c in row]))
        prefixes, tails = [], []
        for t, row in zip(turns, chunks):
            ids = [self.bos + next(enc) for _ in row]
            if t.has_video:
                prefixes.append(ids[0] + visual)
                ids = ids[1:]
            else:
                prefixes.append([])
            tails.append([i for part in ids for i in part])
        return prefixes, tails

    def _sequences(self, turns: list[Turn]) -> tuple[list[list[int]], list[int]]:
        """Token lists and the number of leading prompt tokens (no loss) of each."""
        prefixes, tail_ids = self._prompt_parts(turns)
        answers = [t.answer for t in turns if t.answer is not None]
        ans_iter = iter(self._encode(answers))
        seqs, prompt_lens = [], []
        for t, prefix, tail in zip(turns, prefixes, tail_ids):
            answer = next(ans_iter) + [self.eos_id] if t.answer is not None else []
            room = self.max_len - len(prefix) - min(len(answer), 1)
            if room < 1:
                raise ValueError(
                    f"max_text_len {self.max_len} leaves no room for text after the "
                    f"{len(prefix)} tokens up to and including the video"
                )
            tail = tail[-room:] if len(tail) > room else tail
            answer = answer[: self.max_len - len(prefix) - len(tail)]
            seqs.append(prefix + tail + answer)
            prompt_lens.append(len(prefix) + len(tail))
        return seqs, prompt_lens

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            span = slice(length - len(s), length) if left else slice(0, len(s))
            ids[i, span] = torch.tensor(s, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    def __call__(self, samples: Sequence) -> TextBatch:
        """Training batch (right padding) from Turns or (question, answer, history) tuples."""
        turns = [_as_turn(s) for s in samples]
        if any(t.answer is None for t in turns):
            raise ValueError("training samples need an answer; use .prompts() for generation")
        seqs, prompt_lens = self._sequences(turns)
        ids, mask = self._pad(seqs, left=False)
        positions = torch.arange(ids.shape[1])
        answer = (positions >= torch.tensor(prompt_lens)[:, None]) & mask.bool()
        labels = torch.where(answer, ids, IGNORE_INDEX)
        return TextBatch(ids, mask, labels)

    def prompts(self, samples: Sequence) -> TextBatch:
        """Generation batch (left padding): prompts only, answers (if any) ignored."""
        turns = [_as_turn(s) for s in samples]
        turns = [Turn(t.question, None, t.history, t.has_video, t.frame_times) for t in turns]
        seqs, _ = self._sequences(turns)
        ids, mask = self._pad(seqs, left=True)
        return TextBatch(ids, mask)
