"""The one engine that runs any stage through DeepSpeed: setup, train, save, resume.

Parts are injected: a model builder `(cfg, stage) -> nn.Module` whose forward takes a batch
and returns a dict with a scalar `loss` (plus named losses to log) and which declares
`trainable_groups()`, and a data builder `(cfg, stage, dist) -> TrainData`.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tpo.config.load import to_yaml
from tpo.config.schema import TPOConfig
from tpo.stages.base import Stage
from tpo.train import checkpoint as ckpt_io
from tpo.train.distributed import DistInfo, barrier, gather, in_fixed_order, init_distributed
from tpo.train.ds_config import build_ds_config
from tpo.train.groups import count, optimizer_groups, select_trainable
from tpo.train.init_folder import is_inference_folder
from tpo.train.logger import RunLogger
from tpo.train.schedule import build_scheduler

log = logging.getLogger(__name__)


class TrainData(Protocol):
    """What the engine needs from the data side."""

    bad_samples: Counter

    def iterate(self, start: int) -> Iterator[Any]:
        """Micro-batches of this rank from position `start` (micro-batches already consumed)."""
        ...

    def state_dict(self) -> dict:
        """This rank's bookkeeping a resumed run needs (bad samples found and counted), JSON."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        ...


ModelBuilder = Callable[[TPOConfig, Stage], nn.Module]
DataBuilder = Callable[[TPOConfig, Stage, DistInfo], TrainData]


def resolve_init(cfg: TPOConfig, stage: Stage) -> Path | None:
    """The checkpoint a stage starts from: `train.init_from`, else the previous stage's final."""
    if cfg.train.init_from:
        return Path(cfg.train.init_from)
    if stage.init_from is None:
        return None
    prev = Path(cfg.train.output_dir).parent / stage.init_from / "final"
    if not (prev / ckpt_io.STATE).is_file():
        raise FileNotFoundError(
            f"stage {stage.number} starts from {prev}, which holds no checkpoint: run stage "
            f"{stage.number - 1} first (make stage{stage.number - 1}) or set train.init_from"
        )
    return prev


class StageRunner:
    """Runs one stage: builds the model and data, trains through DeepSpeed, checkpoints."""

    def __init__(
        self, cfg: TPOConfig, stage: Stage, model_builder: ModelBuilder, data_builder: DataBuilder
    ):
        self.cfg, self.stage = cfg, stage
        self.model_builder, self.data_builder = model_builder, data_builder
        self.out = Path(cfg.train.output_dir)

    # ---- setup -------------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> None:
        """Build model, optimizer, DeepSpeed engine and data (once; `run` calls it if needed)."""
        # function-level: deepspeed is heavy to import; only training runs need it
        import deepspeed

        if getattr(self, "engine", None) is not None:
            return

        cfg, stage = self.cfg, self.stage
        self.dist = init_distributed()
        self.resume_from = ckpt_io.latest_checkpoint(self.out) if resume else None
        if resume and self.resume_from is None:
            log.warning("--resume: no checkpoint under %s; starting from the beginning", self.out)
        if self.resume_from is not None:
            check_resume_world(self.resume_from, self.dist.world_size)
        init = self.resume_from or resolve_init(cfg, stage)
        if self.resume_from is None and self.dist.is_main:
            clear_earlier_run(self.out, init)
        barrier()
        from_folder = init is not None and is_inference_folder(init)
        if from_folder and cfg.model.base_weights is None:
            # an inference folder holds every weight: the build starts from it (and so does
            # every later rebuild of this run's checkpoints, from their saved config)
            cfg.model.base_weights = str(Path(init).resolve())
        self.model = self.model_builder(cfg, stage)  # seeds its own init (model.init_seed)
        torch.manual_seed(cfg.train.seed + self.dist.rank)  # dropout etc. differ per rank
        self.inherited: list[str] = []
        if init is not None and not from_folder:
            state = ckpt_io.load_trained_weights(self.model, init)
            self.inherited = [
                g for g in state["trained_groups"] if g not in stage.groups(cfg.train.extra_groups)
            ]
        if cfg.train.bf16:
            # DeepSpeed's bf16 mode casts parameters only; buffers used in matmuls (e.g. timm's
            # zero k-bias) must match, so the whole module goes to bf16 first.
            self.model.to(torch.bfloat16)
        chosen = select_trainable(self.model, stage.groups(cfg.train.extra_groups))
        self.groups = list(chosen)
        stored = ckpt_io.group_names(self.model, self.inherited + self.groups)
        # frozen parameters never change: fingerprint them now, while they are whole
        self.base_fingerprint = ckpt_io.base_fingerprint(self.model, set(stored))
        trained = [p for ps in chosen.values() for p in ps]  # select_trainable keeps each once
        n_train = count(trained)
        n_all = count(list(self.model.parameters()))
        if self.dist.is_main:
            sizes = ", ".join(f"{g} {count(ps) / 1e6:.3f}M" for g, ps in chosen.items())
            log.info(
                "stage %d (%s): training %s of %s params: %s",
                stage.number,
                stage.name,
                n_train,
                n_all,
                sizes,
            )
        t = cfg.train
        self.ds_config = build_ds_config(t, self.dist.world_size)
        zero = self.ds_config.get("zero_optimization", {})
        optim = _adamw_class(zero)(
            optimizer_groups(chosen, t.lr, t.weight_decay, stage.lr_scale, t.lr_groups),
            lr=t.lr,
            betas=tuple(t.betas),
            eps=t.adam_eps,
        )
        sched = build_scheduler(optim, t.max_steps, t.warmup_ratio, t.min_lr_ratio)
        if zero.get("stage") == 3:
            check_zero3_routing(stage, self.dist.world_size, t.deepspeed)
            _register_external_parameters(self.model)
        self.accum = self.ds_config["gradient_accumulation_steps"]
        if self.dist.world_size > 1 and zero.get("stage", 0) in (1, 2):
            # ZeRO-1/2 need every rank to ready gradients in one order (`in_fixed_order`);
            # ZeRO-3 on several ranks trains only stages whose graphs never vary
            self.model.register_forward_hook(functools.partial(_loss_in_fixed_order, trained))
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optim, lr_scheduler=sched, config=self.ds_config
        )
        self.dtype = torch.bfloat16 if t.bf16 else torch.float32
        self.start_step = 0
        if self.resume_from is not None:
            self.engine.load_checkpoint(
                str(self.resume_from),
                tag="ds",
                load_module_strict=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
            # the weights were loaded before `initialize` (whole, as ZeRO-3 needs them) and the
            # DeepSpeed checkpoint restored the trained ones with their optimizer state
            self.start_step = ckpt_io.read_state(self.resume_from)["step"]
            ckpt_io.load_rng(self.resume_from, self.dist.rank)
        self.data = self.data_builder(cfg, stage, self.dist)
        if self.resume_from is not None:
            self.data.load_state_dict(ckpt_io.load_data_state(self.resume_from, self.dist.rank))
        self.logger = RunLogger(
            self.out, self.start_step, tensorboard=t.tensorboard, enabled=self.dist.is_main
        )

    # ---- train -------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> Path:
        """Train to `train.max_steps` (continuing the latest checkpoint with `resume`)."""
        # function-level: tqdm only when a progress bar is shown
        from tqdm import tqdm

        self.setup(resume)
        t = self.cfg.train
        batches = self.data.iterate(self.start_step * self.accum)
        bar = tqdm(
            range(self.start_step, t.max_steps),
            initial=self.start_step,
            total=t.max_steps,
            desc=f"stage {self.stage.number}",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        self.engine.train()
        for step in bar:
            tic, sums, n_samples, wait = time.perf_counter(), Counter(), 0, 0.0
            lrs = {
                f"lr/{g.get('name', 'group')}": g["lr"] for g in self.engine.optimizer.param_groups
            }
            for _ in range(self.accum):
                t0 = time.perf_counter()
                batch = next(batches).to(self.dist.device, self.dtype)
                wait += time.perf_counter() - t0
                out = self.engine(batch)
                self.engine.backward(out["loss"])
                self.engine.step()
                n_samples += len(batch)
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        sums[k] += float(v.detach())
            metrics, n_samples, bad = self._over_ranks(
                {k: v / self.accum for k, v in sums.items()}, n_samples
            )
            elapsed = time.perf_counter() - tic
            metrics["samples_per_s"] = n_samples / max(elapsed, 1e-9)
            metrics["data_wait"] = wait / max(elapsed, 1e-9)  # this rank's share of the step
            metrics["grad_norm"] = _float(self.engine.get_global_grad_norm())
            metrics.update(lrs)
            metrics["bad_samples"] = sum(bad.values())
            done = step + 1
            if done % t.log_every == 0 or done == t.max_steps:
                self.logger.log(done, metrics)
            bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                sps=f"{metrics['samples_per_s']:.1f}",
            )
            if t.save_every and done % t.save_every == 0 and done < t.max_steps:
                self.save(self.out / "checkpoints" / f"step_{done:06d}", done)
                self._prune()
        close = getattr(batches, "close", None)
        if callable(close):  # a generator over a DataLoader: stop its workers now
            close()
        final = self.save(self.out / "final", t.max_steps)
        self.logger.close()
        bad = self._over_ranks({}, 0)[2]
        if bad and self.dist.is_main:
            log.warning(
                "stage %d skipped %d bad samples: %s",
                self.stage.number,
                sum(bad.values()),
                dict(bad),
            )
        return final

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, folder: Path, step: int) -> Path:
        """Write a complete checkpoint into `folder` atomically (every rank takes part)."""
        tmp = folder.with_name(folder.name + ".tmp")
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        groups = list(dict.fromkeys(self.inherited + self.groups))
        self.engine.save_checkpoint(str(tmp), tag="ds", exclude_frozen_parameters=True)
        ckpt_io.save_rng(tmp, self.dist.rank)
        ckpt_io.save_data_state(tmp, self.dist.rank, self.data.state_dict())
        tensors = ckpt_io.trained_state(self.model, groups, keep=self.dist.is_main)
        bad = self._over_ranks({}, 0)[2]
        if self.dist.is_main:
            ckpt_io.save_weights(tmp / ckpt_io.WEIGHTS, tensors)
            (tmp / "config.yaml").write_text(to_yaml(self.cfg))
            ckpt_io.write_json(tmp / "deepspeed.json", self.ds_config)
            ckpt_io.write_json(
                tmp / ckpt_io.STATE,
                {
                    "format": "tpo-checkpoint-1",
                    "stage": self.stage.number,
                    "stage_name": self.stage.name,
                    "step": step,
                    "micro_batches": step * self.accum,
                    "world_size": self.dist.world_size,
                    "trained_groups": groups,
                    "base_fingerprint": self.base_fingerprint,
                    "bad_samples": dict(bad),
                },
            )
        barrier()
        if self.dist.is_main:
            ckpt_io.finalize(tmp, folder)
        barrier()
        return folder

    def _over_ranks(self, metrics: dict, n_samples: int) -> tuple[dict, int, Counter]:
        """Every rank's step metrics averaged (each over the ranks that report it), micro-batch
        samples summed, and the bad samples skipped so far counted over all ranks (collective)."""
        parts = gather((metrics, n_samples, dict(self.data.bad_samples)))
        mean = {}
        for key in dict.fromkeys(k for m, _, _ in parts for k in m):
            values = [m[key] for m, _, _ in parts if key in m]
            mean[key] = sum(values) / len(values)
        bad = Counter()
        for _, _, b in parts:
            bad.update(b)
        return mean, sum(n for _, n, _ in parts), bad

    def _prune(self) -> None:
        if not self.dist.is_main:
            return
        root = self.out / "checkpoints"
        steps = sorted(
            (p for p in root.glob("step_*") if p.name[5:].isdigit()), key=lambda p: p.name
        )
        for old in steps[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def _float(v: Any) -> float:
    if v is None:
        return float("nan")
    return float(v.item() if hasattr(v, "item") else v)


def _loss_in_fixed_order(params: list, module: nn.Module, args: Any, out: dict) -> dict:
    """Forward hook: the training loss, handing its gradients over in the order of `params`."""
    loss = out.get("loss") if isinstance(out, dict) else None
    if loss is None or not (torch.is_grad_enabled() and loss.requires_grad):
        return out
    return {**out, "loss": in_fixed_order(loss, params)}


def clear_earlier_run(out: Path, init: Path | None) -> None:
    """Before a fresh run in `out`: remove an earlier run's checkpoints and TensorBoard events,
    which a later `--resume` would otherwise continue from (or mix into this run's curves)."""
    old = [out / name for name in ("checkpoints", "final", "tb") if (out / name).exists()]
    if not old:
        return
    if init is not None and any(Path(init).resolve().is_relative_to(p.resolve()) for p in old):
        raise ValueError(
            f"this run starts from {init}, inside train.output_dir={out}, whose earlier run a "
            "fresh run clears: copy that checkpoint elsewhere, pick another output_dir, or "
            "continue it with --resume"
        )
    log.warning("%s holds an earlier run: removing its %s", out, ", ".join(p.name for p in old))
    for p in old:
        shutil.rmtree(p)


def check_resume_world(folder: Path, world_size: int) -> None:
    """Refuse to resume a checkpoint that a different number of ranks wrote: DeepSpeed keeps the
    optimizer state partitioned over the ranks, and each rank's data stream depends on them."""
    saved = ckpt_io.read_state(folder).get("world_size", world_size)
    if saved != world_size:
        raise ValueError(
            f"--resume: {folder} was written by {saved} rank(s), but this run has {world_size}. "
            f"Resume with {saved} rank(s), or start a new run from its weights (fresh optimizer "
            f"and schedule) with train.init_from={folder}"
        )


def check_zero3_routing(stage: Stage, world_size: int, ds_file: str) -> None:
    """Refuse ZeRO-3 on several ranks for a stage whose heads train. ZeRO-3 gathers each
    module's weights and reduces its gradients with collectives that every rank must join, and
    two things still make the ranks call different modules: (1) a head runs only on ranks whose
    micro-batch holds its task (data-dependent routing in `TPOModel.forward`), and (2) the mask
    head's SAM2 image-feature cache (`heads/sam2_backend.py`) runs the sharded image encoder only
    for frames it misses, which differ by rank. (The temporal head's frames now come decoded in
    the batch and are encoded on every step, so that cache no longer differs.) Even with every
    head run on every rank, a head's graph would follow its sample count, and ZeRO-3, like
    ZeRO-1/2, reduces gradients in the order they finish; `in_fixed_order` cannot reorder them
    there, since outside their module's forward ZeRO-3 parameters are empty shards."""
    if world_size > 1 and stage.head_losses:
        raise ValueError(
            f"train.deepspeed={ds_file}: ZeRO-3 on {world_size} ranks cannot train stage "
            f"{stage.number} ({stage.name}): its task heads run only where a micro-batch holds "
            "their task, and SAM2's image encoder only on the frames its feature cache misses, "
            "both of which differ by rank, while ZeRO-3's per-module collectives need every "
            "rank in step. Use configs/deepspeed/zero2.json (the official recipe) or its "
            "offload variant, or one rank"
        )


def _register_external_parameters(model: nn.Module) -> None:
    """Tell ZeRO-3 about weights read outside their own module's forward, as modules declare
    them (`zero3_external_parameters()`), so it gathers them with the module that reads them."""
    # function-level: deepspeed is heavy to import; only training runs need it
    import deepspeed

    for module in model.modules():
        declare = getattr(module, "zero3_external_parameters", None)
        if callable(declare):
            for reader, param in declare():
                deepspeed.zero.register_external_parameter(reader, param)


def _adamw_class(zero: dict) -> Callable[..., torch.optim.Optimizer]:
    """AdamW, or DeepSpeed's vectorised CPU AdamW when the optimizer state is offloaded to the
    CPU (DeepSpeed refuses a torch optimizer there; its C++ op is built once, cached)."""
    if zero.get("offload_optimizer", {}).get("device", "none") == "none":
        return torch.optim.AdamW
    # function-level: deepspeed is heavy to import; only training runs need it
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return functools.partial(DeepSpeedCPUAdam, adamw_mode=True)
