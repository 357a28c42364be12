"""Shared pieces of the segmentation losses: input checks, probabilities, soft counts, weights.

Conventions used by every loss of the catalogue:

- ``logits`` are ``(B, K, H, W)`` raw scores; ``target`` is ``(B, H, W)`` integer class
  indices in ``[0, K)`` or ``ignore_index``. Ignored pixels contribute to nothing: neither
  to a numerator nor to a denominator, nor to a class count.
- Binary mode: ``(B, 1, H, W)`` logits score the foreground and the target holds 0 / 1.
  The logits ``x`` are turned into the two-class logits ``[0, x]``, whose softmax is
  ``[1 - sigmoid(x), sigmoid(x)]``; every formula is then the two-class formula, which for
  cross-entropy and focal loss is exactly the sigmoid (binary) form of the paper.
- Region losses take soft counts per class, ``TP = sum p y``, ``FP = sum p (1 - y)``,
  ``FN = sum (1 - p) y`` over the valid pixels of the whole batch (default) or of each image
  (``per_image=True``), and average the per-class losses over the classes **present in the
  target** (of the batch, or of each image, then over the images that have a valid pixel).
  A class absent from the target has no true positives, so its ratio would be a constant
  with no gradient; averaging it in would only shift the minimum away from 0.
- A batch without a single valid pixel gives a loss of 0 that is still attached to the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ClassWeight = str | Sequence[float] | Tensor | None
"""Class weights: ``None`` (all 1), ``"balanced"`` (from label frequencies) or one value per class."""


def check_inputs(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Validate a ``(logits, target)`` pair and return the int64 target and its valid mask.

    Args:
        logits: ``(B, K, H, W)`` floating-point scores, ``K == 1`` for binary mode.
        target: ``(B, H, W)`` integer labels in ``[0, K)`` (``[0, 2)`` in binary mode) or
            ``ignore_index``.
        ignore_index: label of pixels to leave out, or ``None``.

    Returns:
        ``(target, valid)``: the target as int64 and a ``(B, H, W)`` bool mask of valid pixels.

    Raises:
        ValueError: wrong rank, mismatched shapes, a floating-point or boolean target, or a
            label outside the class range that is not ``ignore_index``. Checking the labels
            reads one flag back from the device.
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"logits and target must be tensors, got {type(logits).__name__} and {type(target).__name__}"
        )
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}; "
            "convert label masks with .long() after checking their values"
        )
    batch, classes, height, width = logits.shape
    if target.shape != (batch, height, width):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected target (B, H, W) = {(batch, height, width)}"
        )
    if target.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but target is on {target.device}")
    target = target.long()
    valid = (
        torch.ones_like(target, dtype=torch.bool)
        if ignore_index is None
        else target != ignore_index
    )
    n_labels = max(classes, 2)
    bad = valid & ((target < 0) | (target >= n_labels))
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        mode = "binary mode, labels 0/1" if classes == 1 else f"{classes} classes"
        raise ValueError(
            f"target holds labels {values} outside [0, {n_labels}) ({mode}) that are not "
            f"ignore_index={ignore_index}"
        )
    return target, valid


def class_logits(logits: Tensor) -> Tensor:
    """Logits whose softmax gives the class probabilities: ``[0, x]`` in binary mode.

    Half-precision logits (autocast) are promoted to float32: the per-class sums over
    a batch of pixels would lose most of their digits in float16 / bfloat16.

    Shapes: ``(B, K, H, W) -> (B, max(K, 2), H, W)``.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def one_hot_valid(target: Tensor, valid: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot target ``(B, K, H, W)`` that is 0 in every channel at ignored pixels."""
    safe = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(dtype)
    return one_hot * valid.unsqueeze(1).to(dtype)


def soft_counts(
    probs: Tensor, one_hot: Tensor, valid: Tensor, per_image: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Soft true positives, false positives, false negatives and target counts per class.

    Args:
        probs: ``(B, K, H, W)`` class probabilities.
        one_hot: ``(B, K, H, W)`` one-hot target, 0 at ignored pixels.
        valid: ``(B, H, W)`` bool mask of valid pixels.
        per_image: sum over each image (rows ``B``) or over the whole batch (one row).

    Returns:
        ``(tp, fp, fn, count)``, each ``(B, K)`` or ``(1, K)``; ``count`` is the number of
        valid target pixels of each class.
    """
    probs = probs * valid.unsqueeze(1).to(probs.dtype)
    dims = (2, 3) if per_image else (0, 2, 3)
    tp = (probs * one_hot).sum(dims)
    fp = probs.sum(dims) - tp
    count = one_hot.sum(dims)
    fn = count - tp
    if not per_image:
        tp, fp, fn, count = (t.unsqueeze(0) for t in (tp, fp, fn, count))
    return tp, fp, fn, count


def mean_over_present(per_class: Tensor, count: Tensor) -> Tensor:
    """Mean of ``(N, K)`` per-class losses over the classes with ``count > 0``, then over rows.

    Rows without any present class are left out; with none at all the result is 0 times
    the input sum, so it keeps a (zero) gradient path.
    """
    present = count > 0
    per_class = torch.where(present, per_class, torch.zeros_like(per_class))
    n_present = present.sum(1)
    rows = n_present > 0
    row_loss = per_class.sum(1) / n_present.clamp_min(1)
    if not bool(rows.any()):
        return per_class.sum() * 0.0
    return row_loss[rows].mean()


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``(B, H, W)`` values over the valid pixels; 0 (with a gradient path) if none."""
    mask = valid.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` whose gradient is 0, not NaN, where ``base == 0``.

    Exponents below 1 (focal Tversky's 0.75, unified focal's 0.5) have an infinite
    derivative at 0, which a perfect prediction reaches; the double ``where`` keeps it out
    of the backward pass.
    """
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe.pow(exponent), torch.zeros_like(base))


def count_labels(target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """Pixels per class, ``(K,)`` int64, ignoring ``ignore_index`` (and nothing else).

    Args:
        target: integer labels of any shape; values outside ``[0, K)`` raise.
        num_classes: ``K``.
        ignore_index: label to skip, or ``None``.
    """
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    flat = target.reshape(-1).long()
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        bad = torch.unique(flat[(flat < 0) | (flat >= num_classes)])[:10].tolist()
        raise ValueError(
            f"labels {bad} are outside [0, {num_classes}) and not ignore_index={ignore_index}"
        )
    return torch.bincount(flat, minlength=num_classes)


def balanced_class_weights(counts: Tensor) -> Tensor:
    """Class weights ``n_pixels / (K * count_c)`` (the "balanced" heuristic of King & Zeng 2001).

    A class with a zero count gets weight 0: it never occurs as a target, so in weighted
    cross-entropy or focal loss its weight would never multiply a term anyway, and 0 keeps
    it from inflating the label-smoothing part.

    Args:
        counts: ``(K,)`` pixel counts per class.

    Returns:
        ``(K,)`` float64 weights.
    """
    counts = counts.to(torch.float64)
    if counts.ndim != 1 or bool((counts < 0).any()):
        raise ValueError(
            f"class counts must be a 1-d tensor of non-negative counts, got {counts.tolist()}"
        )
    total = counts.sum()
    weights = torch.where(
        counts > 0, total / (counts.numel() * counts.clamp_min(1)), torch.zeros_like(counts)
    )
    return weights


def resolve_class_weight(
    weight: ClassWeight,
    num_classes: int,
    target: Tensor,
    valid: Tensor,
    class_counts: Tensor | None,
    like: Tensor,
) -> Tensor | None:
    """Turn a class-weight setting into a ``(K,)`` tensor on ``like``'s device and dtype.

    ``"balanced"`` uses ``class_counts`` when given (e.g. counted once over the training
    labels), otherwise the valid labels of the current batch.
    """
    if weight is None:
        return None
    if isinstance(weight, str):
        if weight != "balanced":
            raise ValueError(
                f"class weight {weight!r} is not 'balanced', None or one value per class"
            )
        if class_counts is None:
            class_counts = torch.bincount(target[valid], minlength=num_classes)
        if class_counts.numel() != num_classes:
            raise ValueError(
                f"class_counts has {class_counts.numel()} entries for {num_classes} classes"
            )
        weight = balanced_class_weights(class_counts)
    weight = torch.as_tensor(weight, dtype=like.dtype, device=like.device).reshape(-1)
    if weight.numel() != num_classes:
        raise ValueError(
            f"class weights have {weight.numel()} values but there are {num_classes} classes"
        )
    return weight


class FunctionalLoss(nn.Module):
    """The module form of a loss function: stores keyword arguments, calls ``fn`` with them.

    A subclass sets ``fn`` (as a ``staticmethod``) and passes its validated arguments to
    ``__init__``; ``forward(logits, target)`` is ``fn(logits, target, **kwargs)``.
    """

    fn: Callable[..., Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return type(self).fn(logits, target, **self.kwargs)

    def extra_repr(self) -> str:
        # class counts are a tensor of the data, not a setting
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k != "class_counts")
