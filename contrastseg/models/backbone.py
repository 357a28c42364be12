"""torchvision ResNet backbones with any band count and output stride 8, 16 or 32.

The module keeps torchvision's attribute names (``conv1``, ``bn1``, ``layer1`` ...
``layer4``) and drops ``avgpool`` / ``fc``, so its ``state_dict`` uses torchvision's keys:
torchvision, timm-style and segmentation_models_pytorch ResNet weights load into it and
its weights load back into ``torchvision.models.resnetXX()`` with only ``fc.*`` missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from contrastseg.models.state import WRAPPER_PREFIXES, read_weights, strip_prefixes
from contrastseg.utils.state import state_dict_mismatches

ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
#: How a stage turned from stride 2 to dilation is dilated (:func:`_dilate_stage`):
#: ``torchvision`` (``replace_stride_with_dilation``: the first block's strided 3x3
#: convolution keeps the previous stage's dilation) or ``official`` (the official GLCNet
#: code's ``models/deeplab_utils/ResNet.py``: that convolution gets the stage's dilation too).
DILATION_CONVENTIONS: tuple[str, ...] = ("torchvision", "official")

#: Prefixes in front of a backbone's own keys in the files of segmenters and wrappers (DDP,
#: torch.compile, smp, lightly, our models), removed by :func:`read_backbone_state`.
BACKBONE_PREFIXES = (*WRAPPER_PREFIXES, "backbone.", "encoder.", "model.")


def adapt_first_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a 3-band first-convolution kernel to ``in_channels`` bands.

    The rule, chosen so that an input whose bands have similar statistics produces the
    same activation magnitude as the RGB input the kernel was trained on:

    * ``in_channels == 3``: unchanged.
    * ``in_channels > 3``: band ``i`` takes the kernel of RGB band ``i % 3`` (so bands
      0, 1, 2 are assumed to be R, G, B, in that order, as the data config orders them;
      a fourth band such as near-infrared starts from the red kernel), then the whole
      kernel is scaled by ``3 / in_channels``.
    * ``in_channels < 3``: every band takes the mean of the three RGB kernels, scaled by
      ``3 / in_channels`` (for one band this is the sum of the RGB kernels, the usual
      rule for grayscale).

    Args:
        weight: ``(out, 3, kh, kw)`` kernel.
        in_channels: number of input bands, at least 1.

    Returns:
        ``(out, in_channels, kh, kw)`` kernel.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(
            f"expected a 3-band first-conv kernel of shape (out, 3, kh, kw), got {tuple(weight.shape)}"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight.clone()
    if in_channels > 3:
        index = torch.arange(in_channels, device=weight.device) % 3
        return weight[:, index] * (3.0 / in_channels)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(-1, in_channels, -1, -1) * (3.0 / in_channels)


def _set_conv(conv: nn.Conv2d, stride: int | None = None, dilation: int | None = None) -> None:
    """Change a convolution's stride and/or dilation in place, keeping 'same' padding."""
    if stride is not None:
        conv.stride = (stride, stride)
    if dilation is not None and conv.kernel_size[0] > 1:
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2,) * 2


def _dilate_stage(stage: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convolutions.

    Follows torchvision's ``replace_stride_with_dilation`` for Bottleneck stages: the
    first block's strided 3x3 convolution gets ``previous_dilation``, every other 3x3
    convolution of the stage gets ``dilation``, and the shortcut loses its stride.
    BasicBlock (ResNet-18/34), which torchvision refuses to dilate, gets the same
    treatment applied to its two 3x3 convolutions. The official convention passes the
    stage's own dilation as ``previous_dilation`` (see :data:`DILATION_CONVENTIONS`).
    """
    for i, block in enumerate(stage):
        if isinstance(block, Bottleneck):
            strided, others = block.conv2, []
        elif isinstance(block, BasicBlock):
            strided, others = block.conv1, [block.conv2]
        else:  # pragma: no cover - torchvision only builds these two
            raise TypeError(f"unsupported ResNet block {type(block).__name__}")
        if i == 0:
            _set_conv(strided, stride=1, dilation=previous_dilation)
            if block.downsample is not None:
                _set_conv(block.downsample[0], stride=1)
        else:
            _set_conv(strided, dilation=dilation)
        for conv in others:
            _set_conv(conv, dilation=dilation)
        block.stride = 1


#: ResNet depths by (blocks per stage, bottleneck blocks), as torchvision builds them.
_DEPTHS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
_BLOCK_KEY = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.(conv\d)\.")


def resnet_depth(keys: Iterable[str]) -> str | None:
    """The ResNet a state dict's key names describe (``resnet18`` ... ``resnet152``).

    Inferred from the blocks ``layerN.M.*`` per stage and whether they are bottlenecks
    (``conv3``), so it works for torchvision names with or without a wrapper prefix
    (``backbone.layer1.0.conv1.weight``).

    Returns:
        The name; a description such as ``a ResNet with (2, 3, 2, 2) basic blocks`` for
        an unusual layout; None when the keys hold no ResNet stages.
    """
    blocks = [0, 0, 0, 0]
    bottleneck = False
    for key in keys:
        match = _BLOCK_KEY.search(key)
        if match:
            stage = int(match.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(match.group(2)) + 1)
            bottleneck |= match.group(3) == "conv3"
    if not any(blocks):
        return None
    layout = (tuple(blocks), bottleneck)
    kind = "bottleneck" if bottleneck else "basic"
    return _DEPTHS.get(layout, f"a ResNet with {tuple(blocks)} {kind} blocks")


def check_same_resnet(model_keys: Iterable[str], file_keys: Iterable[str], path: str) -> None:
    """Refuse a weights file of another ResNet depth than the model's, naming both.

    Raises:
        ValueError: both key sets describe ResNets, and different ones.
    """
    model_arch, file_arch = resnet_depth(model_keys), resnet_depth(file_keys)
    if model_arch and file_arch and model_arch != file_arch:
        raise ValueError(
            f"{path} holds {file_arch} weights but the model is a {model_arch}: "
            f"choose model.arch={file_arch} or weights of a {model_arch}"
        )


def read_backbone_state(
    path: str | os.PathLike[str],
    in_channels: int,
    first_conv: str,
    drop: tuple[str, ...] = (),
) -> dict[str, Tensor]:
    """A backbone's state dict from a weights file, in the backbone's own (torchvision) key names.

    Reads what :func:`~contrastseg.models.state.read_weights` reads (the one reader); of a
    whole segmenter the ``backbone.*`` keys are kept; the prefixes of
    :data:`BACKBONE_PREFIXES` are removed, keys starting with
    one of ``drop`` (a classifier: ResNet ``fc.``, VGG ``classifier.``) dropped, and a
    3-band ``first_conv`` kernel adapted to ``in_channels`` (:func:`adapt_first_conv_weight`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no state dict in the file, or a first convolution of another band count
            than 3 or ``in_channels``.
    """
    path = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state, _ = read_weights(path)
    if any(k.startswith("backbone.") for k in state):
        # a whole segmenter (e.g. a contrastseg pretraining checkpoint): keep its backbone
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    state = strip_prefixes(state, BACKBONE_PREFIXES)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    conv1 = state.get(first_conv)
    if conv1 is not None and conv1.shape[1] != in_channels:
        if conv1.shape[1] != 3:
            raise ValueError(
                f"{path}: {first_conv} has {conv1.shape[1]} input bands; the model has "
                f"{in_channels} and only 3-band weights can be adapted"
            )
        state[first_conv] = adapt_first_conv_weight(conv1, in_channels)
    return state


def load_checked(backbone: nn.Module, state: Mapping[str, Tensor], path: object) -> None:
    """Load ``state`` into ``backbone`` strictly, refusing missing, extra or misshapen keys first.

    Raises:
        ValueError: keys or shapes differ (the message lists them, naming the file, the
            backbone's ``arch`` and ``in_channels``).
    """
    problems = state_dict_mismatches(backbone.state_dict(), state)
    if problems:
        raise ValueError(
            f"{path} does not fit a {backbone.arch} backbone with {backbone.in_channels} bands: "
            + " | ".join(problems)
        )
    backbone.load_state_dict(state, strict=True)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``avgpool``/``fc``, returning the stride-4 and last features.

    Args:
        arch: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``.
        in_channels: number of input bands (3 for RGB, 4 for RGB+NIR, 13 for Sentinel-2 ...).
        output_stride: 32 (plain ResNet), 16 (``layer4`` dilated) or 8 (``layer3`` and
            ``layer4`` dilated).
        dilation_convention: ``torchvision`` (default): the first block of a dilated stage
            keeps the previous dilation in its 3x3 convolution (``layer4.0.conv2`` has
            dilation 1 at output stride 16, 2 at 8); ``official``: it gets the stage's
            dilation, as every other block (``layer4.0.conv2`` dilation 2 at 16, 4 at 8;
            ``layer3.0.conv2`` 2 at 8), as the official GLCNet ``ResNet.py`` builds it. Either
            way the strides, the output size and the state-dict keys are the same.
        weights: optional path to a ResNet state dict in torchvision key names (a
            torchvision / timm / smp ResNet file, or a ``contrastseg export`` file). A
            3-band first convolution is adapted to ``in_channels`` with
            :func:`adapt_first_conv_weight`. Random (torchvision) initialisation otherwise.

    Shapes:
        input ``(B, in_channels, H, W)``; :meth:`forward` returns ``(low_level, out)`` with
        ``low_level`` the ``layer1`` output ``(B, low_level_channels, ceil(H/4), ceil(W/4))``
        and ``out`` the ``layer4`` output ``(B, out_channels, ~H/os, ~W/os)``.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 16,
        weights: str | os.PathLike[str] | None = None,
        dilation_convention: str = "torchvision",
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown backbone {arch!r}; expected one of {', '.join(ARCHITECTURES)}"
            )
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if dilation_convention not in DILATION_CONVENTIONS:
            raise ValueError(
                f"dilation_convention must be one of {', '.join(DILATION_CONVENTIONS)}, "
                f"got {dilation_convention!r}"
            )
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.dilation_convention = dilation_convention
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if output_stride <= 16:
            official = dilation_convention == "official"
            dilation3 = 2 if output_stride == 8 else 1
            if output_stride == 8:
                _dilate_stage(self.layer3, previous_dilation=2 if official else 1, dilation=2)
            dilation4 = 2 * dilation3
            _dilate_stage(
                self.layer4,
                previous_dilation=dilation4 if official else dilation3,
                dilation=dilation4,
            )
        expansion = 4 if arch in ("resnet50", "resnet101") else 1
        self.low_level_channels = 64 * expansion
        self.out_channels = 512 * expansion
        #: channels of layer1 ... layer4
        self.stage_channels = tuple(c * expansion for c in (64, 128, 256, 512))
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a ResNet state dict in torchvision key names from ``path`` (strict but for ``fc``).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file holds no ResNet state dict, or keys / shapes do not match
                this architecture (the message lists them).
        """
        state = read_backbone_state(path, self.in_channels, "conv1.weight", ("fc.",))
        check_same_resnet(self.state_dict(), state, path)
        load_checked(self, state, path)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of ``layer1`` ... ``layer4`` (strides 4, 8, then 16 / 32 or dilated)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        stages = self.stages(x)
        return stages[0], stages[-1]
