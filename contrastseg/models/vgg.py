"""torchvision's VGG16-BN convolutional part as a backbone, for any band count, with its pooling indices.

The module keeps torchvision's ``features`` (``features.0.weight`` ... ``features.41.*``), so
its ``state_dict`` uses torchvision's ``vgg16_bn`` keys without ``classifier.*``: torchvision
weights load into it and its weights load back into ``torchvision.models.vgg16_bn()`` with
only the classifier missing. The five max-pooling layers return their indices (SegNet's
decoder unpools with them); the output stride is 32.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor, nn

from contrastseg.models.backbone import load_checked, read_backbone_state

#: convolutions per stage of VGG16 and their widths
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class PooledStages(NamedTuple):
    """What :meth:`VGGBackbone.pooled_stages` returns, one entry per stage (input to output).

    Attributes:
        outputs: the pooled outputs (strides 2, 4, 8, 16, 32).
        indices: the max-pooling indices of each stage (``F.max_unpool2d``'s).
        sizes: each stage's size before pooling (``(h, w)``).
    """

    outputs: list[Tensor]
    indices: list[Tensor]
    sizes: list[torch.Size]


class VGGBackbone(nn.Module):
    """VGG16-BN's ``features``: five stages of 3x3 conv-BN-ReLU, each ending in a 2x2 max-pool.

    Args:
        arch: ``vgg16_bn``.
        in_channels: number of input bands.
        output_stride: 32 (VGG is not dilated here).
        weights: optional path to a ``vgg16_bn`` state dict in torchvision key names (its
            ``classifier.*`` is dropped; a 3-band first convolution is adapted).

    Shapes: input ``(B, in_channels, H, W)``; :meth:`stages` returns the five pooled stage
    outputs, the last ``(B, 512, ~H/32, ~W/32)``.
    """

    def __init__(
        self,
        arch: str = "vgg16_bn",
        in_channels: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if arch != "vgg16_bn":
            raise ValueError(f"unknown VGG backbone {arch!r}; expected vgg16_bn")
        if output_stride != 32:
            raise ValueError(
                f"a VGG16-BN backbone has output stride 32 (it is not dilated), got {output_stride}"
            )
        self.features = torchvision.models.vgg16_bn(weights=None).features
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                layer.return_indices = True
        self.arch, self.in_channels, self.output_stride = arch, in_channels, output_stride
        self.stage_channels = tuple(c for _, c in VGG16_STAGES)
        self.out_channels = self.stage_channels[-1]
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a ``vgg16_bn`` state dict in torchvision key names (strict but for ``classifier``).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: keys or shapes do not match (the message lists them).
        """
        state = read_backbone_state(path, self.in_channels, "features.0.weight", ("classifier.",))
        load_checked(self, state, path)

    def pooled_stages(self, x: Tensor) -> PooledStages:
        """Every stage's pooled output, pooling indices and size before pooling."""
        out = PooledStages([], [], [])
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                out.sizes.append(x.shape[-2:])
                x, index = layer(x)
                out.outputs.append(x)
                out.indices.append(index)
            else:
                x = layer(x)
        return out

    def stages(self, x: Tensor) -> list[Tensor]:
        """The five pooled stage outputs (strides 2 ... 32)."""
        return self.pooled_stages(x).outputs
