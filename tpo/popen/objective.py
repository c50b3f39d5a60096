"""POPEN's preference losses on top of a stage's own objective.

total = base_weight * (the stage's TPOModel loss) + weight_t * L_t + weight_s * L_s, with
- L_t: DPO restricted to the edited tokens of (rejected y, chosen y_c) pairs, log-probs from the
  MLLM's logits and from the frozen reference policy (`tpo.popen.reference`);
- L_s: Bradley-Terry preference of the current `<tracking>` hidden state of a clean sample for
  the collected embedding of the better mask over that of the worse one.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tpo.config.popen import PopenConfig
from tpo.config.schema import TPOConfig
from tpo.heads.mask import MaskHead
from tpo.model.sharding import zero_through_all
from tpo.model.tpo_model import TPOModel
from tpo.popen.data import PopenBatch
from tpo.popen.losses import dpo_loss, masked_logp_sum, segmentation_preference_loss, token_logps
from tpo.popen.pairs import SegPairs, TextualPairs
from tpo.popen.reference import ReferencePolicy
from tpo.stages.base import Stage
from tpo.train.builders import build_train_model
from tpo.train.checkpoint import load_trained_weights
from tpo.train.engine import resolve_init

log = logging.getLogger(__name__)


class PopenObjective(nn.Module):
    """A TPOModel with POPEN's losses; `forward(PopenBatch)` returns "loss" and named parts.

    The TPOModel's children are registered here under their own names (it is kept as a plain
    attribute), so parameter names, and so checkpoints, are exactly those of the TPOModel:
    a POPEN checkpoint loads, exports and resumes like any stage's.
    """

    def __init__(
        self, model: TPOModel, reference: ReferencePolicy, cfg: PopenConfig | None = None
    ) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "tpo", model)  # not a submodule: no "tpo." name prefix
        self.reference = reference
        self.cfg = cfg or PopenConfig()

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """The TPOModel's groups (stages select the same names)."""
        return self.tpo.trainable_groups()

    def train(self, mode: bool = True) -> PopenObjective:
        """Set train/eval mode here and on the wrapped TPOModel."""
        super().train(mode)
        self.tpo.training = mode
        return self

    # ---- L_t ---------------------------------------------------------------------------------
    def edited_logps(self, pairs: TextualPairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs on the edited tokens of each row `[2m]` (chosen rows, then
        rejected): (policy, with gradient; reference, without)."""

        mllm = self.tpo.mllm
        if not self.reference.captured:
            self.capture_reference()
        frames = pairs.frames.repeat(2, 1, 1, 1, 1)  # a pair's two rows share its frames
        out = mllm(frames, pairs.input_ids, pairs.attention_mask, return_logits=True)
        policy = masked_logp_sum(token_logps(out.logits.float(), pairs.labels), pairs.edit_mask)
        ref_logits = self.reference.logits(mllm, frames, pairs.input_ids, pairs.attention_mask)
        ref = masked_logp_sum(token_logps(ref_logits.float(), pairs.labels), pairs.edit_mask)
        return policy, ref.detach()

    def textual_loss(self, groups: list[TextualPairs]) -> dict[str, torch.Tensor]:
        """L_t (mean over the pairs of all groups) and the implicit rewards of chosen / rejected."""

        halves: list[list[torch.Tensor]] = [[], [], [], []]
        for pairs in groups:
            policy, ref = self.edited_logps(pairs)
            m = len(pairs)
            for part, t in zip(halves, (policy[:m], policy[m:], ref[:m], ref[m:])):
                part.append(t)
        loss, chosen, rejected = dpo_loss(
            *(torch.cat(part) for part in halves),
            beta=self.cfg.beta_t,
            loss_type=self.cfg.loss_type,
            label_smoothing=self.cfg.label_smoothing,
        )
        return {
            "loss": loss.mean(),
            "chosen": chosen.mean(),
            "rejected": rejected.mean(),
            "accuracy": (chosen > rejected).float().mean(),
        }

    # ---- L_s ---------------------------------------------------------------------------------
    def tracking_hidden(self, seg: SegPairs) -> torch.Tensor:
        """The first `<tracking>` last-layer hidden state of each clean row, with gradient:
        `[u, d_llm]` (u = rows of the clean batch)."""
        out = self.tpo.mllm(seg.frames, seg.input_ids, seg.attention_mask)
        sel = out.task_head == self.tpo.mllm.task_tokens.index(MaskHead.name)
        hidden, rows = out.task_hidden[sel], out.task_sample[sel]
        first = torch.full((seg.input_ids.shape[0],), -1, dtype=torch.long, device=rows.device)
        order = torch.arange(len(rows), device=rows.device)
        # the first <tracking> of a row is the lowest flat index with that row (batch-major order)
        first = first.scatter_reduce(0, rows, order, reduce="amin", include_self=False)
        missing = (first < 0).nonzero()[:, 0].tolist()
        if missing:
            raise ValueError(
                f"segmentation preferences {[seg.ids[i] for i in missing]}: the clean answer has "
                "no <tracking> token (or it was truncated by model.llm.max_text_len)"
            )
        return hidden[first]

    def segmentation_loss(self, groups: list[SegPairs]) -> dict[str, torch.Tensor]:
        """L_s (mean over the pairs of all groups)."""

        h = torch.cat([self.tracking_hidden(seg)[seg.rows] for seg in groups]).float()
        h_w = torch.cat([seg.h_w for seg in groups]).float()
        h_l = torch.cat([seg.h_l for seg in groups]).float()
        loss = segmentation_preference_loss(
            h, h_w, h_l, beta=self.cfg.beta_s, similarity=self.cfg.similarity
        )
        return {"loss": loss.mean()}

    # ---- total -------------------------------------------------------------------------------
    def forward(self, batch: PopenBatch) -> dict[str, torch.Tensor]:
        """The total under "loss"; for logging, "loss/stage" (and the stage's own "loss/..."
        parts), "loss/popen_t", "loss/popen_s" and the implicit rewards "reward/..." of L_t."""
        c = self.cfg
        parts: dict[str, torch.Tensor] = {}
        total = zero_through_all(self)  # every trainable parameter joins the graph
        if batch.base is not None and c.base_weight > 0:
            base = self.tpo(batch.base)
            total = total + c.base_weight * base["loss"]
            parts["loss/stage"] = base["loss"].detach()
            parts.update({k: v for k, v in base.items() if k != "loss"})
        if batch.textual and c.weight_t > 0:
            t = self.textual_loss(batch.textual)
            total = total + c.weight_t * t["loss"]
            parts["loss/popen_t"] = t["loss"].detach()
            parts["reward/chosen"] = t["chosen"]
            parts["reward/rejected"] = t["rejected"]
            parts["reward/margin"] = t["chosen"] - t["rejected"]
            parts["reward/accuracy"] = t["accuracy"]
        if batch.seg and c.weight_s > 0:
            s = self.segmentation_loss(batch.seg)
            total = total + c.weight_s * s["loss"]
            parts["loss/popen_s"] = s["loss"].detach()
        return {"loss": total, **parts}

    def capture_reference(self, params: list[nn.Parameter] | None = None) -> None:
        """Take the "copy" reference now: `params` (default: the MLLM's trainable parameters)."""
        mllm = self.tpo.mllm
        if params is None:
            params = [p for p in mllm.parameters() if p.requires_grad]
        n = self.reference.capture(mllm, params)
        if n:
            log.info("popen: reference policy = copy of %d trained MLLM elements", n)


def build_popen_model(cfg: TPOConfig, stage: Stage) -> PopenObjective:
    """The stage's TPOModel (`build_train_model`) with POPEN's losses per `cfg.popen`.

    The "copy" reference is taken here from the MLLM tensors of the stage's trained groups as
    the stage's start checkpoint holds them (`train.init_from`, else the previous stage's
    final), i.e. the model at the start of the preference phase; a resumed run rebuilds the
    same reference, since the engine loads the resume checkpoint only after this builder.
    """
    pc = cfg.popen
    model = build_train_model(cfg, stage)
    objective = PopenObjective(model, ReferencePolicy(pc.reference), pc)
    trained = stage.groups(cfg.train.extra_groups)
    declared = model.mllm.trainable_groups()
    if pc.textual is None or pc.weight_t == 0:  # L_s needs no reference policy
        return objective
    if pc.reference == "copy":
        init = resolve_init(cfg, stage)
        if init is not None:
            load_trained_weights(model, init)
        objective.capture_reference([p for g in trained if g in declared for p in declared[g]])
    elif not model.mllm.llm.is_peft:
        raise ValueError(
            "popen.reference 'disable_adapters' needs LoRA (model.llm.lora.enabled); use 'copy'"
        )
    else:
        moving = [g for g in trained if g in declared and g != "lora"]
        if moving:
            log.warning(
                "popen.reference 'disable_adapters': the stage also trains %s outside the LoRA "
                "adapters, so the reference policy moves with them (use 'copy' for a fixed one)",
                moving,
            )
    return objective
