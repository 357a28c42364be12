"""What every segmentation network of contrastseg shares: named parts, two feature maps, a 1x1 head.

A network is a :class:`~contrastseg.models.ResNetBackbone` under ``backbone`` (torchvision
key names, ``backbone.*``) followed by its own parts, each one attribute (and so one
state-dict prefix). A subclass declares

- :attr:`SegmentationNet.parts`: every part in input-to-output order (what ``all`` loads,
  what a linear probe of decoder features freezes, what ``export --part all`` writes);
- :attr:`SegmentationNet.encoder_parts`: the parts in front of the *encoder* features (what
  ``backbone+aspp`` / ``encoder`` loads and exports);
- :meth:`SegmentationNet._encode` / :meth:`SegmentationNet._decode`: encoder features from
  the input, decoder features (stride :attr:`SegmentationNet.decoder_stride`) from both.

The pretraining methods read ``forward_features(x).encoder`` (global branch) and
``.decoder`` (local and dense branches), so any network declared this way can be pretrained,
fine-tuned, probed and exported without code that names its parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbone import ResNetBackbone
from contrastseg.models.config import ModelConfig

#: Features a classifier (or a linear probe) can read, deepest first.
CLASSIFIER_FEATURES = ("decoder", "encoder", "backbone")
#: Output stride of the decoder features of every network (the ``layer1`` skip's); the local
#: and dense methods sample the decoder features on this grid.
DECODER_STRIDE = 4


class DeepLabFeatures(NamedTuple):
    """What :meth:`SegmentationNet.forward_features` returns.

    Attributes:
        encoder: encoder features ``(B, encoder_channels, ~H/os, ~W/os)`` (DeepLabV3+: the
            ASPP output; U-Net / FPN: the backbone's last stage).
        decoder: decoder features ``(B, decoder_channels, ceil(H/4), ceil(W/4))``, or
            ``None`` when the decoder was not asked for.
    """

    encoder: Tensor
    decoder: Tensor | None


class DeepLabOutput(NamedTuple):
    """What ``net(x, return_features=True)`` returns: logits and both feature maps."""

    logits: Tensor
    encoder: Tensor
    decoder: Tensor


class SegmentationNet(nn.Module):
    """Base of DeepLabV3+, U-Net and FPN: backbone, declared parts, optional 1x1 classifier.

    Subclasses build ``self.backbone`` and their parts, set ``encoder_channels`` and
    ``decoder_channels``, then call :meth:`_init_classifier`.

    ``net(x)`` returns logits ``(B, num_classes, H, W)`` at input resolution;
    ``net(x, return_features=True)`` returns :class:`DeepLabOutput`;
    :meth:`forward_features` returns the encoder (and optionally decoder) features.
    """

    #: registry name (``model.name``)
    name: ClassVar[str]
    #: the network's ``model`` config class (its own keys and their defaults)
    config_class: ClassVar[type[ModelConfig]]
    #: every part (attribute and state-dict prefix), input to output
    parts: ClassVar[tuple[str, ...]]
    #: the parts in front of the encoder features
    encoder_parts: ClassVar[tuple[str, ...]]
    #: output stride of the decoder features
    decoder_stride: ClassVar[int] = DECODER_STRIDE

    backbone: ResNetBackbone
    encoder_channels: int
    decoder_channels: int

    @classmethod
    def config_kwargs(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments from the config's keys (all but ``name`` and ``in_channels``);
        a network whose arguments are named otherwise than its config keys renames them here."""
        return settings

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        in_channels: int,
        num_classes: int | None = None,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
        backbone_weights: bool = True,
    ) -> SegmentationNet:
        """The network a config of :attr:`config_class` describes (see :func:`build_model`)."""
        settings = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in ("name", "in_channels")
        }
        if not backbone_weights:
            settings["backbone_weights"] = None
        return cls(
            num_classes=num_classes,
            in_channels=in_channels,
            classifier_features=classifier_features,
            **cls.config_kwargs(settings),
        )

    @classmethod
    def trained_parts(cls, features: Iterable[str]) -> tuple[str, ...]:
        """The parts a method that trains ``features`` (``encoder``, ``decoder``) trains, in order."""
        wanted = {p for f in features for p in cls.feature_parts(f)}
        return tuple(p for p in cls.parts if p in wanted)

    def _init_classifier(
        self,
        num_classes: int | None,
        in_channels: int,
        classifier_features: Literal["decoder", "encoder", "backbone"],
    ) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if classifier_features not in CLASSIFIER_FEATURES:
            raise ValueError(
                f"classifier_features must be one of {', '.join(CLASSIFIER_FEATURES)}, "
                f"got {classifier_features!r}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.classifier_features = classifier_features
        self.classifier = (
            nn.Conv2d(self.feature_channels(classifier_features), num_classes, 1)
            if num_classes
            else None
        )

    @classmethod
    def feature_parts(cls, features: str) -> tuple[str, ...]:
        """The parts the input passes through to reach ``backbone``/``encoder``/``decoder`` features."""
        return {"backbone": ("backbone",), "encoder": cls.encoder_parts, "decoder": cls.parts}[
            features
        ]

    def part_modules(self, parts: tuple[str, ...] | None = None) -> list[nn.Module]:
        """The modules of ``parts`` (default: every part), in declaration order."""
        return [getattr(self, p) for p in (self.parts if parts is None else parts)]

    def feature_channels(self, features: str) -> int:
        """Channels of ``backbone`` (last stage), ``encoder`` or ``decoder`` features."""
        return {
            "backbone": self.backbone.out_channels,
            "encoder": self.encoder_channels,
            "decoder": self.decoder_channels,
        }[features]

    def feature_stride(self, features: str) -> int:
        """Output stride of ``backbone`` / ``encoder`` features (the backbone's) or ``decoder``."""
        return self.decoder_stride if features == "decoder" else self.backbone.output_stride

    def _needs_two_samples(self) -> bool:
        """True when a batch of one cannot train (a BatchNorm on a 1x1 map in train mode)."""
        return False

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected an image batch of shape (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} bands but the model was built for {self.in_channels} "
                f"(input shape {tuple(x.shape)}); set the model's in_channels to the data's band count"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image batch, got dtype {x.dtype}")
        if x.shape[0] < 2 and self._needs_two_samples():
            raise ValueError(
                "training needs a batch of at least 2 images: BatchNorm (ASPP image pooling) "
                f"cannot normalise a single value per channel; got batch shape {tuple(x.shape)}"
            )

    def _encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(stages, encoder)``: the backbone's four stage outputs and the encoder features.

        By default the encoder features are the last stage (U-Net, FPN).
        """
        stages = self.backbone.stages(x)
        return stages, stages[-1]

    def _decode(self, stages: list[Tensor], encoder: Tensor) -> Tensor:
        """Decoder features ``(B, decoder_channels, ceil(H/4), ceil(W/4))``; by default
        ``self.decoder(stages)`` (U-Net, FPN)."""
        return self.decoder(stages)

    def forward_features(self, x: Tensor, decoder: bool = True) -> DeepLabFeatures:
        """Encoder features, and the decoder features when ``decoder`` is true."""
        self._check_input(x)
        stages, encoder = self._encode(x)
        return DeepLabFeatures(encoder, self._decode(stages, encoder) if decoder else None)

    def classifier_input(self, x: Tensor) -> Tensor:
        """The features the classifier reads (see ``classifier_features``), nothing more."""
        self._check_input(x)
        if self.classifier_features == "backbone":
            return self.backbone.stages(x)[-1]
        encoder, dec = self.forward_features(x, decoder=self.classifier_features == "decoder")
        return encoder if dec is None else dec

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | DeepLabOutput:
        if self.classifier is None:
            raise RuntimeError(
                f"this {type(self).__name__} was built with num_classes=None (a pretraining "
                "encoder); use forward_features(), or build it with num_classes to get logits"
            )
        if return_features:
            if self.classifier_features != "decoder":
                raise RuntimeError(
                    "return_features=True needs classifier_features='decoder', got "
                    f"{self.classifier_features!r}"
                )
            encoder, dec = self.forward_features(x, decoder=True)
            assert dec is not None
            return DeepLabOutput(self._upsampled_logits(dec, x), encoder, dec)
        return self._upsampled_logits(self.classifier_input(x), x)

    def _upsampled_logits(self, features: Tensor, x: Tensor) -> Tensor:
        # a 1x1 conv commutes with bilinear upsampling (its weights sum to 1), so classifying
        # at feature resolution and upsampling the logits equals classifying upsampled features
        assert self.classifier is not None
        return F.interpolate(
            self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    dilation: int = 1,
    separable: bool = False,
) -> nn.Sequential:
    """Conv -> BN -> ReLU; a 3x3 ``separable`` conv is depthwise (dilated) then pointwise."""
    padding = dilation * (kernel_size - 1) // 2
    if separable and kernel_size > 1:
        return nn.Sequential(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
