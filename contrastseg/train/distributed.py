"""Process-group set-up for ``torchrun`` (one process per device), and its tear-down."""

from __future__ import annotations

import gc
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from contrastseg.utils.device import resolve_device


class ProcessContext(NamedTuple):
    """Where this process runs.

    Attributes:
        device: its device (``cuda:LOCAL_RANK`` under torchrun with CUDA).
        rank: global rank (0 without torchrun).
        world_size: number of processes (1 without torchrun).
        owns_group: True when this call created the process group (and must destroy it).
    """

    device: torch.device
    rank: int
    world_size: int
    owns_group: bool


def setup_process(device_name: str = "auto") -> ProcessContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), if any.

    NCCL on CUDA, gloo otherwise. Without torchrun (or with one process) nothing is
    initialised and the same training code runs unchanged. A process group that already
    exists (a test, a notebook) is used as it is.
    """
    device = resolve_device(device_name)
    if dist.is_available() and dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
            torch.cuda.set_device(device)
        return ProcessContext(device, dist.get_rank(), dist.get_world_size(), False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessContext(device, 0, 1, False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                "on this machine; launch at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessContext(device, dist.get_rank(), dist.get_world_size(), True)


def teardown_process(context: ProcessContext) -> None:
    """Destroy the process group if :func:`setup_process` created it.

    Objects that still use the group go first: a ``DistributedDataParallel`` reducer left in a
    reference cycle and collected after its group is destroyed aborts the process at exit
    ("terminate called without an active exception"; with gloo, 1 run in 4 here), which
    torchrun reports as a failed rank after a finished run.
    """
    if context.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
