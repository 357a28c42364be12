"""What a pretraining run trains: the network (``model.name``, no classifier) and the method's heads.

``PretrainModel`` owns the network and the :class:`~contrastseg.methods.Method` that
``method.name`` selects, and its ``forward`` returns the method's named losses, so that DDP
wraps exactly the parameters one step uses. Checkpoints keep the network under ``model``
and the method's own tensors under ``heads`` (each registered once); :func:`upgrade_heads`
reads the ``heads`` of checkpoints written before the method registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from contrastseg.augment.views import ViewPair
from contrastseg.config import ModelConfig
from contrastseg.methods import MethodConfig, build_method
from contrastseg.models import SegmentationNet, build_model


def build_network(model: ModelConfig, in_channels: int) -> SegmentationNet:
    """The network (no classifier) that a pretraining run trains, as ``model.name`` chooses."""
    return build_model(model, in_channels)


#: Head key prefixes of contrastseg 0.1.0 checkpoints that are named differently now.
_RENAMED_HEADS = {"simclr_head.": "global_head."}
#: Prefixes of the second copy of the GLCNet heads that 0.1.0 checkpoints hold.
_DUPLICATE_HEADS = ("glcnet.",)


def upgrade_heads(heads: Mapping[str, Any]) -> dict[str, Any]:
    """The ``heads`` of a checkpoint in today's key names (older layouts are converted).

    contrastseg 0.1.0 registered the GLCNet heads twice (``global_loss.head.*`` and
    ``glcnet.global_loss.head.*``, the same tensors) and called the SimCLR head
    ``simclr_head``; the copies are dropped and the names mapped.
    """
    out = {}
    for key, value in heads.items():
        if key.startswith(_DUPLICATE_HEADS):
            continue
        for old, new in _RENAMED_HEADS.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


class PretrainModel(nn.Module):
    """Network and method of one pretraining run.

    Args:
        model: network settings.
        method: the method's config (its class is chosen by ``method.name``).
        in_channels: input bands.

    ``forward(view1, view2, **inputs) -> dict`` of named losses (``"total"`` first); views are
    normalised float ``(B, C, h, w)``, ``inputs`` what :meth:`prepare` returned.
    """

    def __init__(self, model: ModelConfig, method: MethodConfig, in_channels: int) -> None:
        super().__init__()
        self.net = build_network(model, in_channels)
        self.method = build_method(method, self.net)

    @property
    def uses_decoder(self) -> bool:
        return self.method.uses_decoder

    def prepare(self, pair: ViewPair, generator: Any, num_source_pixels: int) -> dict[str, Any]:
        """The method's extra inputs for this view pair (no gradient; see ``Method.prepare``)."""
        return self.method.prepare(pair, generator, num_source_pixels)

    def heads_state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers of everything but the network (the method's heads)."""
        return self.method.state_dict()

    def load_heads(self, heads: Mapping[str, Tensor]) -> None:
        """Load a checkpoint's ``heads`` (any layout :func:`upgrade_heads` reads), strictly."""
        self.method.load_state_dict(upgrade_heads(heads))

    def forward(self, view1: Tensor, view2: Tensor, **inputs: Any) -> dict[str, Tensor]:
        feats1 = self.net.forward_features(view1, decoder=self.uses_decoder)
        feats2 = self.net.forward_features(view2, decoder=self.uses_decoder)
        return self.method(feats1, feats2, **inputs)
