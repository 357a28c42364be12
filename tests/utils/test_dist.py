"""Distributed helpers: single-process fallbacks, and gathers checked in a 2-process gloo run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastseg.utils import dist as cdist


def test_single_process_fallbacks() -> None:
    assert not cdist.is_distributed()
    assert cdist.world_size() == 1 and cdist.rank() == 0 and cdist.is_main_process()
    assert cdist.all_gather_sizes(7) == [7]
    x = torch.randn(3, 2, requires_grad=True)
    assert cdist.all_gather_with_grad(x) is x
    mask = torch.tensor([True, False])
    assert cdist.all_gather(mask) is mask
    torch.testing.assert_close(cdist.reduce_mean(x), x.detach())


# Rank r holds SIZES[r] rows; its values are 10 * r + row index, in two columns.
SIZES = (3, 1)


def _local(rank: int) -> torch.Tensor:
    rows = torch.arange(SIZES[rank], dtype=torch.float64) + 10 * rank
    return torch.stack([rows, -rows], dim=1)


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    x = _local(rank).requires_grad_()
    gathered = cdist.all_gather_with_grad(x)
    # Rank r weighs row k of the gathered tensor by (r + 1) * (k + 1): the gradient each
    # rank's input receives is the sum of those weights over ranks.
    weights = (rank + 1) * torch.arange(1, gathered.shape[0] + 1, dtype=torch.float64)
    (weights[:, None] * gathered).sum().backward()
    mask = torch.tensor([rank == 0] * SIZES[rank])
    out = {
        "info": torch.tensor(
            [cdist.is_distributed(), cdist.world_size(), cdist.rank(), cdist.is_main_process()]
        ),
        "sizes": torch.tensor(cdist.all_gather_sizes(SIZES[rank])),
        "gathered": gathered.detach(),
        "grad": x.grad,
        "mask": cdist.all_gather(mask),
        "mean": cdist.reduce_mean(torch.tensor([float(rank), 4.0])),
    }
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_process_gathers(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    full = torch.cat([_local(0), _local(1)])
    # d/dx of sum_r sum_k (r + 1)(k + 1) g_k  =  (1 + 2)(k + 1) for global row k.
    row_grad = 3.0 * torch.arange(1, full.shape[0] + 1, dtype=torch.float64)[:, None].expand(-1, 2)
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert out["info"].tolist() == [True, world, r, r == 0]
        assert out["sizes"].tolist() == list(SIZES)
        torch.testing.assert_close(out["gathered"], full)
        rows = slice(sum(SIZES[:r]), sum(SIZES[: r + 1]))
        torch.testing.assert_close(out["grad"], row_grad[rows])
        assert out["mask"].dtype == torch.bool
        assert out["mask"].tolist() == [True] * SIZES[0] + [False] * SIZES[1]
        torch.testing.assert_close(out["mean"], torch.tensor([0.5, 4.0]))
