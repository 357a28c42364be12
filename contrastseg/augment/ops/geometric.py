"""Geometric ops of the package as ``kornia.augmentation`` classes, each with its exact matrix.

- :class:`RandomQuarterTurn`: rotation by k * 90 degrees, k uniform in {1, 2, 3} (or in
  {0, 1, 2, 3} with ``include_zero``, the official GLCNet draw); Kornia's ``RandomRotation90``
  rounds a continuous draw (k = 2 twice as likely as 1 or 3).
- :class:`RandomFlipChoice`: one of {horizontal, vertical, both, none, none} (the official
  GLCNet flip).

In a view only their ``transform_matrix`` is used (the view is resampled once from the
product of the matrices); used alone they permute the pixels exactly (``torch.rot90``,
``torch.flip``).
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor

from contrastseg.augment import intensity
from contrastseg.augment.ops._base import (
    ComputeSelectedOnly,
    affine_3x3,
    to_device,
    uniform_index,
)


class _NoInverse:
    """Geometric ops of views: no inverse needed (an index map records the mapping instead)."""

    def inverse_transform(
        self,
        input: Tensor,
        flags: dict[str, Any],
        transform: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no inverse")


class RandomQuarterTurn(_NoInverse, ComputeSelectedOnly, K.GeometricAugmentationBase2D):
    """Rotation of square images by k quarter turns, k uniform in {1, 2, 3} when applied.

    Turns like ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise on screen), an exact
    permutation of the pixels; ``transform_matrix`` is the exact rotation about the centre.

    Args:
        p: probability per sample.
        include_zero: k uniform in {0, 1, 2, 3} instead (the official GLCNet draw: with
            ``p = 0.8`` a sample keeps its orientation with probability 0.2 + 0.8 / 4).
        same_on_batch: one k for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        p: float = 0.5,
        include_zero: bool = False,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        self.include_zero = bool(include_zero)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``k``: ``(B,)`` int64 quarter turns, uniform in {1, 2, 3} (or {0, 1, 2, 3})."""
        if batch_shape[-1] != batch_shape[-2]:
            raise ValueError(f"RandomQuarterTurn needs square images, got {tuple(batch_shape)}")
        low = 0 if self.include_zero else 1
        return {"k": low + uniform_index(4 - low, batch_shape[0], self.same_on_batch)}

    def compute_transformation(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]
    ) -> Tensor:
        """``(B, 3, 3)`` maps input pixel ``(x, y)`` to output pixel ``(u, v)``."""
        k = to_device(params["k"], input.device)
        # cos, sin of k * 90 degrees exactly, in {-1, 0, 1}.
        sign = 1 - 2 * torch.div(k, 2, rounding_mode="floor")
        cos = ((1 - k % 2) * sign).to(input.dtype)
        sin = ((k % 2) * sign).to(input.dtype)
        c = (input.shape[-1] - 1) / 2.0
        # (u - c, v - c) = [[cos, sin], [-sin, cos]] (x - c, y - c): torch.rot90 with k = 1
        # sends input (x, y) to (y, W - 1 - x).
        return affine_3x3(cos, sin, c - c * (cos + sin), -sin, cos, c - c * (cos - sin))

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Turn each ``(C, S, S)`` sample of the batch by its ``k``."""
        k = to_device(params["k"], input.device)
        out = input
        for turns in (1, 2, 3):
            # The rows of each k are disjoint, so ``out`` still holds the input on them.
            out = intensity.apply_to_selected(
                k == turns, lambda x, pick, t=turns: torch.rot90(x, t, dims=(-2, -1)), out
            )
        return out


class RandomFlipChoice(_NoInverse, ComputeSelectedOnly, K.GeometricAugmentationBase2D):
    """One of {horizontal flip, vertical flip, both, none, none}, uniformly (official GLCNet).

    The official code draws ``f = [1, 0, -1, 2, 2][randint(0, 5)]`` and flips with
    ``np.flip(x, f)`` (1: left-right, 0: up-down, -1: both, 2: none). ``code`` 1, 2, 3 are
    horizontal, vertical, both; 0 is none.

    Args:
        p: probability per sample of drawing from the five choices at all.
        same_on_batch: one choice for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(self, p: float = 1.0, same_on_batch: bool = False, keepdim: bool = False) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``code``: ``(B,)`` int64 in {1, 2, 3, 0, 0}, each of the five entries 1/5."""
        choice = uniform_index(5, batch_shape[0], self.same_on_batch)
        return {"code": torch.tensor([1, 2, 3, 0, 0])[choice]}

    def compute_transformation(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]
    ) -> Tensor:
        """``(B, 3, 3)`` maps input pixel ``(x, y)`` to output pixel ``(u, v)``."""
        code = to_device(params["code"], input.device)
        sx = 1 - 2 * (code % 2)  # -1 for horizontal (1) and both (3)
        sy = 1 - 2 * torch.div(code, 2, rounding_mode="floor")  # -1 for vertical and both
        sx, sy = sx.to(input.dtype), sy.to(input.dtype)
        width, height = input.shape[-1] - 1, input.shape[-2] - 1
        zero = torch.zeros_like(sx)
        return affine_3x3(sx, zero, (1 - sx) / 2 * width, zero, sy, (1 - sy) / 2 * height)

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Flip each ``(C, H, W)`` sample as its ``code`` says."""
        code = to_device(params["code"], input.device)
        out = input
        for value, dims in ((1, (-1,)), (2, (-2,)), (3, (-2, -1))):
            out = intensity.apply_to_selected(
                code == value, lambda x, pick, d=dims: torch.flip(x, d), out
            )
        return out
