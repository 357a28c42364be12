"""GLCNet losses against numpy oracles, the empty-batch path, and a 2-process gloo run."""

from __future__ import annotations

import gc
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastseg.losses.glcnet import (
    GLCNetLoss,
    GLCNetLossOutput,
    GlobalStyleLoss,
    LocalMatchingLoss,
)
from contrastseg.models.heads import GlobalProjectionHead, LocalProjectionHead


def simclr_numpy(z1: np.ndarray, z2: np.ndarray, t: float, decoupled: bool = False) -> float:
    """SimCLR Algorithm 1 (Chen et al. 2020) in float64, anchors in the order [z1; z2]."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    s = np.exp(z @ z.T / t)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        den = sum(s[i, k] for k in range(2 * n) if k != i and not (decoupled and k == j))
        total += -np.log(s[i, j] / den)
    return total / (2 * n)


def numpy_style(x: torch.Tensor) -> np.ndarray:
    flat = x.double().numpy().reshape(*x.shape[:2], -1)
    return np.concatenate([flat.mean(axis=2), flat.var(axis=2, ddof=1)], axis=1)


def _regions(b: int, n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=gen), torch.randn(b, n, c, generator=gen)


@pytest.mark.parametrize("decoupled", [False, True])
def test_global_style_loss_matches_numpy(decoupled: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    enc1, enc2 = torch.randn(5, 3, 4, 4, generator=gen), torch.randn(5, 3, 6, 6, generator=gen)
    head = nn.Linear(6, 4)
    w, b = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    expected = simclr_numpy(
        numpy_style(enc1) @ w.T + b, numpy_style(enc2) @ w.T + b, 0.5, decoupled
    )
    got = GlobalStyleLoss(head, temperature=0.5, decoupled=decoupled)(enc1, enc2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("decoupled", [False, True])
def test_local_matching_loss_is_nt_xent_over_valid_regions(decoupled: bool) -> None:
    r1, r2 = _regions(3, 4, 5, seed=1)
    valid = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    # Every valid region of every image is a candidate negative, same image included.
    expected = simclr_numpy(r1[valid].numpy(), r2[valid].numpy(), 0.3, decoupled)
    loss_fn = LocalMatchingLoss(nn.Identity(), temperature=0.3, decoupled=decoupled)
    assert loss_fn(r1, r2, valid).item() == pytest.approx(expected, rel=1e-5)
    # Whatever invalid slots hold (NaN from pooling an empty window) changes nothing.
    r1_bad, r2_bad = r1.clone(), r2.clone()
    r1_bad[~valid], r2_bad[~valid] = float("nan"), 1e30
    r1_bad.requires_grad_()
    bad = loss_fn(r1_bad, r2_bad, valid)
    bad.backward()
    assert bad.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(r1_bad.grad).all() and (r1_bad.grad[~valid] == 0).all()
    assert loss_fn.empty_batches == 0


def test_local_same_image_regions_are_negatives() -> None:
    # One image, three regions: the loss is NT-Xent over its 3 pairs, i.e. 4 negatives per
    # anchor; if same-image regions were excluded there would be nothing to contrast.
    r1, r2 = _regions(1, 3, 4, seed=2)
    valid = torch.ones(1, 3, dtype=torch.bool)
    expected = simclr_numpy(r1[0].numpy(), r2[0].numpy(), 0.5)
    assert LocalMatchingLoss(nn.Identity())(r1, r2, valid).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_no_valid_pair_gives_connected_zero_and_counts() -> None:
    head = LocalProjectionHead(in_dim=8, hidden_dims=(6,), out_dim=4)
    loss_fn = LocalMatchingLoss(head)
    r1, r2 = _regions(2, 3, 8, seed=3)
    valid = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.warns(RuntimeWarning, match="no valid region pair"):
        loss = loss_fn(r1, r2, valid)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad == 0).all(), name
    assert loss_fn.empty_batches == 1
    with pytest.warns(RuntimeWarning):
        loss_fn(r1, r2, valid)
    assert loss_fn.empty_batches == 2


def test_decoupled_single_valid_pair_is_zero_not_nan() -> None:
    r1, r2 = _regions(2, 2, 4, seed=4)
    valid = torch.tensor([[False, True], [False, False]])
    r1.requires_grad_()
    loss = LocalMatchingLoss(nn.Identity(), decoupled=True)(r1, r2, valid)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(r1.grad).all()


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_glcnet_total_is_weighted_sum(lam: float) -> None:
    gen = torch.Generator().manual_seed(5)
    enc1, enc2 = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    r1, r2 = _regions(4, 2, 6, seed=6)
    valid = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    loss_fn = GLCNetLoss(GlobalStyleLoss(nn.Identity()), LocalMatchingLoss(nn.Identity()), lam=lam)
    out = loss_fn(enc1, enc2, r1, r2, valid)
    assert isinstance(out, GLCNetLossOutput)
    g = simclr_numpy(numpy_style(enc1), numpy_style(enc2), 0.5)
    loc = simclr_numpy(r1[valid].numpy(), r2[valid].numpy(), 0.5)
    assert out.global_loss.item() == pytest.approx(g, rel=1e-5)
    assert out.local_loss.item() == pytest.approx(loc, rel=1e-5)
    assert out.total.item() == pytest.approx(lam * g + (1 - lam) * loc, rel=1e-5)
    assert out.valid_fraction.item() == pytest.approx(5 / 8)
    assert not out.valid_fraction.requires_grad


def test_glcnet_with_paper_heads_stable_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(7)
    loss_fn = GLCNetLoss(
        GlobalStyleLoss(GlobalProjectionHead(), temperature=0.01),
        LocalMatchingLoss(LocalProjectionHead(), temperature=0.01),
    )
    enc = 5 * torch.randn(2, 4, 256, 8, 8, generator=gen)
    regions = torch.randn(2, 4, 4, 256, generator=gen)
    valid = torch.rand(4, 4, generator=gen) > 0.3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(enc[0].bfloat16(), enc[1].bfloat16(), regions[0], regions[1], valid)
    out.total.backward()
    assert all(torch.isfinite(x) for x in out[:3])
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.parameters())


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 1.5"):
        GLCNetLoss(GlobalStyleLoss(nn.Identity()), LocalMatchingLoss(nn.Identity()), lam=1.5)
    with pytest.raises(ValueError, match="lam must be in"):
        GLCNetLoss(GlobalStyleLoss(nn.Identity()), LocalMatchingLoss(nn.Identity()), lam=-0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GlobalStyleLoss(nn.Identity(), temperature=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LocalMatchingLoss(nn.Identity(), temperature=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GlobalStyleLoss(nn.Identity())(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    local = LocalMatchingLoss(nn.Identity())
    r1, r2 = _regions(2, 3, 4, seed=8)
    with pytest.raises(ValueError, match=r"\(B, n, C\)"):
        local(r1, r2[:, :2], torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bool valid mask of shape \(2, 3\)"):
        local(r1, r2, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"bool valid mask of shape \(2, 3\)"):
        local(r1, r2, torch.ones(2, 2, dtype=torch.bool))


# --- two processes (gloo, CPU) against one process on the concatenated batch ----------------

# (name, per-rank valid masks (B_r, n), decoupled): unequal valid counts, a rank with no
# valid pair, no valid pair anywhere, and different batch sizes per rank.
DIST_CASES = [
    ("unequal", ([[1, 1, 0], [1, 1, 1]], [[0, 1, 0], [0, 0, 0]]), False),
    ("unequal_decoupled", ([[1, 1, 0], [1, 1, 1]], [[0, 1, 0], [1, 0, 0]]), True),
    ("rank1_empty", ([[1, 0, 1], [0, 1, 1]], [[0, 0, 0], [0, 0, 0]]), False),
    ("rank0_empty_decoupled", ([[0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 1, 1]]), True),
    ("all_empty", ([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]), False),
    ("unequal_batch", ([[1, 0, 1], [1, 1, 0], [0, 1, 1]], [[1, 1, 1]]), False),
]


def _case_data(
    masks: tuple[list, list],
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    valid = torch.tensor(masks[0] + masks[1], dtype=torch.bool)
    torch.manual_seed(len(valid))
    head = nn.Linear(5, 4).double()
    regions = torch.randn(2, *valid.shape, 5, dtype=torch.float64)
    return head, regions[0], regions[1], valid


def _dist_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results = {}
    for name, masks, decoupled in DIST_CASES:
        head, r1, r2, valid = _case_data(masks)
        loss_fn = LocalMatchingLoss(head, temperature=0.4, decoupled=decoupled)
        ddp = DistributedDataParallel(loss_fn)
        rows = slice(len(masks[0]) if rank else 0, len(valid) if rank else len(masks[0]))
        a, b = r1[rows].clone().requires_grad_(), r2[rows].clone().requires_grad_()
        loss = ddp(a, b, valid[rows])
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "weight_grad": head.weight.grad.clone(),
            "bias_grad": head.bias.grad.clone(),
            "a_grad": a.grad.clone(),
            "b_grad": b.grad.clone(),
            "empty_batches": torch.tensor(loss_fn.empty_batches),
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
    """Same convention as for nt_xent: the mean of the per-rank losses and the DDP-averaged
    gradients equal the single-process loss and gradients; input gradients are world_size
    times the single-process ones. Every rank calls the collectives whatever its valid count.
    """
    world = 2
    mp.spawn(
        _dist_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, masks, decoupled in DIST_CASES:
        head, r1, r2, valid = _case_data(masks)
        r1.requires_grad_(), r2.requires_grad_()
        loss_fn = LocalMatchingLoss(head, temperature=0.4, decoupled=decoupled)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = loss_fn(r1, r2, valid)
        ref.backward()
        if valid.any():
            expected = simclr_numpy(
                head(r1[valid]).detach().numpy(), head(r2[valid]).detach().numpy(), 0.4, decoupled
            )
            assert ref.item() == pytest.approx(expected, rel=1e-9), name
        mean_loss = sum(r[name]["loss"] for r in ranks) / world
        torch.testing.assert_close(mean_loss, ref.detach(), msg=f"loss, case {name}")
        for r in range(world):
            got = ranks[r][name]
            assert got["empty_batches"].item() == loss_fn.empty_batches, name
            torch.testing.assert_close(
                got["weight_grad"], head.weight.grad, msg=f"weight grad, {name}"
            )
            torch.testing.assert_close(got["bias_grad"], head.bias.grad, msg=f"bias grad, {name}")
            rows = slice(len(masks[0]) if r else 0, len(valid) if r else len(masks[0]))
            torch.testing.assert_close(
                got["a_grad"] / world, r1.grad[rows], msg=f"input grad, {name}"
            )
            torch.testing.assert_close(
                got["b_grad"] / world, r2.grad[rows], msg=f"input grad, {name}"
            )
