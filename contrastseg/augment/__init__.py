"""Paired views with index tracking, matched local regions and region pooling (GLCNet).

``PairedViews`` makes two augmented views of a batch on its device and, for every view
pixel, the source pixel it came from (each view a pipeline of ``kornia.augmentation``
modules resampled once; our multi-band ops are the ``RandomBand*`` Kornia classes in
:mod:`contrastseg.augment.ops`); ``match_regions`` draws window pairs centred on the same
source pixel in both views; ``pool_regions`` averages a feature map over those windows;
``draw_view_grid`` (and ``preview_views``, which runs it all) writes a PNG to check it by eye.
"""

from contrastseg.augment.config import (
    BlurConfig,
    ColorConfig,
    CropConfig,
    FlipConfig,
    GrayscaleConfig,
    NoiseConfig,
    PipelineConfig,
    Rot90Config,
    RotationConfig,
    ViewsConfig,
)
from contrastseg.augment.ops import (
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
    RandomQuarterTurn,
)
from contrastseg.augment.pooling import pool_regions
from contrastseg.augment.preview import draw_view_grid, preview_views
from contrastseg.augment.regions import MatchedRegions, match_regions
from contrastseg.augment.views import PairedViews, ViewPair

__all__ = [
    "BlurConfig",
    "ColorConfig",
    "CropConfig",
    "FlipConfig",
    "GrayscaleConfig",
    "MatchedRegions",
    "NoiseConfig",
    "PairedViews",
    "PipelineConfig",
    "RandomBandColorJitter",
    "RandomBandGaussianNoise",
    "RandomBandGrayscale",
    "RandomQuarterTurn",
    "Rot90Config",
    "RotationConfig",
    "ViewPair",
    "ViewsConfig",
    "draw_view_grid",
    "match_regions",
    "pool_regions",
    "preview_views",
]
