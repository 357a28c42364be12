"""One view as a pipeline of ``kornia.augmentation`` modules, resampled once, with its index map.

Every op is a Kornia module, built-in or ``extra``. The geometric ones are not run one after
the other: each draws its parameters per sample (``forward_parameters``) and gives its
``(B, 3, 3)`` ``transform_matrix`` (input pixel -> output pixel, pixel centres at integers,
identity for the samples its probability skips); the matrices are multiplied, in order,
into one source-to-view matrix, whose inverse maps every view pixel to a source position.
The image is sampled bilinearly there once and the index map names the nearest source
pixel of the same position (:func:`~contrastseg.augment.geometry.warp_with_index`), so on a
coordinate ramp the view value and the position its index names differ by at most half a
pixel, however many geometric ops ran. View pixels whose source position lies outside the
source get index 0 and value 0. Then the intensity modules run in their order.

So the geometric ops act before the intensity ops whatever their place in ``extra``, and a
geometric op's ``align_corners``, ``padding_mode`` and ``resample`` do not apply (the one
warp is bilinear, from the source, with the outside masked).

The matrices are multiplied and inverted in float64 (float32 on MPS) with autocast off, so
positions on large sources stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from contrastseg.augment.config import PipelineConfig, ViewsConfig
from contrastseg.augment.geometry import warp_with_index
from contrastseg.augment.intensity import gaussian_kernel_size
from contrastseg.augment.ops.band import (
    GaussianBlur,
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
)
from contrastseg.augment.ops.geometric import RandomFlipChoice, RandomQuarterTurn
from contrastseg.augment.ops.registry import make_op, op_label

#: Geometric ops that only permute the pixels of their frame: nothing leaves the source.
_PERMUTATIONS = (K.RandomHorizontalFlip, K.RandomVerticalFlip, RandomQuarterTurn, RandomFlipChoice)


def build_ops(
    pipe: PipelineConfig, views: ViewsConfig, name: str
) -> tuple[list[nn.Module], list[str]]:
    """The Kornia modules of one view and a label for each (used in errors and titles).

    Built-in ops first (crop, flips, rot90, rotation, colour, grayscale, blur, noise; those
    with probability 0 are left out), then ``pipe.extra``, each built once here.

    Args:
        pipe: the view's pipeline.
        views: the whole views config (size, RGB bands, value range).
        name: ``"t1"`` or ``"t2"``, for the labels.

    Returns:
        ``(modules, labels)``; the first module is the crop to ``views.size``.
    """
    size = views.size
    # Only the crop's parameters and matrix are used here; "resample" makes its own forward
    # follow the matrix too (the same view when the module is called alone).
    crop = K.RandomResizedCrop(
        (size, size),
        scale=pipe.crop.scale,
        ratio=pipe.crop.ratio,
        align_corners=True,
        cropping_mode="resample",
    )
    ops: list[tuple[nn.Module, str]] = [(crop, "crop")]
    if pipe.flip.horizontal_p > 0:
        ops.append((K.RandomHorizontalFlip(p=pipe.flip.horizontal_p), "flip.horizontal"))
    if pipe.flip.vertical_p > 0:
        ops.append((K.RandomVerticalFlip(p=pipe.flip.vertical_p), "flip.vertical"))
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
        k = gaussian_kernel_size(pipe.blur.sigma[1])
        blur = GaussianBlur((k, k), pipe.blur.sigma, border_type="reflect", p=pipe.blur.p)
        ops.append((blur, "blur"))
    if pipe.noise.p > 0:
        noise = RandomBandGaussianNoise(pipe.noise.std, views.value_range, p=pipe.noise.p)
        ops.append((noise, "noise"))
    for i, spec in enumerate(pipe.extra):
        where = f"extra[{i}]"
        ops.append((make_op(spec, where=f"views.{name}.{where}"), f"{where} {op_label(spec)}"))
    return [op for op, _ in ops], [f"views.{name}.{label}" for _, label in ops]


class ViewPipeline(nn.Module):
    """One view: Kornia geometric modules composed into one warp, then intensity modules in order.

    Args:
        ops: ``kornia.augmentation`` modules; the first is the crop to the view size
            (``RandomResizedCrop``), the other geometric ones keep the size and have a
            ``transform_matrix`` (what :func:`build_ops` gives).
        labels: one config key per op, named when an op fails.
        size: side of the square view (the crop's output size).
    """

    def __init__(self, ops: Sequence[nn.Module], labels: Sequence[str], size: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.labels = list(labels)
        geometric = [isinstance(op, K.GeometricAugmentationBase2D) for op in ops]
        self._geometric = [
            (op, label) for op, label, g in zip(ops, labels, geometric, strict=True) if g
        ]
        self._intensity = [
            (op, label) for op, label, g in zip(ops, labels, geometric, strict=True) if not g
        ]
        # A perspective matrix has a non-trivial last row: positions need the divide.
        self.projective = any(isinstance(op, K.RandomPerspective) for op in ops)
        self.may_leave_source = not all(
            isinstance(op, _PERMUTATIONS) for op, _ in self._geometric[1:]
        )
        self.size = size

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
        to_source = self.to_source(images)
        view, index = warp_with_index(images, to_source, self.size, self.may_leave_source)
        for op, label in self._intensity:
            try:
                view = op(view)
            except Exception as err:  # an op that does not fit the data (bands, size): say which
                raise ValueError(
                    f"{label} failed on {tuple(view.shape)} {view.dtype} views: {err}"
                ) from err
        return view, index

    def to_source(self, images: Tensor) -> Tensor:
        """Draw the geometric ops' parameters and compose their matrices, inverted.

        Args:
            images: ``(B, C, H, W)`` source batch (only its shape and device are read).

        Returns:
            ``(B, 2, 3)`` float32 view pixel -> source pixel map, or ``(B, 3, 3)`` with a
            perspective op.
        """
        b, c = images.shape[:2]
        exact = torch.float32 if images.device.type == "mps" else torch.float64
        shape = images.shape
        to_view: Tensor | None = None
        for op, label in self._geometric:
            # The ops read only the shape, dtype and device of their input for the matrix.
            frame = torch.empty((), dtype=exact, device=images.device).expand(shape)
            try:
                params = op.forward_parameters(shape)
                matrix = op.generate_transformation_matrix(frame, params, op.flags)
            except Exception as err:
                raise ValueError(f"{label} failed on {shape} views: {err}") from err
            op._params = params  # readable after the call, as after a Kornia forward
            matrix = matrix.to(exact)
            to_view = matrix if to_view is None else _matmul3(matrix, to_view)
            shape = torch.Size((b, c, self.size, self.size))
        assert to_view is not None  # the crop is always there
        # inv_ex: no error check, which would synchronise with a GPU (the matrices are invertible).
        to_source = torch.linalg.inv_ex(to_view).inverse.float()
        return to_source if self.projective else to_source[:, :2]


def _matmul3(a: Tensor, b: Tensor) -> Tensor:
    """Batched 3x3 product ``a @ b`` with element-wise arithmetic (immune to TF32)."""
    return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)
