"""One view as a sequence of ``kornia.augmentation`` modules, with an exact index map.

The image goes through the modules in turn, as Kornia applies them. The index map is not
resampled along: every geometric module reports the ``(B, 3, 3)`` ``transform_matrix`` that
maps its input pixel coordinates (pixel centres at integers) to its output's, and its
bilinear image follows that matrix (checked per op on a coordinate ramp in the tests). The
product of the matrices maps source pixels to view pixels; its inverse, evaluated once at
every view pixel, gives the continuous source position the view value was interpolated
from, and the index names the nearest source pixel. So on a coordinate ramp the view value
and the position its index names differ by at most half a pixel, however many ops ran.

Ops that can move content out of their frame (rotations, affine, perspective, ...) pad with
zeros. A one-band "coverage" image of ones goes through those ops (and every geometric op
after them) with the same parameters and zero padding; a view pixel whose coverage is below
one mixed in padding, so its index is 0 and its value is set to 0, as the native engine does
for pixels outside the source.

The matrices are multiplied and inverted in float64 (float32 on MPS) with autocast off, so
positions on large sources stay exact; the per-pixel positions are float32 planes as in
:mod:`contrastseg.augment.geometry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.constants import SamplePadding
from torch import Tensor, nn

from contrastseg.augment import intensity
from contrastseg.augment.config import PipelineConfig, ViewsConfig
from contrastseg.augment.geometry import pixel_index, source_positions
from contrastseg.augment.kornia_ops import (
    GaussianBlur,
    HorizontalFlip,
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
    RandomFlipChoice,
    RandomQuarterTurn,
    ResizedCrop,
    VerticalFlip,
    make_op,
    op_label,
)

#: Geometric ops that only permute pixels: content never leaves the frame.
_PERMUTATIONS = (K.RandomHorizontalFlip, K.RandomVerticalFlip, RandomQuarterTurn, RandomFlipChoice)
#: Coverage below this mixed in padding. A position on the frame's edge computed in float32
#: (e.g. a rotation by exactly 90 degrees) may land 1e-6 pixel outside and keep a coverage of
#: 1 - 1e-6; accepting it moves a value v by at most 1e-5 * |v| (0.03 px on a 3000 px ramp),
#: where 1e-3 would move it by 3 px.
_FULL_COVERAGE = 1.0 - 1e-5


def build_ops(
    pipe: PipelineConfig, views: ViewsConfig, name: str
) -> tuple[list[nn.Module], list[str]]:
    """The Kornia modules of one view and a label for each (used in errors and titles).

    Built-in ops first, in the native engine's order (crop, flips, rot90, rotation, colour,
    grayscale, blur, noise; those with probability 0 are left out), then ``pipe.extra``.

    Args:
        pipe: the view's pipeline.
        views: the whole views config (size, RGB bands, value range).
        name: ``"t1"`` or ``"t2"``, for the labels.

    Returns:
        ``(modules, labels)``.
    """
    size = views.size
    ops: list[tuple[nn.Module, str]] = [
        (
            # "resample" mode warps the box onto the view through its transform_matrix; "slice"
            # mode resizes on a half-pixel grid that does not follow the matrix when
            # align_corners is False, so only resample is exact in every setting.
            ResizedCrop(
                (size, size),
                scale=pipe.crop.scale,
                ratio=pipe.crop.ratio,
                align_corners=True,
                cropping_mode="resample",
            ),
            "crop",
        )
    ]
    if pipe.flip.horizontal_p > 0:
        ops.append((HorizontalFlip(p=pipe.flip.horizontal_p), "flip.horizontal"))
    if pipe.flip.vertical_p > 0:
        ops.append((VerticalFlip(p=pipe.flip.vertical_p), "flip.vertical"))
    if pipe.rot90.p > 0:
        ops.append((RandomQuarterTurn(p=pipe.rot90.p), "rot90"))
    if pipe.rotation.p > 0:
        rotation = K.RandomRotation(pipe.rotation.degrees, p=pipe.rotation.p, align_corners=True)
        ops.append((rotation, "rotation"))
    if pipe.color.p > 0:
        c = pipe.color
        jitter = RandomBandColorJitter(
            c.brightness, c.contrast, c.saturation, c.hue, views.rgb_bands, views.value_range, p=c.p
        )
        ops.append((jitter, "color"))
    if pipe.grayscale.p > 0:
        ops.append((RandomBandGrayscale(pipe.grayscale.mode, p=pipe.grayscale.p), "grayscale"))
    if pipe.blur.p > 0:
        k = intensity.gaussian_kernel_size(pipe.blur.sigma[1])
        blur = GaussianBlur((k, k), pipe.blur.sigma, border_type="reflect", p=pipe.blur.p)
        ops.append((blur, "blur"))
    if pipe.noise.p > 0:
        noise = RandomBandGaussianNoise(pipe.noise.std, views.value_range, p=pipe.noise.p)
        ops.append((noise, "noise"))
    for i, spec in enumerate(pipe.extra):
        where = f"extra[{i}]"
        ops.append((make_op(spec, where=f"views.{name}.{where}"), f"{where} {op_label(spec)}"))
    return [op for op, _ in ops], [f"views.{name}.{label}" for _, label in ops]


class KorniaView(nn.Module):
    """One view made by a sequence of Kornia modules, with its index map.

    Args:
        ops: ``kornia.augmentation`` modules; the first must be the crop to the view size, the
            geometric ones must be in :data:`~contrastseg.augment.kornia_ops.TRACKED_GEOMETRIC`
            (what :func:`build_ops` gives).
        labels: one config key per op, named when an op fails.
    """

    def __init__(self, ops: Sequence[nn.Module], labels: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.labels = list(labels)
        # A perspective matrix has a non-trivial last row: positions need the divide.
        self.projective = any(isinstance(op, K.RandomPerspective) for op in ops)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The view of ``images`` and its index map (Kornia draws from the global generator).

        Args:
            images: ``(B, C, H, W)`` float32 or float64.

        Returns:
            ``view`` ``(B, C, S, S)`` in the input dtype and ``index`` ``(B, S, S)`` int64
            (``row * W + col + 1`` of the nearest source pixel, 0 outside the source).

        Raises:
            ValueError: an op failed on these images; the message names its config key.
        """
        b, _, height, width = images.shape
        exact = torch.float32 if images.device.type == "mps" else torch.float64
        to_view = torch.eye(3, dtype=exact, device=images.device).expand(b, 3, 3)
        coverage: Tensor | None = None
        x = images
        for step, (op, label) in enumerate(zip(self.ops, self.labels, strict=True)):
            geometric = isinstance(op, K.GeometricAugmentationBase2D)
            # The crop (step 0) stays inside the source; so do permutations.
            if geometric and coverage is None and step > 0 and not isinstance(op, _PERMUTATIONS):
                coverage = x.new_ones(b, 1, *x.shape[-2:])
            try:
                x = op(x)
            except Exception as err:  # an op that does not fit the data (bands, size): say which
                raise ValueError(
                    f"{label} failed on {tuple(x.shape)} {x.dtype} views: {err}"
                ) from err
            if not geometric:
                continue
            matrix = op.transform_matrix
            if matrix is not None:
                to_view = _matmul3(matrix.to(exact), to_view)
            if coverage is not None:
                coverage = op(coverage, params=op._params, **_zero_padding(op))
        index, valid = self._index(to_view, x.shape[-1], height, width, coverage)
        if valid is not None:
            x = x * valid[:, None].to(x.dtype)
        return x, index

    def _index(
        self, to_view: Tensor, size: int, height: int, width: int, coverage: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        # inv_ex: no error check, which would synchronise with a GPU (the matrices are invertible).
        to_source = torch.linalg.inv_ex(to_view).inverse.float()
        x, y = source_positions(to_source, size)
        if self.projective:
            _, w = source_positions(to_source[:, 1:], size)  # the third row, homogeneous w
            x, y = x / w, y / w
        col, row = x.add_(0.5).floor_(), y.add_(0.5).floor_()  # nearest pixel: floor(p + 0.5)
        if coverage is None:  # crops and permutations keep every view pixel inside the source
            return pixel_index(col, row, height, width, None), None
        valid = coverage[:, 0] >= _FULL_COVERAGE
        valid &= (col >= 0) & (col < width) & (row >= 0) & (row < height)
        return pixel_index(col, row, height, width, valid), valid


def _matmul3(a: Tensor, b: Tensor) -> Tensor:
    """Batched 3x3 product ``a @ b`` with element-wise arithmetic (immune to TF32)."""
    return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)


def _zero_padding(op: nn.Module) -> Mapping[str, Any]:
    """Flag override that makes ``op`` pad with zeros (the coverage image must lose mass)."""
    if "padding_mode" in getattr(op, "flags", {}):
        return {"padding_mode": SamplePadding.ZEROS}
    return {}
