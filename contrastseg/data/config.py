"""Configuration of the unlabeled (pretraining) and labeled (fine-tuning) data."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field

from contrastseg.data.files import compile_regex
from contrastseg.utils.sections import (
    Bool,
    Float,
    Int,
    Nodata,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    section,
)

#: File name patterns an unlabeled or labeled dataset picks up by default (case-insensitive).
DEFAULT_PATTERNS = ["*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg"]


#: Band indices (0-based) in order: a non-empty list; ``None`` where used means all bands.
Bands = Annotated[list[NonNegativeInt], Field(min_length=1)]


@section("data.demo")
class DemoDataConfig:
    """The built-in synthetic scenes used when no data folder is given.

    Attributes:
        n_scenes: number of scenes generated in memory.
        size: side of each square scene in pixels.
        bands: number of bands (3 = RGB; 4 adds near-infrared; more repeat mixtures).
        seed: seed of the procedural generator; scene ``i`` uses ``(seed, i)``.
    """

    n_scenes: PositiveInt = 16
    """number of scenes generated in memory"""
    size: Annotated[Int, Field(ge=32)] = 512
    """side of each square scene in pixels"""
    bands: PositiveInt = 4
    """number of bands (3 = RGB, 4 = RGB + near-infrared)"""
    seed: Int = 0
    """seed of the procedural generator"""


@section("data")
class UnlabeledDataConfig:
    """Unlabeled images for pretraining.

    Attributes:
        roots: folders (searched recursively) or single image files; empty means the
            built-in demo scenes (see ``demo``).
        patterns: file name patterns to pick up, case-insensitive.
        exclude: fnmatch patterns of paths (relative to their root) to leave out, e.g.
            ``*/masks/*`` to pretrain on a labeled set's images only.
        bands: band indices (0-based) to use, in this order; None keeps all bands.
        patch_size: side of the square patches cut from each image, in pixels.
        sampling: ``random`` windows re-drawn every epoch, or a fixed ``grid``.
        coverage: random sampling only: windows per image and epoch are
            ``max(1, round(coverage * H * W / patch_size**2))``, i.e. proportional to area.
        grid_stride: grid sampling only: step between grid windows; None = ``patch_size``.
        too_small: images smaller than the patch: ``error`` or ``skip`` (counted, warned).
        skip_bad_files: skip unreadable or corrupt files with a counted warning instead of
            raising an error naming the file.
        scale: value that maps to 1.0 when converting to float; None = the dtype's range
            (255 for uint8, 65535 for uint16, 1 for float files).
        nodata: pixel value that marks missing data (all bands equal to it), for every file;
            None = each GeoTIFF's GDAL_NODATA tag. NaN / inf pixels are always missing.
        max_nodata_fraction: a patch with a larger fraction of nodata pixels is skipped (the
            next one is taken), so scene edges and empty images do not fill batches.
        seed: seed of the random windows; epoch ``e`` draws from ``(seed, e)``.
        demo: the synthetic scenes used when ``roots`` is empty.
    """

    roots: list[Str] = field(default_factory=list)
    """folders or files; empty = demo scenes"""
    patterns: list[Str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    """file patterns"""
    exclude: list[Str] = field(default_factory=list)
    """paths to leave out, e.g. '*/masks/*'"""
    bands: Bands | None = None
    """band indices to use, in order; None = all"""
    patch_size: PositiveInt = 224
    """side of the square patches in pixels"""
    sampling: Literal["random", "grid"] = "random"
    """random windows per epoch or a fixed grid"""
    coverage: PositiveFloat = 1.0
    """random windows per image = coverage * area / patch area"""
    grid_stride: PositiveInt | None = None
    """grid step in pixels; None = patch_size"""
    too_small: Literal["error", "skip"] = "error"
    """images smaller than the patch"""
    skip_bad_files: Bool = False
    """skip unreadable files with a warning instead of failing"""
    scale: PositiveFloat | None = None
    """float scale; None = dtype range"""
    nodata: Nodata = None
    """value of missing pixels; None = the GeoTIFF tag"""
    max_nodata_fraction: Annotated[Float, Field(ge=0, lt=1)] = 0.5
    """patches with more nodata pixels are skipped"""
    seed: Int = 0
    """seed of the random windows"""
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    """built-in scenes"""

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("patterns must list at least one file pattern, got []")


@section("data")
class LabeledDataConfig:
    """Image/mask pairs for fine-tuning and evaluation.

    Pairing: images are the files under ``image_dir``, masks those under ``mask_dir``. A
    folder given as a single name (``images``) matches every folder of that name at any depth
    under ``root`` (``Tile 1/images``, ``Tile 2/images``, ...) and the path above it is part of
    the pairing key; a path (``4_Ortho_RGBIR`` or ``a/b``) is taken relative to ``root``.
    The key of a file is its path inside that folder without extension and without
    ``image_suffix``/``mask_suffix`` at the end of the stem, or, when ``image_regex``/
    ``mask_regex`` are given, the first group (or the group named ``key``) of the regex
    searched in that path. An image and a mask pair when their keys are equal.

    Attributes:
        preset: ``potsdam``, ``vaihingen``, ``dubai`` or ``demo``; its values (folders,
            pairing, classes, palette, splits) are merged under the section when the config
            is loaded, so every value the file or ``--set`` gives wins, also one equal to the
            default (:func:`contrastseg.data.presets.resolve_preset`). None = explicit.
        root: dataset folder; ``demo`` with an empty root generates scenes in memory.
        image_dir: folder name or relative path of the images (see pairing above).
        mask_dir: folder name or relative path of the masks.
        image_patterns: image file patterns, case-insensitive.
        mask_patterns: mask file patterns, case-insensitive.
        image_suffix: end of an image stem dropped to form its key (``_RGBIR``).
        mask_suffix: end of a mask stem dropped to form its key (``_label``).
        image_regex: regex whose first (or ``key``) group is an image's key; overrides suffix.
        mask_regex: regex whose first (or ``key``) group is a mask's key; overrides suffix.
        mask_format: ``rgb`` colour-coded masks through ``palette``, ``index`` maps of class
            ids, or ``auto`` (3-band masks are RGB, 1-band masks are index maps).
        classes: class names, in class-id order.
        palette: one hex colour (``#RRGGBB``) per class, in class-id order (RGB masks).
        ignore_colors: hex colours mapped to ``ignore_index`` (RGB masks).
        ignore_values: index-map values mapped to ``ignore_index`` (index masks).
        ignore_index: label of ignored pixels in the returned masks.
        bands: image band indices (0-based) to use, in this order; None = all.
        train: fnmatch patterns of keys in the training split; empty = every key not in
            ``val`` or ``test``.
        val: fnmatch patterns of keys in the validation split.
        test: fnmatch patterns of keys in the test split.
        patch_size: side of the training patches (a grid over every image, no overlap).
        label_fraction: fraction of the training patches used (e.g. 0.01), drawn with ``seed``.
        label_list: list file of the chosen patch ids: read when it exists, written otherwise;
            empty = draw without a file.
        seed: seed of the label-fraction draw.
        skip_bad_files: skip unreadable pairs with a counted warning instead of failing.
        scale: value that maps to 1.0 when converting to float; None = dtype range.
        nodata: image pixel value that marks missing data (all bands equal to it); None =
            each GeoTIFF's GDAL_NODATA tag. Missing and NaN pixels get ``ignore_index``.
        demo: the synthetic scenes of the ``demo`` preset when ``root`` is empty.
    """

    preset: Str | None = None
    root: Str = ""
    """dataset folder; empty with preset demo = scenes in memory"""
    image_dir: Str = "images"
    """image folder name (any depth) or path relative to root"""
    mask_dir: Str = "masks"
    """mask folder name (any depth) or path relative to root"""
    image_patterns: list[Str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    mask_patterns: list[Str] = field(default_factory=lambda: ["*.png", "*.tif", "*.tiff"])
    """masks"""
    image_suffix: Str = ""
    """end of an image stem dropped to form its key"""
    mask_suffix: Str = ""
    """end of a mask stem dropped to form its key"""
    image_regex: Str = ""
    """regex giving an image's key (first or 'key' group)"""
    mask_regex: Str = ""
    """regex giving a mask's key (first or 'key' group)"""
    mask_format: Literal["auto", "rgb", "index"] = "auto"
    """colour-coded or index masks"""
    classes: list[Str] = field(default_factory=list)
    """class names in id order"""
    palette: list[Str] = field(default_factory=list)
    """'#RRGGBB' per class in id order"""
    ignore_colors: list[Str] = field(default_factory=list)
    """colours mapped to ignore_index"""
    ignore_values: list[Int] = field(default_factory=list)
    """index values mapped to ignore_index"""
    ignore_index: Annotated[Int, Field(ge=0, le=65535)] = 255
    """label of ignored pixels"""
    bands: Bands | None = None
    """image band indices in order; None = all"""
    train: list[Str] = field(default_factory=list)
    """key patterns of the training split"""
    val: list[Str] = field(default_factory=list)
    """key patterns of the validation split"""
    test: list[Str] = field(default_factory=list)
    """key patterns of the test split"""
    patch_size: PositiveInt = 256
    """side of the training patches in pixels"""
    label_fraction: Annotated[Float, Field(gt=0, le=1)] = 1.0
    """fraction of training patches used"""
    label_list: Str = ""
    """list file of chosen patch ids (read if present, else written)"""
    seed: Int = 0
    """seed of the label-fraction draw"""
    skip_bad_files: Bool = False
    """skip unreadable pairs with a warning"""
    scale: PositiveFloat | None = None
    """float scale; None = dtype range"""
    nodata: Nodata = None
    """image value of missing pixels; None = the GeoTIFF tag"""
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    """scenes of the demo preset"""

    def __post_init__(self) -> None:
        if self.palette and self.classes and len(self.palette) != len(self.classes):
            raise ValueError(
                f"palette has {len(self.palette)} colours but classes has {len(self.classes)} names"
            )
        for key in ("image_regex", "mask_regex"):
            compile_regex(getattr(self, key), key)
