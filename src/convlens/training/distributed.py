"""Multi-process data-parallel training (DDP) under ``torchrun``.

``torchrun --nproc-per-node N -m convlens train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` reads them and joins the process group: NCCL on CUDA, gloo on CPU. Without those
variables everything is a no-op and training runs in one process. ``--batch-size`` is always the
*global* batch: each of the N processes takes ``batch_size // N`` images per step, and DDP
averages the gradients, so N processes take the same steps as one process would.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "broadcast_float", "setup", "teardown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``main`` is rank 0 (writes files)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    Args:
        device: the training device; CUDA selects NCCL, anything else gloo.

    Returns:
        This process's :class:`DistInfo` (world_size 1 when not launched by torchrun).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
        log.info("joined %s process group: rank %d of %d", backend, info.rank, world)
    return info


def teardown(info: DistInfo) -> None:
    """Leave the process group joined by :func:`setup`."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all processes (in place; returned for chaining)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (e.g. a validation error only rank 0 computed)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())
