"""Config schema of the optional POPEN preference objective (see docs/popen.md).

Switched on with `popen.enabled: true` on top of a stage config: the stage's own objective
(weighted by `base_weight`) gets a textual DPO loss L_t on the edited tokens and a segmentation
preference loss L_s over collected `<tracking>` embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_TYPES = ("sigmoid", "ipo", "robust")  # as tpo.popen.losses.dpo_loss
SIMILARITIES = ("l2", "cosine")
REFERENCES = ("copy", "disable_adapters")


@dataclass
class PopenConfig:
    """POPEN losses and their data.

    reference: the frozen policy of L_t.
      "copy": the trained tensors of the MLLM as they are at the start of the preference
        phase (the `train.init_from` checkpoint), kept as a frozen snapshot outside
        `parameters()` / `state_dict()`; only trained tensors are copied (frozen ones cannot
        drift), so the cost is the size of the trained groups.
      "disable_adapters": peft's `disable_adapter()` context, as TRL does with peft: the base
        LLM without LoRA. It costs no memory but is a different reference: it drops everything
        LoRA learned in earlier stages, and parts trained outside the adapters (connector,
        vision, task-token vectors, a trained base LLM) move with training. It needs LoRA on.
    Curriculum: seg pairs are high x low until the switch ("coarse"), then high x medium and
    medium x low ("fine"); the switch is an optimizer step or an epoch (one pass over the seg
    set by all ranks); with neither set, coarse pairs throughout.
    """

    enabled: bool = False
    textual: str | None = None  # jsonl of textual preferences (tpo.popen.textual)
    segmentation: str | None = None  # folder written by the collection (tpo.popen.collect)
    beta_t: float = 0.1  # DPO beta of L_t
    loss_type: str = "sigmoid"  # "sigmoid" (DPO) | "ipo" | "robust"
    label_smoothing: float = 0.0  # conservative DPO; 0 is plain DPO
    beta_s: float = 10.0  # preference coefficient of L_s (the paper's beta)
    similarity: str = "l2"  # s(h, h') of L_s: "l2" (negative squared L2) | "cosine"
    weight_t: float = 1.0
    weight_s: float = 1.0
    reference: str = "copy"  # "copy" | "disable_adapters" (see above)
    curriculum_switch_step: int | None = None  # optimizer step where "fine" pairs start
    curriculum_switch_epoch: int | None = None  # or the epoch of the seg set where they start
    pairs_per_step: int = 2  # textual pairs and seg pairs (each) per micro-batch
    base_weight: float = 1.0  # weight of the stage's own objective (0: preference losses only)
    # collection of the segmentation preferences (tpo.popen.collect)
    n: int = 30  # perturbed inputs per sample
    n_rects: int = 3  # noisy rectangles per perturbed input
    noise_std: float = 1.0  # std of the Gaussian noise, in normalised pixel units
    seed: int = 0
    # inference ensemble
    ensemble_k: int = 3

    def __post_init__(self) -> None:
        choices = {
            "loss_type": LOSS_TYPES,
            "similarity": SIMILARITIES,
            "reference": REFERENCES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"popen.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}"
                )
        for key in ("beta_t", "beta_s", "noise_std"):
            if not getattr(self, key) > 0:
                raise ValueError(f"popen.{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_t", "weight_s", "base_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"popen.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"popen.label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
            )
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("popen.label_smoothing must be 0 with popen.loss_type 'ipo'")
        for key in ("pairs_per_step", "n", "n_rects", "ensemble_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"popen.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("curriculum_switch_step", "curriculum_switch_epoch"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"popen.{key} must be >= 0 or null, got {value}")
        if self.curriculum_switch_step is not None and self.curriculum_switch_epoch is not None:
            raise ValueError(
                "popen.curriculum_switch_step and popen.curriculum_switch_epoch: set one, not both"
            )
        if self.enabled:
            if self.textual is None and self.segmentation is None:
                raise ValueError(
                    "popen.enabled needs popen.textual (jsonl) or popen.segmentation (folder)"
                )
            if self.base_weight == 0 and not (
                (self.textual and self.weight_t > 0) or (self.segmentation and self.weight_s > 0)
            ):
                raise ValueError(
                    "popen: base_weight is 0 and no preference loss is on "
                    "(set popen.weight_t with popen.textual or popen.weight_s with "
                    "popen.segmentation)"
                )
