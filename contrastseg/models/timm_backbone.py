"""Any timm model that offers ``features_only`` as a backbone (``model.arch: timm/<name>``).

The optional ``[timm]`` extra (``pip install contrastseg[timm]``). The model is built by
``timm.create_model(name, features_only=True, feature_cls="getter")`` with the band count
(``in_chans``) and, below 32, the output stride (timm dilates the last stages where the model
supports it); its four deepest feature levels are the stages the decoders read (strides
4, 8, 16, 32 undilated), their channels read from timm's ``feature_info``. The module keeps
the timm model (classifier pruned) under ``model``, so its state dict uses timm's own key
names behind ``model.``: ``contrastseg export --part backbone`` writes timm's names (a
``timm.create_model(name)`` loads them with only the classifier missing), and a timm weights
file loads with ``model.backbone_weights``.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from contrastseg.models.backbone import load_checked, read_backbone_state

#: ``model.arch`` prefix that names a timm model.
TIMM_PREFIX = "timm/"


def import_timm():
    """The ``timm`` module, or an error saying how to install it."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "model.arch timm/...: timm is not installed; pip install 'contrastseg[timm]'"
        ) from err
    return timm


class TimmBackbone(nn.Module):
    """A timm feature extractor with the interface of :class:`~contrastseg.models.ResNetBackbone`.

    Args:
        arch: ``timm/<model name>`` (e.g. ``timm/convnext_tiny``, ``timm/efficientnet_b0``).
        in_channels: number of input bands (timm adapts its first convolution).
        output_stride: 32, or 16 / 8 where the timm model supports dilation.
        weights: optional weights file in timm key names (a ``timm.create_model(name)``
            state dict; its classifier is dropped).

    Shapes: :meth:`stages` returns the four deepest feature levels, the first at stride 4.
    """

    def __init__(
        self,
        arch: str,
        in_channels: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if not arch.startswith(TIMM_PREFIX):
            raise ValueError(f"a timm backbone is named {TIMM_PREFIX}<name>, got {arch!r}")
        timm, name = import_timm(), arch.removeprefix(TIMM_PREFIX)
        kwargs = {"output_stride": output_stride} if output_stride != 32 else {}
        try:
            getter = timm.create_model(
                name, pretrained=False, features_only=True, feature_cls="getter",
                in_chans=in_channels, out_indices=(-4, -3, -2, -1), **kwargs,
            )  # fmt: skip
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:
            raise ValueError(
                f"model.arch {arch!r}: timm cannot build it as a feature extractor with "
                f"{in_channels} bands at output stride {output_stride} ({err})"
            ) from err
        reductions = getter.feature_info.reduction()
        expected = [min(r, output_stride) for r in (4, 8, 16, 32)]
        if list(reductions) != expected:
            raise ValueError(
                f"model.arch {arch!r}: its four deepest feature levels have strides "
                f"{list(reductions)}, the decoders need {expected}"
            )
        self.model = getter.model
        self._indices = getter.out_indices
        self.arch, self.in_channels, self.output_stride = arch, in_channels, output_stride
        self.stage_channels = tuple(getter.feature_info.channels())
        self.low_level_channels = self.stage_channels[0]
        self.out_channels = self.stage_channels[-1]
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a state dict in timm key names (strict but for the classifier the model lacks)."""
        first = next(k for k, v in self.model.state_dict().items() if v.ndim == 4)
        state = read_backbone_state(path, self.in_channels, first)
        own = self.model.state_dict()
        load_checked(self, {f"model.{k}": v for k, v in state.items() if k in own}, path)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The four deepest feature levels (strides 4, 8, 16, 32, or dilated)."""
        return self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True)
