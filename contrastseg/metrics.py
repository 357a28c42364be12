"""Confusion matrix accumulated on the device, and the segmentation metrics derived from it.

Rows are true classes, columns predicted classes. From the matrix ``M`` over the valid
(non-ignored) pixels:

- overall accuracy ``OA = trace(M) / sum(M)``;
- per class ``c``: ``IoU = TP / (TP + FP + FN)``, ``precision = TP / (TP + FP)``,
  ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``;
- mIoU, mean F1, mean precision and mean recall over the classes **present in the target or
  the prediction** and not excluded: a class absent from both is left out (scored neither 0
  nor 1), as torchmetrics' macro averages do. A present class with a zero denominator (e.g.
  never predicted, for precision) scores 0;
- Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` with ``p_o = OA`` and
  ``p_e = sum_c row_c col_c / N^2`` (Cohen 1960), over all classes.

``exclude`` (e.g. ISPRS clutter) only removes classes from the means; OA and kappa always use
the whole matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class ConfusionMatrix:
    """A ``(K, K)`` int64 confusion matrix accumulated with ``bincount`` on the device.

    Args:
        num_classes: ``K``.
        ignore_index: target label of pixels to skip, or ``None``.
        device: where the matrix lives; ``None`` adopts the device of the first update.

    Example:
        >>> cm = ConfusionMatrix(6)
        >>> cm.update(logits, target)  # logits (B, 6, H, W) or predictions (B, H, W)
        >>> cm.all_reduce()            # under DDP, once, before compute
        >>> print(cm.format_table(class_names))
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._device = None if device is None else torch.device(device)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self._device)

    def reset(self) -> None:
        """Zero the counts (keeps the device)."""
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: ``(B, H, W)`` integer predicted classes, or ``(B, K, H, W)`` floating-point
                scores (the argmax over ``K`` is taken).
            target: ``(B, H, W)`` integer labels in ``[0, K)`` or ``ignore_index``.

        Raises:
            ValueError: mismatched shapes, a floating-point target, or labels / predictions
                outside ``[0, K)`` (other than ``ignore_index`` in the target). The range check
                reads one flag back from the device.
        """
        if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
            raise ValueError("pred and target must be tensors")
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        if pred.is_floating_point():
            if pred.ndim != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"floating-point pred must be scores (B, {self.num_classes}, H, W), got shape "
                    f"{tuple(pred.shape)}"
                )
            pred = pred.argmax(1)
        elif pred.dtype == torch.bool or pred.is_complex():
            raise ValueError(
                f"pred must be integer classes or float scores, got dtype {pred.dtype}"
            )
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
            )
        if self._device is None:
            self._device = target.device
            self.matrix = self.matrix.to(self._device)
        pred = pred.to(self._device, non_blocking=True).reshape(-1).long()
        target = target.to(self._device, non_blocking=True).reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        k = self.num_classes
        bad_target = (target < 0) | (target >= k)
        bad_pred = (pred < 0) | (pred >= k)
        if bool((bad_target | bad_pred).any()):
            t_vals = torch.unique(target[bad_target])[:10].tolist()
            p_vals = torch.unique(pred[bad_pred])[:10].tolist()
            raise ValueError(
                f"labels must be in [0, {k}) (or ignore_index={self.ignore_index} in the target); "
                f"target has {t_vals}, prediction has {p_vals}"
            )
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks of the default process group (no-op without one).

        Call it once, after the last update and before :meth:`compute`; calling it twice
        counts the other ranks twice. With NCCL the matrix must be on the rank's GPU.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self, exclude: Sequence[int] = ()) -> dict[str, Any]:
        """The metrics as plain Python values (JSON-friendly).

        Args:
            exclude: classes to leave out of the means (e.g. clutter).

        Returns:
            ``overall_accuracy``, ``miou``, ``mean_f1``, ``mean_precision``, ``mean_recall``,
            ``kappa`` (floats, ``None`` when undefined), ``num_pixels``, ``scored_classes``
            (the classes in the means) and ``per_class`` with lists ``iou``, ``precision``,
            ``recall``, ``f1`` (``None`` for a class absent from target and prediction) and
            ``support`` (target pixels per class).
        """
        exclude = sorted({int(c) for c in exclude})
        if any(not 0 <= c < self.num_classes for c in exclude):
            raise ValueError(f"exclude={exclude} names classes outside [0, {self.num_classes})")
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diag()
        support = m.sum(1)
        predicted = m.sum(0)
        total = float(m.sum())
        present = (support + predicted) > 0

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            values = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
            return torch.where(present, values, torch.full_like(num, math.nan))

        per_class = {
            "iou": ratio(tp, support + predicted - tp),
            "precision": ratio(tp, predicted),
            "recall": ratio(tp, support),
            "f1": ratio(2 * tp, support + predicted),
        }
        scored = present.clone()
        scored[exclude] = False

        def mean(values: Tensor) -> float | None:
            return float(values[scored].mean()) if bool(scored.any()) else None

        kappa = None
        overall = None
        if total > 0:
            overall = float(tp.sum()) / total
            chance = float((support * predicted).sum()) / total**2
            # All pixels one class in both target and prediction: perfect, but 0/0 by the formula.
            kappa = 1.0 if chance == 1.0 else (overall - chance) / (1.0 - chance)
        return {
            "overall_accuracy": overall,
            "miou": mean(per_class["iou"]),
            "mean_f1": mean(per_class["f1"]),
            "mean_precision": mean(per_class["precision"]),
            "mean_recall": mean(per_class["recall"]),
            "kappa": kappa,
            "num_pixels": int(total),
            "scored_classes": scored.nonzero().flatten().tolist(),
            "excluded_classes": exclude,
            "per_class": {
                **{
                    k: [None if math.isnan(v) else v for v in t.tolist()]
                    for k, t in per_class.items()
                },
                "support": [int(v) for v in support.tolist()],
            },
        }

    def to_dict(
        self, class_names: Sequence[str] | None = None, exclude: Sequence[int] = ()
    ) -> dict[str, Any]:
        """:meth:`compute` plus ``class_names``, ``ignore_index`` and the matrix as nested lists."""
        out = self.compute(exclude)
        out["class_names"] = list(self._names(class_names))
        out["ignore_index"] = self.ignore_index
        out["confusion_matrix"] = self.matrix.detach().cpu().tolist()
        return out

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(c) for c in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.num_classes} classes")
        return [str(n) for n in class_names]

    def format_table(
        self, class_names: Sequence[str] | None = None, exclude: Sequence[int] = ()
    ) -> str:
        """Per-class rows (IoU, F1, precision, recall in %, pixel count) and a summary.

        Classes absent from target and prediction show ``-``; excluded classes are marked.
        """
        names = self._names(class_names)
        res = self.compute(exclude)
        per = res["per_class"]
        width = max(12, *(len(n) for n in names))

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.2f}"

        header = f"{'class':<{width}}  {'IoU':>7}  {'F1':>7}  {'prec.':>7}  {'recall':>7}  {'pixels':>12}"
        lines = [header, "-" * len(header)]
        for c, name in enumerate(names):
            note = "  (excluded)" if c in res["excluded_classes"] else ""
            lines.append(
                f"{name:<{width}}  {pct(per['iou'][c]):>7}  {pct(per['f1'][c]):>7}  "
                f"{pct(per['precision'][c]):>7}  {pct(per['recall'][c]):>7}  {per['support'][c]:>12,}{note}"
            )
        lines.append("-" * len(header))
        kappa = "-" if res["kappa"] is None else f"{res['kappa']:.4f}"
        lines.append(
            f"OA {pct(res['overall_accuracy'])}  mIoU {pct(res['miou'])}  mean F1 {pct(res['mean_f1'])}  "
            f"kappa {kappa}  ({len(res['scored_classes'])} classes scored, {res['num_pixels']:,} pixels)"
        )
        return "\n".join(lines)


#: Pairs at most used for the pairwise health statistics (a ``(2n, 2n)`` Gram matrix).
HEALTH_MAX_PAIRS = 256


def even_indices(count: int, most: int, device: torch.device | str | None = None) -> Tensor:
    """``min(count, most)`` indices evenly spaced over ``0 .. count - 1``, first and last
    included: a deterministic subset that spans the whole sequence."""
    return torch.linspace(0, count - 1, min(count, most), device=device).round().long()


@torch.no_grad()
def embedding_health(
    z1: Tensor, z2: Tensor, valid: Tensor | None = None, max_pairs: int = HEALTH_MAX_PAIRS
) -> dict[str, Tensor]:
    """How healthy a batch of contrastive embeddings is: spread, positive and negative similarity.

    The embeddings are L2-normalised first (what NT-Xent compares). With ``z = [z1; z2]``:

    - ``std``: the standard deviation over the batch of each dimension, averaged over the
      dimensions and scaled by ``sqrt(D)``: about 1 for embeddings spread over the sphere, 0
      when every embedding is the same (collapse) — SimSiam's collapse monitor (Chen & He
      2021, Sec. 4.1);
    - ``pos_cos`` / ``neg_cos``: mean cosine similarity of the positive pairs ``(z1_i, z2_i)``
      and of every other pair of distinct embeddings (negatives);
    - ``alignment``: ``E ||z1_i - z2_i||^2`` (Wang & Isola 2020, alpha = 2; 0 is perfect);
    - ``uniformity``: ``log E exp(-2 ||u - v||^2)`` over pairs of distinct embeddings of one
      view, averaged over the two views (Wang & Isola 2020, t = 2, as their reference code
      computes it per view: positives are not in it, so it does not depend on the alignment);
      0 when collapsed, lower is more uniform: -4 if all pairs are orthogonal, about -3.9 for
      uniform points on a high-dimensional sphere.

    Args:
        z1, z2: ``(N, D)`` embeddings of the two views; ``z2[i]`` is the positive of ``z1[i]``.
        valid: ``(N,)`` bool, the pairs that count (None = all); no host synchronisation.
        max_pairs: the pairwise statistics (negatives, uniformity) use at most this many
            pairs, spread evenly over the batch, so their cost stays bounded.

    Returns:
        Scalar float32 tensors ``std``, ``pos_cos``, ``neg_cos``, ``alignment``, ``uniformity``
        (NaN when fewer than 2 pairs are valid).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"embedding_health expects two (N, D) tensors, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n, dim = z1.shape
    w = (
        torch.ones(n, device=z1.device)
        if valid is None
        else valid.to(device=z1.device, dtype=torch.float32)
    )
    a = torch.nn.functional.normalize(z1.float(), dim=1)
    b = torch.nn.functional.normalize(z2.float(), dim=1)
    count = w.sum()
    # std over the 2 * count valid embeddings, per dimension
    z, wz = torch.cat([a, b]), torch.cat([w, w])[:, None]
    mean = (wz * z).sum(0) / (2 * count)
    var = (wz * (z - mean) ** 2).sum(0) / (2 * count - 1)
    std = var.clamp_min(0).sqrt().mean() * math.sqrt(dim)
    pos_cos = (w * (a * b).sum(1)).sum() / count
    alignment = (w * ((a - b) ** 2).sum(1)).sum() / count
    # pairwise statistics on an even subset of the pairs
    keep = even_indices(n, max_pairs, z1.device)
    a, b, w = a[keep], b[keep], w[keep]
    m = len(keep)
    z = torch.cat([a, b])
    weights = torch.cat([w, w])
    gram = z @ z.T
    pair = weights[:, None] * weights[None, :]
    pair = pair * (1 - torch.eye(2 * m, device=z.device))
    idx = torch.arange(2 * m, device=z.device)
    positive = (idx[:, None] - idx[None, :]).abs() == m
    negative = pair * (~positive)
    neg_cos = (negative * gram).sum() / negative.sum()
    kernel = pair * torch.exp(-2 * (2 - 2 * gram).clamp_min(0))
    within = torch.stack([kernel[:m, :m].sum(), kernel[m:, m:].sum()])
    within_pairs = torch.stack([pair[:m, :m].sum(), pair[m:, m:].sum()])
    uniformity = torch.log(within / within_pairs).mean()
    nan = torch.tensor(float("nan"), device=z1.device)
    enough = count >= 2
    return {
        k: torch.where(enough, v, nan)
        for k, v in {
            "std": std,
            "pos_cos": pos_cos,
            "neg_cos": neg_cos,
            "alignment": alignment,
            "uniformity": uniformity,
        }.items()
    }
