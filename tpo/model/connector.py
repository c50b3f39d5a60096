"""Q-Former connector: vision patches -> 32 + 64 learned queries -> LLM-width visual tokens.

The Q-Former is transformers' InstructBLIP Q-Former (word + position embeddings for optional
instruction text, cross-attention every `cross_attention_freq` layers, a separate query FFN),
the BLIP-2 Q-Former of the official release with the same tensor layout.

Parameter names against the official checkpoint (`videochat-tpo` safetensors):
    qformer.bert.embeddings.{word,position}_embeddings.* -> qformer.embeddings.{same}.*
    qformer.bert.embeddings.LayerNorm.*                  -> qformer.embeddings.layernorm.*
    qformer.bert.embeddings.position_ids                 -> (non-persistent buffer, not stored)
    qformer.bert.encoder.layer.N.attention.self.*        -> qformer.encoder.layer.N.attention.attention.*
    qformer.bert.encoder.layer.N.crossattention.self.*   -> qformer.encoder.layer.N.crossattention.attention.*
    qformer.bert.encoder.layer.N.<other>                 -> qformer.encoder.layer.N.<other>
    query_tokens, extra_query_tokens, project_up.*       -> identical
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

from tpo.config.model import ConnectorConfig
from tpo.model.vision import read_safetensors

log = logging.getLogger(__name__)


class QFormerConnector(nn.Module):
    """patches [b, n, d_v] (+ optional instruction text) -> visual tokens [b, q, d_llm]."""

    def __init__(self, cfg: ConnectorConfig, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.cfg = cfg
        qcfg = InstructBlipQFormerConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attn_dropout,
            max_position_embeddings=cfg.max_position,
            cross_attention_frequency=cfg.cross_attention_freq,
            encoder_hidden_size=vision_width,
            initializer_range=cfg.init_std,
        )
        self.qformer = InstructBlipQFormerModel(qcfg)
        # the learned queries start as N(0, init_std): BLIP-2 and the official release use 0.02
        self.query_tokens = nn.Parameter(torch.empty(1, cfg.num_query, cfg.hidden))
        self.extra_query_tokens = nn.Parameter(torch.empty(1, cfg.extra_query, cfg.hidden))
        nn.init.normal_(self.query_tokens, std=cfg.init_std)
        nn.init.normal_(self.extra_query_tokens, std=cfg.init_std)
        self.project_up = nn.Linear(cfg.hidden, llm_width)
        self.num_tokens = cfg.num_query + cfg.extra_query

    def forward(
        self,
        patches: Tensor,
        patch_mask: Tensor | None = None,
        instruction_ids: Tensor | None = None,
        instruction_mask: Tensor | None = None,
    ) -> Tensor:
        """patches [b, n, d_v], patch_mask [b, n] (1 = attend), instruction_ids/mask [b, s]
        (Q-Former vocabulary) -> visual tokens [b, q, d_llm]."""
        if patches.ndim != 3:
            raise ValueError(f"connector: expected patches [b, n, d_v], got {tuple(patches.shape)}")
        if instruction_mask is not None and instruction_ids is None:
            raise ValueError("connector: instruction_mask given without instruction_ids")
        b = patches.shape[0]
        queries = torch.cat([self.query_tokens, self.extra_query_tokens], 1).expand(b, -1, -1)
        attention_mask = None
        if instruction_ids is not None:
            if instruction_mask is None:
                instruction_mask = torch.ones_like(instruction_ids)
            query_mask = instruction_mask.new_ones(b, self.num_tokens)
            attention_mask = torch.cat([query_mask, instruction_mask], 1)  # [b, q+s]
        out = self.qformer(
            input_ids=instruction_ids,
            attention_mask=attention_mask,
            query_embeds=queries,
            encoder_hidden_states=patches.to(self.query_tokens.dtype),
            encoder_attention_mask=patch_mask,
        )
        return self.project_up(out.last_hidden_state[:, : self.num_tokens])  # [b, q, d_llm]

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """connector: every parameter; connector_proj: the projection only."""
        return {
            "connector": list(self.parameters()),
            "connector_proj": list(self.project_up.parameters()),
        }


@dataclass
class BertInitReport:
    """Outcome of a BERT initialisation: Q-Former names loaded, Q-Former names left at their
    init (the cross-attention), BERT names not used (token types, pooler, heads)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def _qformer_targets(bert_key: str) -> list[str]:
    """BERT parameter name -> Q-Former names it initialises (BLIP-2 recipe); [] if none."""
    name = bert_key.removeprefix("bert.")
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )
    if name.startswith(("embeddings.word_embeddings.", "embeddings.position_embeddings.")):
        return [name]
    if name.startswith("embeddings.LayerNorm."):
        return ["embeddings.layernorm." + name.removeprefix("embeddings.LayerNorm.")]
    match = _LAYER.fullmatch(name)
    if match is None:
        return []
    i, rest = match.groups()
    prefix = f"encoder.layer.{i}."
    if rest.startswith("attention.self."):
        return [prefix + "attention.attention." + rest.removeprefix("attention.self.")]
    if rest.startswith("attention.output."):
        return [prefix + rest]
    if rest.startswith("intermediate."):  # the query FFN starts as a copy of the text FFN
        return [prefix + rest, prefix + "intermediate_query." + rest.removeprefix("intermediate.")]
    if rest.startswith("output."):
        return [prefix + rest, prefix + "output_query." + rest.removeprefix("output.")]
    return []


def _read_bert_state(folder: Path) -> dict[str, Tensor]:
    """The weights of a local HF BERT folder (safetensors, sharded safetensors, or .bin)."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return read_safetensors(folder / name)
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"connector.bert_init: {folder} holds no model.safetensors(.index.json) or pytorch_model.bin"
    )


@torch.no_grad()
def init_qformer_from_bert(qformer: InstructBlipQFormerModel, folder: str | Path) -> BertInitReport:
    """Copy a local BERT's embeddings, self-attention and FFN (also into the query FFN) into
    `qformer`; cross-attention stays at its init. Shapes must match (e.g. hidden size)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"connector.bert_init: {folder} is not a folder")
    config_file = folder / "config.json"
    if config_file.is_file():
        bert = json.loads(config_file.read_text())
        hidden = bert.get("hidden_size")
        if hidden is not None and hidden != qformer.config.hidden_size:
            raise ValueError(
                f"{config_file}: hidden_size {hidden} != connector.hidden {qformer.config.hidden_size}"
            )
    params = dict(qformer.named_parameters())
    report = BertInitReport()
    for key, tensor in _read_bert_state(folder).items():
        targets = [t for t in _qformer_targets(key) if t in params]
        if not targets:
            report.unused.append(key)
            continue
        for target in targets:
            if params[target].shape != tensor.shape:
                raise ValueError(
                    f"{folder}: BERT tensor {key} {tuple(tensor.shape)} does not fit Q-Former "
                    f"{target} {tuple(params[target].shape)}"
                )
            params[target].copy_(tensor)
            report.loaded.append(target)
    done = set(report.loaded)
    report.missing = [name for name in params if name not in done]
    log.info(
        "Q-Former from %s: %d loaded, %d kept at init, %d BERT tensors unused",
        folder,
        len(report.loaded),
        len(report.missing),
        len(report.unused),
    )
    return report


def build_connector(cfg: ConnectorConfig, vision_width: int, llm_width: int) -> QFormerConnector:
    """The connector of `cfg`; Q-Former initialised from `cfg.bert_init` when set (not on meta)."""
    connector = QFormerConnector(cfg, vision_width, llm_width)
    if cfg.bert_init is not None and not connector.project_up.weight.is_meta:
        init_qformer_from_bert(connector.qformer, cfg.bert_init)
    return connector
