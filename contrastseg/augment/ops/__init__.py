"""The package's ``kornia.augmentation`` classes, by concern, and ``extra:`` ops by name.

- :mod:`~contrastseg.augment.ops.band`: multi-band intensity ops (colour, grayscale, noise, blur).
- :mod:`~contrastseg.augment.ops.geometric`: quarter turns and the official flip choice.
- :mod:`~contrastseg.augment.ops.glcnet`: the official GLCNet colour and blur.
- :mod:`~contrastseg.augment.ops.registry`: ``extra:`` specs checked and built by name.
"""

from contrastseg.augment.ops.band import (
    GaussianBlur,
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
)
from contrastseg.augment.ops.geometric import RandomFlipChoice, RandomQuarterTurn
from contrastseg.augment.ops.glcnet import RandomGLCNetColor, RandomOpenCVBlur
from contrastseg.augment.ops.registry import TRACKED_GEOMETRIC, check_op_spec, make_op, op_label

__all__ = [
    "TRACKED_GEOMETRIC",
    "GaussianBlur",
    "RandomBandColorJitter",
    "RandomBandGaussianNoise",
    "RandomBandGrayscale",
    "RandomFlipChoice",
    "RandomGLCNetColor",
    "RandomOpenCVBlur",
    "RandomQuarterTurn",
    "check_op_spec",
    "make_op",
    "op_label",
]
