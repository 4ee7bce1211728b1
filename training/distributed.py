"""Multi-process training under ``torchrun``: process group setup and gradient averaging.

``torchrun --nproc_per_node N -m training.cli ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` joins the group (gloo on CPU, nccl on GPU). Gradients are averaged
by one all-reduce over a flat buffer after every backward (:func:`average_gradients`) instead of
``DistributedDataParallel``: each batch holds one task, so the parameters a step uses differ
between ranks (prompt batches skip the learned queries, image batches the prompt encoder) and
a parameter without a gradient simply contributes zeros. The criterion's normalisers are
already averaged over processes (``training.losses``), so every rank must run the same number of
loss evaluations per step — one batch each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "average_gradients", "broadcast_parameters", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (or run alone).

    Backend: nccl when CUDA is available (one GPU per local rank), else gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, device=device)


def cleanup() -> None:
    """Leave the process group (a no-op when running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over processes.

    A rank without a gradient for a parameter contributes zeros; a parameter no rank used keeps
    ``grad = None`` (so AdamW skips it, as it does in a single process). One all-reduce of a flat
    buffer (gradients, then one used-flag per parameter) in the fixed order of ``parameters``,
    so every rank ends the step with bit-identical gradients.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
             for p in parameters]
    used = torch.tensor([float(p.grad is not None) for p in parameters],
                        device=parts[0].device if parts else None)
    flat = torch.cat(parts + [used.to(parts[0].dtype)]) if parts else used
    dist.all_reduce(flat)
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = (flat[offset : offset + n] / dist.get_world_size()).view_as(p).clone()
        offset += n
    for p, count in zip(parameters, flat[offset:].tolist()):
        if count == 0:
            p.grad = None
