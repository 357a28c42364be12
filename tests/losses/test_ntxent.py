"""NT-Xent against SimCLR's Algorithm 1 (numpy), analytic cases, and a 2-process gloo run."""

from __future__ import annotations

import gc
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastseg.losses.ntxent import NTXentLoss, masked_nt_xent, nt_xent


def simclr_algorithm_1(z1: np.ndarray, z2: np.ndarray, t: float, decoupled: bool = False) -> float:
    """SimCLR (Chen et al. 2020) Algorithm 1, transcribed with loops in float64.

    The 2N views are interleaved as in the paper: view 2k-1 is z1[k], view 2k is z2[k].
    ``decoupled`` drops the positive from the denominator (k != i and k != j) and adds the
    official GLCNet code's ``1e-8`` to it.
    """
    n = len(z1)
    z = np.empty((2 * n, z1.shape[1]))
    z[0::2], z[1::2] = z1, z2

    def sim(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    s = np.array([[sim(z[i], z[j]) for j in range(2 * n)] for i in range(2 * n)])

    def ell(i: int, j: int) -> float:
        den = sum(
            math.exp(s[i, k] / t) for k in range(2 * n) if k != i and not (decoupled and k == j)
        ) + (1e-8 if decoupled else 0.0)
        return -math.log(math.exp(s[i, j] / t) / den)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize(
    ("n", "decoupled"), [(1, False), (2, False), (7, False), (2, True), (7, True)]
)  # one pair has no negative in the decoupled form: see test_errors
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("dim", [3, 32])
def test_matches_simclr_algorithm_1(n: int, dim: int, t: float, decoupled: bool) -> None:
    rng = np.random.default_rng(n * 100 + dim)
    z1, z2 = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    expected = simclr_algorithm_1(z1, z2, t, decoupled)
    got = nt_xent(
        torch.tensor(z1, dtype=torch.float32),
        torch.tensor(z2, dtype=torch.float32),
        t,
        decoupled=decoupled,
    )
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    module = NTXentLoss(temperature=t, decoupled=decoupled)
    assert module(torch.tensor(z1), torch.tensor(z2)).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("n", [2, 5])
def test_identical_embeddings(n: int, t: float) -> None:
    # All similarities are 1: l = -log(e^(1/t) / ((2N-1) e^(1/t))) = log(2N - 1);
    # without the positive in the denominator, log(2N - 2).
    z = torch.full((n, 4), 0.3)
    assert nt_xent(z, z, t).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    assert nt_xent(z, z, t, decoupled=True).item() == pytest.approx(math.log(2 * n - 2), abs=1e-6)


def test_orthogonal_pairs() -> None:
    # z1[i] = z2[i] = 2 e_i: positive similarity 1, every negative 0, so
    # l = -1/t + log(e^(1/t) + 2N - 2), and -1/t + log(2N - 2) when decoupled.
    n, t = 4, 0.2
    z = 2.0 * torch.eye(n, 6)
    assert nt_xent(z, z, t).item() == pytest.approx(
        -1 / t + math.log(math.exp(1 / t) + 2 * n - 2), rel=1e-6
    )
    assert nt_xent(z, z, t, decoupled=True).item() == pytest.approx(
        -1 / t + math.log(2 * n - 2), rel=1e-6
    )


@pytest.mark.parametrize("decoupled", [False, True])
def test_gradient_matches_finite_differences(decoupled: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    z2 = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3, decoupled=decoupled), (z1, z2))


def test_scale_invariant_and_gather_noop_without_process_group() -> None:
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    base = nt_xent(z1, z2, 0.5, gather=False)
    assert nt_xent(z1, z2, 0.5, gather=True).item() == base.item()
    assert nt_xent(10 * z1, 0.1 * z2, 0.5).item() == pytest.approx(base.item(), rel=1e-5)


@pytest.mark.parametrize("decoupled", [False, True])
def test_masked_equals_nt_xent_on_valid_rows(decoupled: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(9, 5, generator=gen), torch.randn(9, 5, generator=gen)
    valid = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    expected = simclr_algorithm_1(
        z1[valid].double().numpy(), z2[valid].double().numpy(), 0.5, decoupled
    )
    out = masked_nt_xent(z1, z2, valid, 0.5, decoupled=decoupled)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.num_valid.item() == 5 and out.num_pairs == 9


@pytest.mark.parametrize("decoupled", [False, True])
def test_stable_at_low_temperature_float32(decoupled: bool) -> None:
    # Near-duplicate embeddings at t = 0.01: logits up to 100, exp(100) overflows float32.
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(8, 16, generator=gen)
    z1 = (base + 1e-3 * torch.randn(8, 16, generator=gen)).requires_grad_()
    z2 = (base + 1e-3 * torch.randn(8, 16, generator=gen)).requires_grad_()
    loss = nt_xent(z1, z2, 0.01, decoupled=decoupled)
    loss.backward()
    expected = simclr_algorithm_1(
        z1.detach().double().numpy(), z2.detach().double().numpy(), 0.01, decoupled
    )
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


@pytest.mark.parametrize("decoupled", [False, True])
def test_stable_under_bf16_autocast(decoupled: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    head = nn.Linear(12, 8)
    x1, x2 = torch.randn(16, 12, generator=gen), torch.randn(16, 12, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = head(x1), head(x2)
        assert z1.dtype == torch.bfloat16
        loss = nt_xent(z1, z2, 0.01, decoupled=decoupled)
    assert loss.dtype == torch.float32
    loss.backward()
    # The oracle sees the same bf16 embeddings, in float64.
    expected = simclr_algorithm_1(
        z1.detach().double().numpy(), z2.detach().double().numpy(), 0.01, decoupled
    )
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize(
    ("z1", "z2", "kwargs", "match"),
    [
        (torch.randn(4, 3), torch.randn(5, 3), {}, "same shape"),
        (torch.randn(4), torch.randn(4), {}, r"\(N, D\)"),
        (
            torch.ones(4, 3, dtype=torch.int64),
            torch.ones(4, 3, dtype=torch.int64),
            {},
            "floating-point",
        ),
        (torch.randn(4, 3), torch.randn(4, 3), {"temperature": 0.0}, "temperature must be > 0"),
        (torch.randn(1, 3), torch.randn(1, 3), {"decoupled": True}, "at least 2 pairs"),
        (torch.randn(0, 3), torch.randn(0, 3), {}, "no embeddings"),
    ],
)
def test_errors(z1: torch.Tensor, z2: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        nt_xent(z1, z2, **kwargs)


def test_masked_rejects_bad_mask() -> None:
    with pytest.raises(ValueError, match="bool valid mask of shape"):
        masked_nt_xent(torch.randn(4, 3), torch.randn(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=-1.0)


# --- two processes (gloo, CPU) against one process on the concatenated batch ----------------

# (name, rows per rank, decoupled): equal and unequal batches, and a rank with no rows.
DIST_CASES = [
    ("equal", (3, 3), False),
    ("equal_decoupled", (3, 3), True),
    ("unequal", (4, 1), False),
    ("unequal_decoupled", (2, 5), True),
    ("one_empty", (5, 0), False),
]


def _case_data(sizes: tuple[int, int]) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(sum(sizes))
    model = nn.Linear(6, 5).double()
    x = torch.randn(2, sum(sizes), 6, dtype=torch.float64)
    return model, x[0], x[1]


def _dist_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results = {}
    for name, sizes, decoupled in DIST_CASES:
        model, x1, x2 = _case_data(sizes)
        ddp = DistributedDataParallel(model)
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        a, b = x1[rows].clone().requires_grad_(), x2[rows].clone().requires_grad_()
        z = ddp(torch.cat([a, b]))
        loss = nt_xent(z[: len(a)], z[len(a) :], 0.4, decoupled=decoupled)
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "weight_grad": model.weight.grad.clone(),
            "bias_grad": model.bias.grad.clone(),
            "a_grad": a.grad.clone(),
            "b_grad": b.grad.clone(),
        }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    # the DDP wrappers (reducers) must go before their process group: one that outlives it
    # aborts the process at exit ("terminate called without an active exception")
    del ddp
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_equal_one_process_on_concatenated_batch(tmp_path: Path) -> None:
    """Convention: DDP optimises the mean over ranks of the per-rank losses and averages the
    parameter gradients; both must equal the single-process loss and gradients. The input
    gradient on rank r is d(sum_r loss_r)/dx_r, i.e. world_size times the single-process one.
    """
    world = 2
    mp.spawn(
        _dist_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, sizes, decoupled in DIST_CASES:
        model, x1, x2 = _case_data(sizes)
        x1.requires_grad_(), x2.requires_grad_()
        ref = nt_xent(model(x1), model(x2), 0.4, decoupled=decoupled)
        ref.backward()
        mean_loss = sum(r[name]["loss"] for r in ranks) / world
        torch.testing.assert_close(mean_loss, ref.detach(), msg=f"loss, case {name}")
        for r in range(world):
            got = ranks[r][name]
            torch.testing.assert_close(
                got["weight_grad"], model.weight.grad, msg=f"weight grad, {name}"
            )
            torch.testing.assert_close(got["bias_grad"], model.bias.grad, msg=f"bias grad, {name}")
            rows = slice(sum(sizes[:r]), sum(sizes[: r + 1]))
            torch.testing.assert_close(
                got["a_grad"] / world, x1.grad[rows], msg=f"input grad, {name}"
            )
            torch.testing.assert_close(
                got["b_grad"] / world, x2.grad[rows], msg=f"input grad, {name}"
            )
