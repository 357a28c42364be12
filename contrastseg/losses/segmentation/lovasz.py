"""Lovász-softmax loss, a convex surrogate of the per-class Jaccard loss.

Berman, Rannen Triki & Blaschko, "The Lovász-Softmax loss: A tractable surrogate for the
optimization of the intersection-over-union measure in neural networks", CVPR 2018.
"""

from __future__ import annotations

import torch
from kornia.losses import lovasz_softmax_loss as kornia_lovasz_softmax_loss
from torch import Tensor, nn

from contrastseg.losses.segmentation._functional import check_inputs, class_logits


def _lovasz_present(scores: Tensor, target: Tensor) -> Tensor | None:
    """Kornia's Lovász-softmax on ``(N, K)`` pixel logits, averaged over the present classes.

    Kornia averages over all ``K`` classes with ``weight`` multiplying each class term, so
    a weight of ``K / |present|`` on the present classes and 0 elsewhere gives the mean
    over the present classes.
    """
    if target.numel() == 0:
        return None
    classes = scores.shape[1]
    present = torch.bincount(target, minlength=classes) > 0
    weight = present.to(scores.dtype) * (classes / present.sum().to(scores.dtype))
    pred = scores.transpose(0, 1).reshape(1, classes, -1, 1)
    return kornia_lovasz_softmax_loss(pred, target.reshape(1, -1, 1), weight=weight)


def lovasz_softmax_loss(
    logits: Tensor,
    target: Tensor,
    per_image: bool = False,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Lovász-softmax loss over the classes present in the target.

    For each class ``c`` the pixel errors :math:`m_i(c) = |y_{ic} - p_{ic}|` are sorted
    decreasingly and

    .. math::

        L = \frac{1}{|C|} \sum_{c \in C} \sum_j m_{\pi_j}(c)\, g_j(c), \quad
        g_j(c) = \Delta_{J_c}(\{\pi_1..\pi_j\}) - \Delta_{J_c}(\{\pi_1..\pi_{j-1}\})

    where :math:`\Delta_{J_c}` is the Jaccard loss of class ``c`` when the first ``j``
    sorted pixels are the errors (the Lovász extension of the Jaccard loss, Berman et al.
    Eq. 9) and :math:`C` are the classes present in the (valid) target.

    Built on :func:`kornia.losses.lovasz_softmax_loss`; added here: ``ignore_index`` (ignored
    pixels are removed before sorting), the mean over present classes only (Kornia averages
    all classes), batch-level statistics (default, as Berman's ``per_image=False``), binary
    mode through the two-class softmax, and input checks.

    Args:
        logits: ``(B, K, H, W)`` or binary ``(B, 1, H, W)``.
        target: ``(B, H, W)`` int64 labels.
        per_image: one loss per image, averaged over the images with a valid pixel.
        ignore_index: label of ignored pixels, or ``None``.
    """
    target, valid = check_inputs(logits, target, ignore_index)
    scores = class_logits(logits).permute(0, 2, 3, 1)  # (B, H, W, K)
    if per_image:
        losses = [
            _lovasz_present(scores[b][valid[b]], target[b][valid[b]]) for b in range(len(scores))
        ]
        kept = [loss for loss in losses if loss is not None]
        loss = torch.stack(kept).mean() if kept else None
    else:
        loss = _lovasz_present(scores[valid], target[valid])
    return logits.sum() * 0.0 if loss is None else loss


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`lovasz_softmax_loss`."""

    def __init__(self, per_image: bool = False, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_softmax_loss(logits, target, self.per_image, self.ignore_index)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}, ignore_index={self.ignore_index}"
