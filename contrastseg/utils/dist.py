"""Small helpers for ``torch.distributed``: rank, world size, gathers with gradients.

Everything here is a no-op (or returns the single-process answer) when no process group
is initialised, so the same code runs under ``python`` and under ``torchrun``.

The contrastive losses gather embeddings from all ranks so that every anchor meets the
negatives of the global batch (SimCLR, Chen et al. 2020, section 2.2 "global BN" and large
batches). The gather must pass gradients back to the rank that produced each embedding,
which ``torch.distributed.all_gather`` does not do; :func:`all_gather_with_grad` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and always without a process group): the rank that logs and saves."""
    return rank() == 0


def all_gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """The first-dimension sizes of every rank, in rank order.

    A collective: every rank must call it. It reads one small tensor back to the host (one
    synchronisation), which is what lets the gathers below accept ranks with different
    batch sizes (a last batch without ``drop_last``) instead of hanging or failing inside
    the backend.

    Args:
        n: this rank's size.
        device: where the exchange tensor lives; must suit the backend (CUDA for NCCL).

    Returns:
        ``[n_0, n_1, ...]`` with ``world_size()`` entries (``[n]`` without a process group).
    """
    if not is_distributed():
        return [int(n)]
    local = torch.tensor([int(n)], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in torch.cat(sizes).tolist()]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` of every rank along dim 0; ranks may differ in size along dim 0."""
    longest = max(sizes)
    if x.shape[0] < longest:
        # all_gather needs equal shapes: pad to the longest rank, then cut the padding off.
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the gradient over ranks and keeps this rank's slice.

    Every rank's loss may depend on every rank's embeddings, so the gradient of the sum of
    the per-rank losses with respect to this rank's input is the sum, over ranks, of the
    gradient each rank computed for this rank's slice of the gathered tensor.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` of all ranks along dim 0, with gradients flowing back to each rank.

    A collective: every rank must call it, in the same order, also when its ``x`` is empty.
    In the backward pass the gradient of the gathered tensor is summed over ranks (an
    ``all_reduce``), so after ``loss.backward()`` on every rank, this rank's input holds
    ``d(sum over ranks of loss_r) / dx``. Under DDP, which averages parameter gradients over
    ranks, the parameters therefore get ``d(mean over ranks of loss_r) / dtheta``.

    Args:
        x: ``(n_r, ...)``; trailing dims must agree across ranks, ``n_r`` may differ.
        sizes: every rank's ``n_r`` from :func:`all_gather_sizes`, if already known
            (saves one exchange).

    Returns:
        ``(sum_r n_r, ...)``, rank 0's rows first. Without a process group: ``x`` itself.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_gather_sizes(x.shape[0], x.device)
    return _AllGatherWithGrad.apply(x, sizes)


def all_gather(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``x`` of all ranks along dim 0, without gradients (e.g. masks, labels).

    Booleans travel as ``uint8`` (not every backend reduces or gathers ``bool``).

    Args:
        x: ``(n_r, ...)``; trailing dims must agree across ranks, ``n_r`` may differ.
        sizes: every rank's ``n_r``, if already known.

    Returns:
        ``(sum_r n_r, ...)``, same dtype as ``x``. Without a process group: ``x`` itself.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = all_gather_sizes(x.shape[0], x.device)
    if x.dtype == torch.bool:
        return _gather_padded(x.detach().to(torch.uint8), sizes).bool()
    return _gather_padded(x.detach(), sizes)


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a detached copy; for logging). Without a process group: ``x``."""
    if not is_distributed():
        return x.detach()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
