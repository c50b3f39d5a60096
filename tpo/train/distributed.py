"""Process-group setup for one process, the `deepspeed` launcher, or many nodes, and what
data-parallel ranks must agree on (gathered metrics, the order gradients are handed over in)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cpu" or "cuda:N"

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes shared files and shows progress."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU).

    A plain single process gets the env variables DeepSpeed would otherwise look for through
    mpi4py; under the `deepspeed` launcher they are already set.
    """
    # function-level: deepspeed is heavy to import; only training runs need it
    import deepspeed

    # function-level: deepspeed is heavy to import; only training runs need it
    from deepspeed.accelerator import get_accelerator

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    on_cpu = get_accelerator().device_name() == "cpu"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl", verbose=False)
    local_rank = int(os.environ["LOCAL_RANK"])
    if on_cpu:
        device = "cpu"
    else:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Tear the process group down once every rank is done (an exit that leaves the
    communication threads running can abort the process after the work is saved)."""

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather(obj: object) -> list:
    """Every rank's picklable `obj`, in rank order (a collective; `[obj]` in a single process)."""

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def in_fixed_order(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """`loss` again (same value), whose backward readies the gradients of `params` one parameter
    at a time in the order of `params`, so in the same order on every rank.

    DeepSpeed ZeRO-1/2 fill their reduction buckets in the order gradients become ready and
    assume every rank readies them in the same order (DeepSpeed issue #2343). Ranks whose
    micro-batches route to different heads run different graphs, ready gradients in different
    orders, and the reduced slices then silently mix parameters up. So the gradients are computed
    here without readying any (`autograd.grad`), and handed over through a graph whose shape
    depends only on `params`: one dot product per parameter, d(p . g)/dp = g exactly. Every
    parameter gets one (a zero one when unused), so every rank reduces the same set.
    """

    grads = torch.autograd.grad(loss, params, allow_unused=True)
    dots = torch.stack(
        [
            torch.dot(p.reshape(-1), (torch.zeros_like(p) if g is None else g).reshape(-1)).float()
            for p, g in zip(params, grads)
        ]
    ).sum()
    return loss.detach() + (dots - dots.detach())
