"""Contrastive losses (NT-Xent, GLCNet global and local) and the segmentation loss catalogue.

Contrastive: :func:`nt_xent` and its module :class:`NTXentLoss`, :class:`NegativeQueue` and
:func:`queued_nt_xent` (negatives from earlier batches), :func:`style_vector`,
:class:`GlobalStyleLoss`, :class:`LocalMatchingLoss`, :class:`GLCNetLoss`.
Segmentation: every loss of :mod:`contrastseg.losses.segmentation`, and
:func:`build_loss` which turns a config spec (``"dice+ce"``,
``{"name": "focal_tversky", "gamma": 0.75}``) into a module.
"""

from contrastseg.losses.glcnet import (
    GLCNetLoss,
    GLCNetLossOutput,
    GlobalStyleLoss,
    LocalMatchingLoss,
    LocalMatchingOutput,
)
from contrastseg.losses.ntxent import (
    MaskedNTXent,
    NegativeQueue,
    NTXentLoss,
    masked_nt_xent,
    nt_xent,
    queued_nt_xent,
)
from contrastseg.losses.segmentation import *  # noqa: F403 - the catalogue is the public API
from contrastseg.losses.segmentation import __all__ as _segmentation_all
from contrastseg.losses.style import style_vector

__all__ = [
    "GLCNetLoss",
    "GLCNetLossOutput",
    "GlobalStyleLoss",
    "LocalMatchingLoss",
    "LocalMatchingOutput",
    "MaskedNTXent",
    "NegativeQueue",
    "NTXentLoss",
    "masked_nt_xent",
    "nt_xent",
    "queued_nt_xent",
    "style_vector",
    *_segmentation_all,
]
