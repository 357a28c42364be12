"""What the package's Kornia classes share: per-sample work only on the chosen samples, and
parameters moved to the images' device without a synchronisation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from contrastseg.augment import intensity


class ComputeSelectedOnly:
    """Mixin for per-sample Kornia ops: with ``p < 1`` on the CPU, compute only the chosen samples.

    Kornia's base computes every sample and blends with ``torch.where``, which keeps GPU runs
    free of host synchronisation but costs the skipped samples' work on a CPU; there the
    chosen rows are computed alone (:func:`~contrastseg.augment.intensity.apply_to_selected`).
    Only for ops whose parameters are all per sample (first dimension B).
    """

    def transform_inputs(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        always = self.p == 1.0 and self.p_batch == 1.0  # type: ignore[attr-defined]
        if always or input.device.type != "cpu" or kwargs or input.ndim != 4:
            return super().transform_inputs(input, params, flags, transform, **kwargs)  # type: ignore[misc]
        batch = input.shape[0]

        def op(x: Tensor, pick: Any) -> Tensor:
            # forward_input_shape is (B, C, H, W) itself, not one row per sample.
            chosen = {
                k: pick(v)
                if isinstance(v, Tensor)
                and v.ndim
                and v.shape[0] == batch
                and k != "forward_input_shape"
                else v
                for k, v in params.items()
            }
            chosen_transform = None if transform is None else pick(transform)
            return self.apply_transform(x, chosen, flags, chosen_transform)  # type: ignore[attr-defined]

        return intensity.apply_to_selected(params["batch_prob"] > 0.5, op, input, subset=True)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Parameters (drawn on the CPU by Kornia) to the images' device without a synchronisation.

    A blocking copy from pageable host memory waits for the GPU's queue; a non-blocking one
    stages the source before it returns, so the source may be reused at once (as Kornia does).
    """
    non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()
    return tensor.to(device, non_blocking=non_blocking)


def uniform_range(low: float, high: float) -> Tensor:
    """``(2,)`` tensor ``[low, high]``, a range for Kornia's ``PlainUniformGenerator``."""
    return torch.tensor([float(low), float(high)])


def clamp(images: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    """``images`` clamped to ``value_range`` (``None``: unchanged)."""
    return images if value_range is None else images.clamp(value_range[0], value_range[1])


def uniform_index(n: int, batch: int, same_on_batch: bool) -> Tensor:
    """``(batch,)`` int64 uniform in ``[0, n)``: one draw per sample, or one for the batch."""
    draws = 1 if same_on_batch else batch
    return (torch.rand(draws) * n).long().clamp_(max=n - 1).expand(batch)


def affine_3x3(a: Tensor, b: Tensor, tx: Tensor, c: Tensor, d: Tensor, ty: Tensor) -> Tensor:
    """``(B, 3, 3)`` matrices ``[[a, b, tx], [c, d, ty], [0, 0, 1]]`` from ``(B,)`` entries."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = [torch.stack(r, dim=1) for r in ((a, b, tx), (c, d, ty), (zero, zero, one))]
    return torch.stack(rows, dim=1)
