"""Tokenizer loading, the task tokens, and their learned embeddings.

A task pair in an answer, `<begin><content>`, routes to one head; the heads declare their pairs
(`tpo.heads.registry`) and the model receives them as `TaskPair`s, in head-index order. The
tokenizer always holds the 7 task tokens of the official release first (their ids must match
the published checkpoint), then any other head's tokens. The input embeddings of the content
tokens are learned vectors, and each `<track_box>` in a prompt takes the embedding of a
user-given box through a small MLP.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tpo.config.model import LLMConfig, TaskTokenConfig

# The order of the official release: with the Mistral tokenizer these get ids 32000..32006.
TASK_TOKENS = (
    "<box_begin>",
    "<time_begin>",
    "<temp>",
    "<boxes>",
    "<track_begin>",
    "<tracking>",
    "<track_box>",
)
TRACK_BOX = "<track_box>"
MISTRAL_COMMON = "mistral-common"


@dataclass(frozen=True)
class TaskPair:
    """The task tokens of one head: `name` (the head's), `begin` and `content` token strings."""

    name: str
    begin: str
    content: str


def pair_tokens(pairs: Sequence[TaskPair]) -> tuple[str, ...]:
    """Every task token: the official 7 (in their order), then the pairs' other tokens."""
    extra = [t for p in pairs for t in (p.begin, p.content) if t not in TASK_TOKENS]
    return TASK_TOKENS + tuple(dict.fromkeys(extra))


@dataclass(frozen=True)
class TaskTokenIds:
    """Token ids of the task tokens in one tokenizer; begin / content in head-index order."""

    all: tuple[int, ...]  # every task token (pair_tokens order)
    begin: tuple[int, ...]
    content: tuple[int, ...]
    track_box: int
    names: tuple[str, ...] = ()  # the head of each pair

    @classmethod
    def from_tokenizer(cls, tokenizer, pairs: Sequence[TaskPair] = ()) -> TaskTokenIds:
        """Look the task tokens up; raises if the tokenizer lacks them (see add_task_tokens)."""
        vocab = tokenizer.get_vocab()
        tokens = pair_tokens(pairs)
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks task tokens {missing}; call add_task_tokens first")
        names = [p.name for p in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"task pairs: head names must be unique, got {names}")
        return cls(
            all=tuple(vocab[t] for t in tokens),
            begin=tuple(vocab[p.begin] for p in pairs),
            content=tuple(vocab[p.content] for p in pairs),
            track_box=vocab[TRACK_BOX],
            names=tuple(names),
        )


def mistral_vocab_file() -> Path:
    """The Mistral 7B SentencePiece model (32,000 pieces) shipped inside `mistral_common`."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm.tokenizer 'mistral-common': package mistral_common not installed"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name in ("tokenizer.model.v1", "tokenizer.model.v2"):
        if (data / name).is_file():
            return data / name
    raise FileNotFoundError(f"llm.tokenizer 'mistral-common': no tokenizer.model.v1/v2 in {data}")


def mistral_tokenizer():
    """An HF Llama tokenizer (tokenizers backend) built from the local Mistral vocab file."""
    # function-level: transformers is heavy to import; only when an LLM or tokenizer is built
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    # The file is named tokenizer.model.v1, which transformers' own loader does not take for a
    # SentencePiece model (it checks the '.model' suffix), so the extractor is called directly.
    kwargs = SentencePieceExtractor(str(mistral_vocab_file())).extract(LlamaTokenizer.model)
    return LlamaTokenizer(**kwargs)


def add_task_tokens(tokenizer, pairs: Sequence[TaskPair] = ()) -> int:
    """Add the task tokens (`pair_tokens(pairs)`) as special tokens, the official 7 first;
    returns how many were new."""
    present = set(tokenizer.get_vocab())
    new = [t for t in pair_tokens(pairs) if t not in present]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    return len(new)


RELEASE_TOKENIZER_CLASS = "MultimodalLlamaTokenizer"  # tokenizer_class of the release's files


def _release_tokenizer(folder: Path, prompt_format: str) -> bool:
    """Whether `folder` holds the release's SentencePiece tokenizer to be read the slow legacy
    way: its tokenizer_config names the release's class (which AutoTokenizer cannot resolve
    without remote code), or the prompt format is the release's and a tokenizer.model is there."""
    if not (folder / "tokenizer.model").is_file():
        return False
    if prompt_format == "videochat-tpo":
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        declared = json.loads(config.read_text()).get("tokenizer_class")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{config}: not a JSON object ({err})") from err
    return declared == RELEASE_TOKENIZER_CLASS


def load_tokenizer(cfg: LLMConfig, pairs: Sequence[TaskPair] = ()):
    """The LLM's tokenizer with the task tokens (of `pairs` too) added and a pad token set.
    Local files only."""
    if cfg.tokenizer == MISTRAL_COMMON:
        tokenizer = mistral_tokenizer()
    else:
        # function-level: transformers is heavy to import; only when an LLM or tokenizer is built
        from transformers import AutoTokenizer

        folder = Path(cfg.tokenizer)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"llm.tokenizer: '{cfg.tokenizer}' is neither 'mistral-common' nor a local folder "
                "(for build/assets/smollm2 run `make assets`)"
            )
        if _release_tokenizer(folder, cfg.prompt_format):
            # function-level: transformers is heavy to import; only when a tokenizer is built
            from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

            # The release's MultimodalLlamaTokenizer is transformers' slow legacy LlamaTokenizer:
            # each text chunk between added tokens gets SentencePiece's dummy prefix ("▁"), which
            # the fast tokenizer does not reproduce; its BOS is added by the collator.
            tokenizer = SentencePieceBackend.from_pretrained(
                str(folder), local_files_only=True, legacy=True
            )
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    add_task_tokens(tokenizer, pairs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise ValueError(f"llm.tokenizer '{cfg.tokenizer}': tokenizer has no eos token")
    return tokenizer


class TaskTokens(nn.Module):
    """Learned input embeddings of the content tokens and the <track_box> box encoder.

    `attach(embedding)` registers a forward hook on the LLM's input embedding layer that puts
    the learned vectors at content-token positions, so training and generation (where HF
    `generate` embeds each new token itself) share one mechanism.
    """

    def __init__(
        self, ids: TaskTokenIds, width: int, box_hidden: int, init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.ids = ids
        self.register_buffer("content_ids", torch.tensor(ids.content), persistent=False)
        n = len(ids.content)
        start = (
            init.detach().expand(n, width).clone() if init is not None else torch.zeros(n, width)
        )
        self.content = nn.Parameter(start)  # [n_heads, d_llm]: one per content token
        self.box_encoder = nn.Sequential(
            nn.Linear(4, box_hidden), nn.ReLU(), nn.Linear(box_hidden, width)
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The head of each content token, by head index."""
        return self.ids.names

    def index(self, name: str) -> int:
        """Head index of head `name` (the position of its task pair)."""
        if name not in self.ids.names:
            raise KeyError(f"no task tokens for head {name!r}; heads: {list(self.ids.names)}")
        return self.ids.names.index(name)

    def head_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[b, s] long: the head index of each content token, else -1."""
        match = input_ids.unsqueeze(-1) == self.content_ids  # [b, s, n_heads]
        return torch.where(match.any(-1), match.long().argmax(-1), -1)

    def forward(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Replace the embeddings [b, s, d] at content-token positions by the learned vectors.

        Called through the module (the embedding hook does), so ZeRO-3 gathers `content`."""
        head = self.head_index(input_ids)  # [b, s]
        rows = self.content[head.clamp(min=0)].to(embeds.dtype)  # [b, s, d]
        return torch.where(head.unsqueeze(-1) >= 0, rows, embeds)

    def encode_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Normalised xyxy boxes [n, 4] -> <track_box> embeddings [n, d_llm]."""
        return self.box_encoder(boxes.to(self.content.dtype))

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self(args[0], output)

    def attach(self, embedding: nn.Module) -> RemovableHandle:
        """Hook the LLM's input embedding layer so content tokens get the learned vectors."""
        return embedding.register_forward_hook(self._hook)

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"task_tokens": content vectors + box encoder}."""
        return {"task_tokens": list(self.parameters())}


def build_task_tokens(
    cfg: TaskTokenConfig, ids: TaskTokenIds, width: int, init: torch.Tensor | None = None
) -> TaskTokens:
    """TaskTokens for an LLM of `width`; `init` [d] (the mean input embedding) seeds the vectors."""
    return TaskTokens(ids, width, cfg.box_hidden, init)
