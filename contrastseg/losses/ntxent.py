"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al., ICML 2020).

For ``N`` positive pairs ``(z1[i], z2[i])`` the loss runs over the ``2N`` embeddings: every
embedding is an anchor, its partner is the positive, the other ``2N - 2`` are negatives, and

    l(i, j) = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ),   s = cosine similarity,
    L = mean over the 2N anchors of l(anchor, positive)             (SimCLR, Algorithm 1).

``decoupled=True`` leaves the positive out of the denominator (the sum runs over ``k != i,
j``) and adds ``1e-8`` to it, as the official GLCNet code does
(``T-SS-GLCNet/utils/contrast_loss.py``: ``-log(sim_pos / (sim_neg.sum(-1) + eps))`` with
``eps=1e-8``, on the exponentiated similarities); without the positive this is Yeh et al.'s
"Decoupled Contrastive Learning" (ECCV 2022). The ``1e-8`` is negligible unless every
negative is far below it (a low temperature and well separated negatives), where it bounds
the loss from below.

Extra negatives (``negatives``, a ``(K, D)`` tensor, e.g. the rows of a
:class:`NegativeQueue` of earlier batches, MoCo-style, He et al. CVPR 2020) join every
anchor's denominator and nothing else: they are detached (no gradient reaches them), never
anchors, never positives:

    l(i, j) = -log( exp(s_ij / t) / (sum_{k != i} exp(s_ik / t) + sum_q exp(s_iq / t)) ).

How it is computed, and why:

* embeddings are L2-normalised and the logits built in float32 (float64 stays float64)
  with autocast off, so a temperature of 0.01 (logits up to 100) is safe under bf16/fp16
  autocast;
* each row is a log-sum-exp over logits (never ``exp`` then ``log``), self and (decoupled)
  positive masked with a large finite negative rather than ``-inf``, so rows that are
  entirely masked stay finite and have finite (zero) gradients;
* memory is O(N_local x N_global): the logits, their gradient and a few same-sized
  temporaries, never a ``(2N, 2N, D)`` tensor (see ``benchmarks/losses.py``); ``K`` extra
  negatives add their own ``(2N, K)`` logits, reduced to one log-sum-exp per anchor and
  added with ``logaddexp``.

Distributed convention (``gather=True`` under ``torch.distributed``): each rank's anchors
meet the embeddings of all ranks, gathered with gradients
(:func:`contrastseg.utils.dist.all_gather_with_grad`). The loss a rank returns is

    loss_r = world_size * (sum of the losses of this rank's anchors) / (anchors of all ranks),

which is the mean over this rank's anchors when ranks hold equal batches. The mean of
``loss_r`` over ranks, which is what DDP's gradient averaging optimises, is then exactly the
single-process loss on the concatenated batch, and the DDP-averaged parameter gradients
are exactly the single-process gradients, also when ranks hold different batch sizes.
To log the global loss, average ``loss_r`` over ranks
(:func:`contrastseg.utils.dist.reduce_mean`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.utils.dist import (
    all_gather,
    all_gather_sizes,
    all_gather_with_grad,
    is_distributed,
)
from contrastseg.utils.dist import rank as dist_rank
from contrastseg.utils.dist import world_size as dist_world_size


class MaskedNTXent(NamedTuple):
    """Result of :func:`masked_nt_xent`.

    Attributes:
        loss: scalar loss of this rank (see the module docstring for the scaling).
        num_valid: number of valid pairs in the global batch (int64 scalar tensor, stays on
            the device so reading it is the caller's choice of synchronisation).
        num_pairs: number of pairs, valid or not, in the global batch.
    """

    loss: Tensor
    num_valid: Tensor
    num_pairs: int


def _check_pairs(z1: Tensor, z2: Tensor, temperature: float) -> None:
    if not isinstance(z1, Tensor) or not isinstance(z2, Tensor):
        raise ValueError(
            f"nt_xent expects tensors, got {type(z1).__name__} and {type(z2).__name__}"
        )
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            "nt_xent expects two (N, D) embeddings of the same shape, "
            f"got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not z1.is_floating_point() or not z2.is_floating_point():
        raise ValueError(
            f"nt_xent expects floating-point embeddings, got {z1.dtype} and {z2.dtype}"
        )
    if z1.shape[1] < 1:
        raise ValueError(f"nt_xent expects an embedding dimension D >= 1, got {tuple(z1.shape)}")
    if not float(temperature) > 0.0:
        raise ValueError(f"nt_xent temperature must be > 0, got {temperature}")


def _check_valid(z1: Tensor, valid: Tensor) -> None:
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != z1.shape[:1]:
        got = (
            f"{valid.dtype} {tuple(valid.shape)}"
            if isinstance(valid, Tensor)
            else type(valid).__name__
        )
        raise ValueError(
            f"masked_nt_xent expects a bool valid mask of shape ({z1.shape[0]},), got {got}"
        )


#: What the official GLCNet code adds to the decoupled denominator (``NTXentLoss(eps=1e-8)``).
DECOUPLED_EPS = 1e-8


def _check_negatives(negatives: Tensor | None, dim: int) -> None:
    if negatives is None:
        return
    if not isinstance(negatives, Tensor) or not negatives.is_floating_point():
        got = negatives.dtype if isinstance(negatives, Tensor) else type(negatives).__name__
        raise ValueError(f"nt_xent expects floating-point extra negatives, got {got}")
    if negatives.ndim != 2 or negatives.shape[1] != dim:
        raise ValueError(
            f"nt_xent expects extra negatives of shape (K, {dim}) (the embeddings' dimension), "
            f"got {tuple(negatives.shape)}"
        )


class _Core(NamedTuple):
    """:func:`_nt_xent`'s result and the keys it contrasted (for a queue to keep)."""

    result: MaskedNTXent
    keys: Tensor  # (2 N_global, D) normalised [Z1; Z2] of every rank (gathered), with grad
    keys_valid: Tensor | None  # (2 N_global,) bool, None = all


def _nt_xent(
    z1: Tensor,
    z2: Tensor,
    valid: Tensor | None,
    temperature: float,
    gather: bool,
    decoupled: bool,
    negatives: Tensor | None = None,
) -> _Core:
    """Shared core of :func:`nt_xent` and :func:`masked_nt_xent` (inputs already checked)."""
    n, dim = z1.shape
    num_extra = 0 if negatives is None else negatives.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        # float32 at least (float64 stays float64, which gradcheck needs).
        dtype = torch.promote_types(z1.dtype, torch.float32)
        z1 = F.normalize(z1.to(dtype), dim=1)
        z2 = F.normalize(z2.to(dtype), dim=1)
        if gather and is_distributed():
            sizes = all_gather_sizes(n, z1.device)
            world, offset = dist_world_size(), sum(sizes[: dist_rank()])
            # One collective for both views: (N_global, 2D), split back below.
            k1, k2 = all_gather_with_grad(torch.cat([z1, z2], dim=1), sizes).split(dim, dim=1)
            valid_global = None if valid is None else all_gather(valid, sizes)
        else:
            world, offset, sizes = 1, 0, [n]
            k1, k2, valid_global = z1, z2, valid
        n_global = sum(sizes)
        if n_global == 0:
            raise ValueError("nt_xent got no embeddings on any rank (N = 0)")
        if decoupled and valid is None and n_global < 2 and num_extra == 0:
            raise ValueError(
                "decoupled nt_xent needs at least 2 pairs in the (global) batch to have a "
                f"negative, got {n_global}"
            )

        # Rows: this rank's 2N anchors [z1; z2]. Columns: all 2N_global keys [Z1; Z2].
        # Temperature applied to the (2N, D) side, and masks written in place (the matmul's
        # backward needs its inputs, not its output), so the only (2N, 2N_global) tensors
        # are the logits and their gradient.
        # (in this order: autograd sums the gradients of z1 and z2 in the order of creation)
        anchors = torch.cat([z1, z2]) / temperature
        keys = torch.cat([k1, k2])
        logits = anchors @ keys.T
        rows = torch.arange(n, device=z1.device) + offset
        self_col = torch.cat([rows, rows + n_global])[:, None]
        positive_col = torch.cat([rows + n_global, rows])[:, None]
        # The positive sits on this rank; computing it locally skips an indexing gather.
        positive = (z1 * z2).sum(dim=1) / temperature
        positive = torch.cat([positive, positive])

        fill = torch.finfo(logits.dtype).min
        logits.scatter_(1, self_col, fill)
        if decoupled:
            logits.scatter_(1, positive_col, fill)
        keys_valid = None if valid_global is None else torch.cat([valid_global, valid_global])
        if keys_valid is not None:
            logits.masked_fill_(~keys_valid[None, :], fill)
        denominator = torch.logsumexp(logits, dim=1)  # log of the sum over the batch's keys
        if num_extra:
            # normalised into a new tensor: a queue may change its rows before the backward
            extra = F.normalize(negatives.detach().to(dtype), dim=1)
            denominator = torch.logaddexp(denominator, torch.logsumexp(anchors @ extra.T, dim=1))
        if decoupled:  # + 1e-8 inside the log, as the official code adds it
            denominator = torch.logaddexp(
                denominator, torch.tensor(math.log(DECOUPLED_EPS), dtype=dtype, device=z1.device)
            )
        per_anchor = denominator - positive

        if valid is None:
            loss = per_anchor.sum() * (world / (2 * n_global))
            result = MaskedNTXent(loss, torch.tensor(n_global, device=z1.device), n_global)
            return _Core(result, keys, keys_valid)

        num_valid = valid_global.sum()
        anchor_ok = torch.cat([valid, valid])
        count = 2 * num_valid
        if decoupled and not num_extra:
            # With one valid pair there is no negative: that anchor's loss is undefined.
            has_negative = num_valid >= 2
            anchor_ok = anchor_ok & has_negative
            count = torch.where(has_negative, count, torch.zeros_like(count))
        # where (not a product) keeps the masked rows' values out of the sum and gradient.
        total = torch.where(anchor_ok, per_anchor, torch.zeros_like(per_anchor)).sum()
        loss = total * world / count.clamp(min=1)
        return _Core(MaskedNTXent(loss, num_valid, n_global), keys, keys_valid)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    gather: bool = True,
    decoupled: bool = False,
    negatives: Tensor | None = None,
) -> Tensor:
    """NT-Xent loss of ``N`` positive pairs (SimCLR, Chen et al. 2020, eq. 1 and Algorithm 1).

    Args:
        z1: ``(N, D)`` embeddings of the first views (any scale; normalised inside).
        z2: ``(N, D)`` embeddings of the second views; ``z2[i]`` is the positive of ``z1[i]``.
        temperature: softmax temperature ``t > 0``.
        gather: under ``torch.distributed``, contrast against the embeddings of all ranks
            (gradients flow through the gather). A no-op without a process group. A
            collective: every rank must call it.
        decoupled: leave the positive out of the denominator and add ``1e-8`` to it
            (official GLCNet code).
        negatives: ``(K, D)`` extra negatives in every anchor's denominator (any scale;
            normalised inside, detached: no gradient reaches them), e.g. a
            :class:`NegativeQueue`'s rows. Not gathered: each rank passes its own.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs): the mean over the ``2N``
        anchors in a single process (see the module docstring for the per-rank scaling
        under ``torch.distributed``).

    Raises:
        ValueError: shapes differ or are not ``(N, D)``, non-float inputs, ``t <= 0``, no
            embeddings at all, ``decoupled`` with fewer than 2 pairs and no extra negative,
            or extra negatives that are not ``(K, D)`` floats.
    """
    _check_pairs(z1, z2, temperature)
    _check_negatives(negatives, z1.shape[1])
    return _nt_xent(z1, z2, None, float(temperature), gather, decoupled, negatives).result.loss


def masked_nt_xent(
    z1: Tensor,
    z2: Tensor,
    valid: Tensor,
    temperature: float = 0.5,
    *,
    gather: bool = True,
    decoupled: bool = False,
    negatives: Tensor | None = None,
) -> MaskedNTXent:
    """NT-Xent over the valid pairs only, with fixed shapes (no data-dependent indexing).

    Invalid pairs are neither anchors nor negatives: it equals :func:`nt_xent` on
    ``z1[valid], z2[valid]``. Shapes stay fixed, so every rank calls the same collectives
    whatever its number of valid pairs (no deadlock when one rank has none), nothing is read
    back to the host, and the graph suits ``torch.compile``. With no valid pair in the global
    batch (or one, when ``decoupled`` and there is no extra negative) the loss is an exact
    zero that is still connected to the graph, so every parameter gets a (zero) gradient and
    nothing is NaN.

    Args:
        z1: ``(M, D)`` first-view embeddings; rows of invalid pairs may hold anything finite.
        z2: ``(M, D)`` second-view embeddings.
        valid: ``(M,)`` bool, which pairs take part.
        temperature: softmax temperature ``t > 0``.
        gather: contrast against all ranks' valid embeddings (see :func:`nt_xent`).
        decoupled: leave the positive out of the denominator and add ``1e-8`` to it.
        negatives: ``(K, D)`` extra negatives of every anchor (see :func:`nt_xent`).

    Returns:
        :class:`MaskedNTXent` with the scalar loss and the global pair counts.
    """
    _check_pairs(z1, z2, temperature)
    _check_negatives(negatives, z1.shape[1])
    _check_valid(z1, valid)
    core = _nt_xent(z1, z2, valid.to(z1.device), float(temperature), gather, decoupled, negatives)
    return core.result


class NegativeQueue(nn.Module):
    """A FIFO of embeddings of earlier batches, the extra negatives of one NT-Xent branch.

    MoCo's memory queue (He et al., CVPR 2020) without the momentum encoder: after each
    training step's loss, that step's L2-normalised keys (both views; only the valid pairs;
    under ``torch.distributed`` with ``gather`` the keys of every rank, so every rank holds
    the same queue) replace the oldest rows. The rows are detached float32 buffers, so a
    checkpoint (the method's state dict) holds them and a resumed run contrasts against the
    same negatives. Until ``size`` rows have been written only the written ones are used.

    Args:
        size: rows kept (>= 1).
        dim: the embedding dimension of the branch (its head's output width).

    Buffers: ``embeddings (size, dim)`` float32, ``ptr`` (next row to write) and ``count``
    (rows written, at most ``size``), int64 scalars.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        for name, value in (("size", size), ("dimension", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NegativeQueue {name} must be an integer >= 1, got {value!r}")
        self.size, self.dim = size, dim
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self._full = False  # the host's copy of count == size, once it is (no more reads)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._full = False  # count is read again after a load
        super()._load_from_state_dict(*args, **kwargs)

    def negatives(self) -> Tensor:
        """The rows written so far, ``(min(count, size), dim)`` (a view: the caller copies)."""
        if not self._full:
            written = int(self.count)  # reads the device until the queue is full
            self._full = written >= self.size
            if not self._full:
                return self.embeddings[:written]
        return self.embeddings

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Write ``keys`` ``(M, dim)`` after the newest rows (oldest replaced; of ``M > size``
        keys the last ``size`` stay). No gradient: the rows are copies."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"NegativeQueue of dimension {self.dim} got keys of shape {tuple(keys.shape)}: "
                "the queue's dimension must be the head's output width"
            )
        m = keys.shape[0]
        if m == 0:
            return
        kept = keys[-self.size :]
        start = self.ptr + (m - kept.shape[0])
        rows = (start + torch.arange(kept.shape[0], device=self.ptr.device)) % self.size
        self.embeddings.index_copy_(0, rows, kept.to(self.embeddings.dtype))
        self.ptr.copy_((self.ptr + m) % self.size)
        self.count.copy_((self.count + m).clamp(max=self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


def queued_nt_xent(
    z1: Tensor,
    z2: Tensor,
    queue: NegativeQueue | None,
    valid: Tensor | None = None,
    temperature: float = 0.5,
    *,
    gather: bool = True,
    decoupled: bool = False,
) -> MaskedNTXent:
    """NT-Xent of a branch with a queue: its rows are extra negatives, then this batch joins it.

    Without a queue (``None``) it computes exactly what :func:`nt_xent` (``valid`` None) or
    :func:`masked_nt_xent` does. With one: the loss with ``queue.negatives()`` as extra negatives;
    then, in training mode only, the keys of this step (normalised, of every rank when
    gathered, valid pairs only, view-1 keys then view-2 keys) are pushed into the queue, so
    the batch never meets itself in its own denominator twice.

    Returns:
        :class:`MaskedNTXent` (with ``valid`` None: ``num_valid`` = the global pair count).
    """
    _check_pairs(z1, z2, temperature)
    if valid is not None:
        _check_valid(z1, valid)
        valid = valid.to(z1.device)
    if queue is not None and z1.shape[1] != queue.dim:
        raise ValueError(
            f"the embeddings have dimension {z1.shape[1]} but the negative queue holds "
            f"{queue.dim}-dimensional rows (method.queue_size needs the head's output width)"
        )
    negatives = None if queue is None else queue.negatives()
    core = _nt_xent(z1, z2, valid, float(temperature), gather, decoupled, negatives)
    if queue is not None and queue.training:
        keys = core.keys.detach()
        queue.push(keys if core.keys_valid is None else keys[core.keys_valid])
    return core.result


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`.

    Args:
        temperature: softmax temperature ``t > 0`` (SimCLR and GLCNet use 0.5).
        gather: contrast against the embeddings of all ranks under ``torch.distributed``.
        decoupled: leave the positive out of the denominator (official GLCNet code).

    Shapes: ``forward(z1 (N, D), z2 (N, D)) -> ()``.
    """

    def __init__(
        self, temperature: float = 0.5, gather: bool = True, decoupled: bool = False
    ) -> None:
        super().__init__()
        if not float(temperature) > 0.0:
            raise ValueError(f"NTXentLoss temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather = bool(gather)
        self.decoupled = bool(decoupled)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature, gather=self.gather, decoupled=self.decoupled)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, decoupled={self.decoupled}"
