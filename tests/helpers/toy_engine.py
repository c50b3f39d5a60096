"""A tiny regression model and dataset that exercise the stage engine in milliseconds.

Also runnable as a script (used by the resume and 2-process tests):
`python -m tests.helpers.toy_engine OUT_DIR STAGE MAX_STEPS SAVE_EVERY [--resume] [--sleep S]
[--deepspeed JSON]`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tpo.config import TPOConfig, load_config
from tpo.model.sharding import zero_through_all


@dataclass
class ToyBatch:
    x: torch.Tensor  # [b, 4]
    y: torch.Tensor  # [b, 1]
    task: torch.Tensor  # [b] long: which head a sample routes to (routed models)

    def to(self, device: str, dtype: torch.dtype) -> ToyBatch:
        return ToyBatch(self.x.to(device, dtype), self.y.to(device), self.task.to(device))

    def __len__(self) -> int:
        return self.x.shape[0]


class ToyModel(nn.Module):
    """Three 'groups': lora (a), task_tokens (b), temporal_head (c), plus a frozen base.

    `routed`: a second head, region_head (d), and each sample goes to the head its `task` names,
    as TPO routes task tokens: a head runs only when its micro-batch holds one of its samples.
    """

    def __init__(self, sleep: float = 0.0, routed: bool = False):
        super().__init__()
        self.base = nn.Linear(4, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 1)
        self.d = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)) if routed else None
        self.drop = nn.Dropout(0.0 if routed else 0.1)  # routed runs are compared exactly
        self.sleep = sleep

    def trainable_groups(self):
        groups = {
            "lora": list(self.a.parameters()),
            "task_tokens": list(self.b.parameters()),
            "temporal_head": list(self.c.parameters()),
            "connector": list(self.base.parameters()),
            "connector_proj": [self.base.bias],
        }
        if self.d is not None:
            groups["region_head"] = list(self.d.parameters())
        return groups

    def forward(self, batch: ToyBatch):
        if self.sleep:
            time.sleep(self.sleep)
        h = torch.tanh(self.base(batch.x))
        h = torch.tanh(self.b(self.drop(torch.tanh(self.a(h)))))
        if self.d is None:
            loss = ((self.c(h).float() - batch.y) ** 2).mean()
        else:
            loss = torch.zeros(())
            for k, head in enumerate((self.c, self.d)):
                rows = (batch.task == k).nonzero()[:, 0]
                if len(rows):
                    loss = loss + ((head(h[rows]).float() - batch.y[rows]) ** 2).sum()
            loss = loss / len(batch) + zero_through_all(self)
        return {"loss": loss, "loss_mse": loss.detach()}


class ToyData:
    """A fixed regression set. Position k's global batch (micro-batch x world samples) depends
    only on (seed, k); rank r takes its r-th slice, so one rank with a micro-batch of
    micro-batch x world sees the union of what several ranks see. `routed`: the first half of
    each global batch has task 0, the second half task 1 (on 2 ranks, one task per rank).
    `bad_on_rank`: that rank counts one skipped sample per micro-batch (as a loader that met a
    bad one would); `load_skips`: annotations skipped at load time (counted on rank 0)."""

    def __init__(
        self,
        seed: int,
        micro_batch: int,
        rank: int,
        world: int,
        routed: bool = False,
        bad_on_rank: int | None = None,
        load_skips: int = 0,
    ):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(64, 4, generator=g)
        self.y = (self.x[:, :1] * 0.7 - self.x[:, 1:2] * 0.3).tanh()
        self.seed, self.mb, self.rank, self.world = seed, micro_batch, rank, world
        self.routed, self.bad_on_rank = routed, bad_on_rank
        self.bad_samples: Counter = Counter()
        if load_skips and rank == 0:  # as the real data: skips at load time count on rank 0
            self.bad_samples["toy: at load"] = load_skips

    def state_dict(self) -> dict:
        return {"bad_samples": dict(self.bad_samples)}

    def load_state_dict(self, state: dict) -> None:
        self.bad_samples = Counter(state["bad_samples"])

    def iterate(self, start: int):
        k, size = start, self.mb * self.world
        task = torch.zeros(size, dtype=torch.long)
        if self.routed:
            task[size // 2 :] = 1
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            idx = torch.randint(0, len(self.x), (size,), generator=g)
            mine = slice(self.rank * self.mb, (self.rank + 1) * self.mb)
            if self.rank == self.bad_on_rank:
                self.bad_samples["toy: skipped"] += 1
            yield ToyBatch(self.x[idx[mine]], self.y[idx[mine]], task[mine])
            k += 1


def toy_config(out_dir: str, stage: int, max_steps: int, save_every: int = 0) -> TPOConfig:
    return load_config(
        TPOConfig,
        [],
        [
            f"train.output_dir={out_dir}",
            f"train.stage={stage}",
            f"train.max_steps={max_steps}",
            f"train.save_every={save_every}",
            "train.micro_batch=4",
            "train.grad_accum=2",
            "train.lr=0.01",
            "train.warmup_ratio=0.1",
            "train.tensorboard=false",
            "train.bf16=false",
            "train.init_from=null",
        ],
    )


def zero3_all_sharded(folder: Path) -> Path:
    """configs/deepspeed/zero3.json with every tensor sharded (persistence threshold 0), written
    into `folder`: small tensors, which ZeRO-3 would otherwise keep whole, are sharded too."""
    root = Path(__file__).resolve().parents[2]
    ds = json.loads((root / "configs" / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (folder / "zero3.json").write_text(json.dumps(ds))
    return folder / "zero3.json"


def builders(
    sleep: float = 0.0, routed: bool = False, bad_on_rank: int | None = None, load_skips: int = 0
):
    def model_builder(cfg, stage):
        torch.manual_seed(0)
        return ToyModel(sleep, routed)

    def data_builder(cfg, stage, dist):
        t = cfg.train
        return ToyData(
            t.seed, t.micro_batch, dist.rank, dist.world_size, routed, bad_on_rank, load_skips
        )

    return model_builder, data_builder


def main() -> None:
    from tpo.stages import get_stage
    from tpo.train.checkpoint import trained_state
    from tpo.train.distributed import shutdown
    from tpo.train.engine import StageRunner

    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("stage", type=int)
    p.add_argument("max_steps", type=int)
    p.add_argument("save_every", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--init", default=None, help="checkpoint to start from")
    p.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON (default zero2)")
    p.add_argument("--routed", action="store_true", help="two heads, one task per rank")
    p.add_argument("--micro_batch", type=int, default=None)
    p.add_argument("--bad_on_rank", type=int, default=None)
    p.add_argument("--local_rank", type=int, default=0)  # the deepspeed launcher passes it
    a = p.parse_args()
    cfg = toy_config(a.out, a.stage, a.max_steps, a.save_every)
    cfg.train.init_from = a.init
    if a.deepspeed:
        cfg.train.deepspeed = a.deepspeed
    if a.micro_batch:
        cfg.train.micro_batch = a.micro_batch
    runner = StageRunner(cfg, get_stage(a.stage), *builders(a.sleep, a.routed, a.bad_on_rank))
    runner.run(resume=a.resume)
    # Each rank prints a checksum of its trained parameters, whole (gathered under ZeRO-3), as
    # the checkpoint stores them (the 2-process test compares them).
    trained = trained_state(runner.model, runner.groups)
    total = sum(float(t.double().sum()) for t in trained.values())
    print(f"RANK{runner.dist.rank} CHECKSUM {total:.12e}", flush=True)
    shutdown()


if __name__ == "__main__":
    main()
