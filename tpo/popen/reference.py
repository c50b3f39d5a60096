"""The frozen reference policy pi_ref of POPEN's textual DPO loss.

Two kinds (`popen.reference`):
- "copy": a snapshot of the MLLM's trained tensors at the start of the preference phase. Only
  the tensors a stage trains are copied (the frozen rest cannot drift), and the reference
  forward swaps them in with `torch.func.functional_call`, so the result equals a frozen deep
  copy of the MLLM at the cost of the trained groups only. The snapshot lives in non-persistent
  buffers: it follows `.to()` and bf16 casts but is not in `parameters()` (DeepSpeed and the
  optimizer never see it) nor in `state_dict()` (checkpoints do not store it; a resumed run
  rebuilds it from the same `init_from` checkpoint, see `tpo.popen.objective`).
- "disable_adapters": peft's `disable_adapter()` context (TRL + peft): the base LLM without its
  LoRA adapters. It needs no memory but is the pre-LoRA base model, and parts trained outside
  the adapters (connector, vision, task-token vectors) move with training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from tpo.model.mllm import MLLM


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with every submodule in eval mode (no dropout), then restore each flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class ReferencePolicy(nn.Module):
    """pi_ref: `logits(mllm, ...)` scores sequences under no_grad, in eval mode.

    "copy" needs `capture(mllm, params)` once (the objective captures lazily at its first
    preference step when no builder did); "disable_adapters" needs a peft LLM.
    """

    def __init__(self, mode: str = "copy") -> None:
        super().__init__()
        if mode not in ("copy", "disable_adapters"):
            raise ValueError(f"popen.reference must be 'copy' or 'disable_adapters', got {mode!r}")
        self.mode = mode
        self.names: list[str] = []  # MLLM parameter name of snapshot buffer `t{i}`

    @property
    def captured(self) -> bool:
        """Whether the reference is ready (always, for "disable_adapters")."""
        return self.mode == "disable_adapters" or bool(self.names)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """MLLM parameter name -> frozen tensor ("copy"; empty before `capture`)."""
        return {name: getattr(self, f"t{i}") for i, name in enumerate(self.names)}

    @torch.no_grad()
    def capture(self, mllm: MLLM, params: Iterable[nn.Parameter]) -> int:
        """Snapshot `params` (parameters of `mllm`) as the reference; returns elements copied.

        "disable_adapters" captures nothing. A second capture replaces the first.
        """
        if self.mode != "copy":
            return 0
        wanted = {id(p) for p in params}
        for i in range(len(self.names)):
            delattr(self, f"t{i}")
        self.names = []
        total = 0
        for name, p in mllm.named_parameters():
            if id(p) in wanted:
                self.register_buffer(f"t{len(self.names)}", p.detach().clone(), persistent=False)
                self.names.append(name)
                total += p.numel()
        if not self.names:
            raise ValueError(
                "popen.reference 'copy': none of the stage's trained parameters belongs to the "
                "MLLM, so the reference would equal the policy; train an MLLM group"
            )
        return total

    @torch.no_grad()
    def logits(
        self,
        mllm: MLLM,
        frames: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Reference logits `[b, s, V]` of the sequences (no gradient, dropout off)."""
        if not self.captured:
            raise RuntimeError("ReferencePolicy 'copy': capture() the reference before using it")
        args = (frames, input_ids, attention_mask)
        kwargs = {"return_logits": True}
        with eval_mode(mllm):
            if self.mode == "disable_adapters":
                if not mllm.llm.is_peft:
                    raise ValueError(
                        "popen.reference 'disable_adapters' needs LoRA (model.llm.lora.enabled); "
                        "use 'copy'"
                    )
                with mllm.llm.model.disable_adapter():
                    out = mllm(*args, **kwargs)
            else:
                out = torch.func.functional_call(
                    mllm, self.snapshot(), args, kwargs, tie_weights=True, strict=False
                )
        return out.logits
