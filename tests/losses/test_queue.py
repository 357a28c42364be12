"""NT-Xent with extra negatives and the negative queue: a numpy oracle, no gradient into the
queue, FIFO order, the loss without a queue unchanged bit for bit, and a 2-process gloo run."""

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
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastseg.losses import LocalMatchingLoss
from contrastseg.losses.ntxent import (
    MaskedNTXent,
    NegativeQueue,
    masked_nt_xent,
    nt_xent,
    queued_nt_xent,
)


def oracle(
    z1: np.ndarray,
    z2: np.ndarray,
    queue: np.ndarray,
    t: float,
    decoupled: bool = False,
    valid: np.ndarray | None = None,
) -> float:
    """NT-Xent with every row of ``queue`` appended to each anchor's denominator, in float64 loops.

    Anchors are the valid pairs' 2 views; each one's positive is its partner; its denominator
    runs over the other valid views (not the partner when ``decoupled``, which also adds the
    official ``1e-8``) and over every queue row. The positives do not change.
    """
    n = len(z1)
    valid = np.ones(n, bool) if valid is None else valid
    views = [(z1[i], i, 0) for i in range(n) if valid[i]] + [
        (z2[i], i, 1) for i in range(n) if valid[i]
    ]

    def sim(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    losses = []
    for a, (u, pair, side) in enumerate(views):
        partner = z2[pair] if side == 0 else z1[pair]
        den = 0.0
        for b, (v, other, _) in enumerate(views):
            if b == a or (decoupled and other == pair):
                continue
            den += math.exp(sim(u, v) / t)
        den += sum(math.exp(sim(u, q) / t) for q in queue)
        if decoupled:
            den += 1e-8
        losses.append(-math.log(math.exp(sim(u, partner) / t) / den))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("k", [1, 7])
def test_extra_negatives_match_the_numpy_oracle(k: int, t: float, decoupled: bool) -> None:
    rng = np.random.default_rng(k * 10 + int(decoupled))
    z1, z2, queue = rng.normal(size=(5, 6)), rng.normal(size=(5, 6)), rng.normal(size=(k, 6))
    expected = oracle(z1, z2, queue, t, decoupled)
    as32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = nt_xent(as32(z1), as32(z2), t, decoupled=decoupled, negatives=as32(queue))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got64 = nt_xent(torch.tensor(z1), torch.tensor(z2), t, decoupled=decoupled,
                    negatives=torch.tensor(queue))  # fmt: skip
    assert got64.item() == pytest.approx(expected, rel=1e-10)
    # the queue changes the loss (the oracle without it differs)
    assert abs(oracle(z1, z2, queue[:0], t, decoupled) - expected) > 1e-3
    # masked pairs: neither anchors nor negatives, the queue rows still in every denominator
    valid = np.array([True, False, True, True, False])
    masked = masked_nt_xent(torch.tensor(z1), torch.tensor(z2), torch.tensor(valid), t,
                            decoupled=decoupled, negatives=torch.tensor(queue))  # fmt: skip
    assert masked.loss.item() == pytest.approx(
        oracle(z1, z2, queue, t, decoupled, valid), rel=1e-10
    )


def test_one_pair_with_a_queue_has_negatives_when_decoupled() -> None:
    rng = np.random.default_rng(0)
    z1, z2, queue = rng.normal(size=(1, 4)), rng.normal(size=(1, 4)), rng.normal(size=(3, 4))
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.5, decoupled=True,
                  negatives=torch.tensor(queue))  # fmt: skip
    assert got.item() == pytest.approx(oracle(z1, z2, queue, 0.5, True), rel=1e-10)
    valid = torch.tensor([True, False])
    two = torch.tensor(np.concatenate([z1, z2])), torch.tensor(np.concatenate([z2, z1]))
    out = masked_nt_xent(*two, valid, 0.5, decoupled=True, negatives=torch.tensor(queue))
    assert out.loss.item() == pytest.approx(oracle(z1, z2, queue, 0.5, True), rel=1e-10)


def test_no_gradient_reaches_the_queue() -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    z2 = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    negatives = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    for decoupled in (False, True):
        nt_xent(z1, z2, 0.3, decoupled=decoupled, negatives=negatives).backward()
        assert negatives.grad is None
        assert z1.grad is not None and z1.grad.abs().sum() > 0
        # the gradient of the anchors is the analytic one, with the negatives held constant
        assert torch.autograd.gradcheck(
            lambda a, b, d=decoupled: nt_xent(a, b, 0.3, decoupled=d, negatives=negatives),
            (z1, z2),
        )
    # through a queue: its rows are buffers without gradient, and a backward after the push
    # (the rows changed in place) still works
    head = nn.Linear(5, 3)
    queue = NegativeQueue(8, 3)
    for _ in range(3):
        x1, x2 = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
        queued_nt_xent(head(x1), head(x2), queue).loss.backward()
    assert not queue.embeddings.requires_grad and queue.embeddings.grad is None
    assert int(queue.count) == 8


def _ring(size: int, dim: int, chunks: list[int]) -> tuple[np.ndarray, int, int]:
    """The FIFO written one row at a time: rows, next row to write, rows written."""
    rows, ptr, count, value = np.zeros((size, dim), np.float32), 0, 0, 0
    for m in chunks:
        for _ in range(m):
            rows[ptr] = value
            ptr, count, value = (ptr + 1) % size, min(count + 1, size), value + 1
    return rows, ptr, count


def test_fifo_order_and_wrap_around() -> None:
    queue = NegativeQueue(5, 2)
    assert queue.negatives().shape == (0, 2)
    chunks, value = [3, 3, 0, 7, 1, 5, 12], 0
    for i, m in enumerate(chunks):
        keys = torch.arange(value, value + m, dtype=torch.float32)[:, None].repeat(1, 2)
        value += m
        queue.push(keys)
        rows, ptr, count = _ring(5, 2, chunks[: i + 1])
        assert torch.equal(queue.embeddings, torch.from_numpy(rows)), chunks[: i + 1]
        assert (int(queue.ptr), int(queue.count)) == (ptr, count)
        assert torch.equal(queue.negatives(), torch.from_numpy(rows[:count]))
    # after 3 rows: only those; the oldest row is replaced first
    fresh = NegativeQueue(4, 1)
    fresh.push(torch.tensor([[1.0], [2.0], [3.0]]))
    assert fresh.negatives().flatten().tolist() == [1.0, 2.0, 3.0]
    fresh.push(torch.tensor([[4.0], [5.0]]))
    assert fresh.negatives().flatten().tolist() == [5.0, 2.0, 3.0, 4.0]


def test_a_loaded_queue_is_read_again() -> None:
    full, empty = NegativeQueue(3, 2), NegativeQueue(3, 2)
    full.push(torch.ones(4, 2))
    assert full.negatives().shape == (3, 2)
    full.load_state_dict(empty.state_dict())  # e.g. resuming from an earlier checkpoint
    assert full.negatives().shape == (0, 2)
    empty.load_state_dict(NegativeQueue(3, 2).state_dict())
    partly = NegativeQueue(3, 2)
    partly.push(torch.ones(2, 2))
    empty.load_state_dict(partly.state_dict())
    assert empty.negatives().shape == (2, 2)
    assert set(partly.state_dict()) == {"embeddings", "ptr", "count"}


@pytest.mark.parametrize("masked", [False, True])
def test_queued_loss_uses_the_earlier_rows_then_adds_this_batch(masked: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    queue = NegativeQueue(64, 4)
    valid = torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool) if masked else None
    expected_rows = torch.zeros(0, 4)
    for step in range(3):
        z1, z2 = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
        before = queue.negatives().clone()
        assert torch.equal(before, expected_rows)
        out = queued_nt_xent(z1, z2, queue, valid, 0.4, decoupled=step == 1)
        assert isinstance(out, MaskedNTXent)
        if masked:
            reference = masked_nt_xent(z1, z2, valid, 0.4, decoupled=step == 1, negatives=before)
        else:
            reference = nt_xent(z1, z2, 0.4, decoupled=step == 1, negatives=before)
        ref_loss = reference.loss if masked else reference
        assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        keep = slice(None) if valid is None else valid
        added = torch.cat([F.normalize(z1[keep], dim=1), F.normalize(z2[keep], dim=1)])
        expected_rows = torch.cat([expected_rows, added])
        torch.testing.assert_close(queue.negatives(), expected_rows, rtol=0, atol=1e-7)
        expected_rows = queue.negatives().clone()
    # in eval mode the queue is read but not written
    queue.eval()
    queued_nt_xent(z1, z2, queue, valid)
    assert torch.equal(queue.negatives(), expected_rows)


def test_queue_rows_stay_float32_under_autocast() -> None:
    head, queue = nn.Linear(12, 8), NegativeQueue(32, 8)
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = head(torch.randn(16, 12, generator=gen))
            assert z.dtype == torch.bfloat16
            loss = queued_nt_xent(z[:8], z[8:], queue, None, 0.1).loss
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
    assert queue.embeddings.dtype == torch.float32 and int(queue.count) == 32
    norms = queue.embeddings.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-2)  # bf16 keys


def test_bad_sizes_and_dimensions_are_refused() -> None:
    for size, dim in [(0, 4), (-1, 4), (4, 0), (2.5, 4), (True, 4)]:
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            NegativeQueue(size, dim)
    queue = NegativeQueue(4, 3)
    with pytest.raises(ValueError, match=r"dimension 3 got keys of shape \(2, 5\)"):
        queue.push(torch.randn(2, 5))
    with pytest.raises(ValueError, match="dimension 5 but the negative queue holds 3-dim"):
        queued_nt_xent(torch.randn(2, 5), torch.randn(2, 5), queue)
    with pytest.raises(ValueError, match=r"extra negatives of shape \(K, 5\)"):
        nt_xent(torch.randn(2, 5), torch.randn(2, 5), negatives=torch.randn(3, 4))
    with pytest.raises(ValueError, match="floating-point extra negatives"):
        nt_xent(torch.randn(2, 5), torch.randn(2, 5), negatives=torch.ones(3, 5, dtype=torch.long))


# --- no queue: the loss and its gradients are what they were, bit for bit -------------------


def _nt_xent_before_the_queue(z1, z2, valid, temperature, decoupled):
    """``_nt_xent`` of commit 7f98fbb (one process, no gather), the version before the queue:
    the same operations in the same order."""
    n = z1.shape[0]
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z1 = F.normalize(z1.to(dtype), dim=1)
    z2 = F.normalize(z2.to(dtype), dim=1)
    k1, k2, valid_global, n_global = z1, z2, valid, n
    logits = (torch.cat([z1, z2]) / temperature) @ torch.cat([k1, k2]).T
    rows = torch.arange(n, device=z1.device)
    self_col = torch.cat([rows, rows + n_global])[:, None]
    positive_col = torch.cat([rows + n_global, rows])[:, None]
    positive = (z1 * z2).sum(dim=1) / temperature
    positive = torch.cat([positive, positive])
    fill = torch.finfo(logits.dtype).min
    logits.scatter_(1, self_col, fill)
    if decoupled:
        logits.scatter_(1, positive_col, fill)
    if valid_global is not None:
        logits.masked_fill_(~torch.cat([valid_global, valid_global])[None, :], fill)
    per_anchor = torch.logsumexp(logits, dim=1) - positive
    if valid is None:
        return per_anchor.sum() * (1 / (2 * n_global))
    num_valid = valid_global.sum()
    anchor_ok = torch.cat([valid, valid])
    count = 2 * num_valid
    if decoupled:
        has_negative = num_valid >= 2
        anchor_ok = anchor_ok & has_negative
        count = torch.where(has_negative, count, torch.zeros_like(count))
    total = torch.where(anchor_ok, per_anchor, torch.zeros_like(per_anchor)).sum()
    return total * 1 / count.clamp(min=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [3, 16])
def test_without_a_queue_the_loss_and_gradients_are_unchanged_bit_for_bit(
    n: int, masked: bool, dtype: torch.dtype
) -> None:
    """The default (``method.queue_size: 0``, ``decoupled: false``) computes what it did."""
    gen = torch.Generator().manual_seed(n)
    x1, x2 = torch.randn(n, 8, generator=gen, dtype=dtype), torch.randn(n, 8, generator=gen,
                                                                        dtype=dtype)  # fmt: skip
    valid = (torch.arange(n) % 3 != 1) if masked else None
    results = []
    for compute in ("before", "nt_xent", "queued"):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        if compute == "before":
            loss = _nt_xent_before_the_queue(a, b, valid, 0.3, False)
        elif compute == "nt_xent":
            loss = masked_nt_xent(a, b, valid, 0.3).loss if masked else nt_xent(a, b, 0.3)
        else:
            loss = queued_nt_xent(a, b, None, valid, 0.3).loss
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for got in results[1:]:
        for expected, value in zip(results[0], got, strict=True):
            assert torch.equal(expected, value)


# --- two processes (gloo, CPU): every rank holds the queue of the gathered keys ---------------

# (name, per-rank valid masks (B_r, n), decoupled), three steps each
DIST_CASES = [
    ("unequal", ([[1, 1, 0], [1, 1, 1]], [[0, 1, 0], [1, 0, 1]]), False),
    ("unequal_batch_decoupled", ([[1, 0, 1], [1, 1, 0], [0, 1, 1]], [[1, 1, 1]]), True),
]
STEPS, QUEUE_SIZE = 3, 40  # 16 or 18 keys a step: partly filled, then wrapped mid-chunk


def _case_data(masks, step):
    valid = torch.tensor(masks[0] + masks[1], dtype=torch.bool)
    torch.manual_seed(100 * step + len(valid))
    regions = torch.randn(2, *valid.shape, 5, dtype=torch.float64)
    return regions[0], regions[1], valid


def _head():
    torch.manual_seed(7)
    return nn.Linear(5, 4).double()


def _dist_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    results = {}
    for name, masks, decoupled in DIST_CASES:
        head = _head()
        loss_fn = LocalMatchingLoss(
            head, 0.4, decoupled=decoupled, queue=NegativeQueue(QUEUE_SIZE, 4)
        )
        # no buffer broadcast: each rank's queue evolves from its own pushes
        ddp = DistributedDataParallel(loss_fn, broadcast_buffers=False)
        rows = slice(len(masks[0]) if rank else 0, None if rank else len(masks[0]))
        for step in range(STEPS):
            r1, r2, valid = _case_data(masks, step)
            head.zero_grad()
            loss = ddp(r1[rows], r2[rows], valid[rows])
            loss.backward()
            results[f"{name}/{step}"] = {
                "loss": loss.detach(),
                "weight_grad": head.weight.grad.clone(),
                "queue": loss_fn.queue.embeddings.clone(),
                "count": loss_fn.queue.count.clone(),
                "ptr": loss_fn.queue.ptr.clone(),
            }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    # the DDP wrappers (reducers) must go before their process group: one that outlives it
    # aborts the process at exit ("terminate called without an active exception")
    del ddp
    gc.collect()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_hold_the_queue_of_one_process_on_the_concatenated_batch(tmp_path):
    """With ``gather`` every rank pushes the keys of every rank: both ranks hold the queue of
    one process trained on the concatenated batches, and the losses and DDP-averaged
    gradients equal that process's at every step (the queue's rows in every denominator)."""
    world = 2
    mp.spawn(
        _dist_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for name, masks, decoupled in DIST_CASES:
        head = _head()
        loss_fn = LocalMatchingLoss(
            head, 0.4, decoupled=decoupled, queue=NegativeQueue(QUEUE_SIZE, 4)
        )
        for step in range(STEPS):
            r1, r2, valid = _case_data(masks, step)
            head.zero_grad()
            ref = loss_fn(r1, r2, valid)
            ref.backward()
            key = f"{name}/{step}"
            mean_loss = sum(r[key]["loss"] for r in ranks) / world
            torch.testing.assert_close(mean_loss, ref.detach(), msg=f"loss, {key}")
            for r in range(world):
                got = ranks[r][key]
                torch.testing.assert_close(got["weight_grad"], head.weight.grad, msg=key)
                torch.testing.assert_close(
                    got["queue"], loss_fn.queue.embeddings, rtol=0, atol=1e-7, msg=key
                )
                assert int(got["count"]) == int(loss_fn.queue.count), key
                assert int(got["ptr"]) == int(loss_fn.queue.ptr), key
        assert int(loss_fn.queue.count) == QUEUE_SIZE  # filled, and wrapped around
