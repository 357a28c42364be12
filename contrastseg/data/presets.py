"""Built-in dataset presets: class names, palettes, file layout and official splits.

- ``potsdam``: ISPRS 2D Semantic Labeling Potsdam, 38 RGBIR tiles of 6000 x 6000 px at
  5 cm. Images ``4_Ortho_RGBIR/top_potsdam_<r>_<c>_RGBIR.tif``, labels with eroded
  boundaries ``5_Labels_all_noBoundary/top_potsdam_<r>_<c>_label_noBoundary.tif`` (black =
  boundary = ignored). The commonly used split: 24 training tiles, 14 test tiles (the
  ISPRS benchmark's test set).
- ``vaihingen``: ISPRS Vaihingen, 33 IRRG tiles (about 2500 x 2000 px, 9 cm).
  Images ``top/top_mosaic_09cm_area<n>.tif``, eroded labels
  ``gts_eroded_for_participants/top_mosaic_09cm_area<n>_noBoundary.tif``; 16 training
  areas, 17 test areas (the commonly used split).
- ``dubai``: the Dubai aerial set (Humans in the Loop / MBRSC, CC0): ``Tile N/images/*.jpg``
  with RGB masks ``Tile N/masks/*.png``; 5 classes, grey ``#9B9B9B`` and black ignored;
  ``Tile 8`` held out for testing, the other tiles train.
- ``demo``: the synthetic scenes of :mod:`contrastseg.data.demo` (in memory when ``root`` is
  empty, or as written by :func:`write_demo_dataset`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from contrastseg.data.config import LabeledDataConfig
from contrastseg.data.demo import DEMO_CLASSES, DEMO_PALETTE
from contrastseg.utils.configtools import from_dict, merge_mappings, to_dict

#: ISPRS class names and colours (Potsdam and Vaihingen share them).
ISPRS_CLASSES = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
ISPRS_PALETTE = ["#FFFFFF", "#0000FF", "#00FFFF", "#00FF00", "#FFFF00", "#FF0000"]

POTSDAM_TRAIN_TILES = [
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
]  # fmt: skip
POTSDAM_TEST_TILES = [
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13",
    "6_14", "6_15", "7_13",
]  # fmt: skip
VAIHINGEN_TRAIN_AREAS = [1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37]
VAIHINGEN_TEST_AREAS = [2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38]

DUBAI_CLASSES = ["building", "land", "road", "vegetation", "water"]
DUBAI_PALETTE = ["#3C1098", "#8429F6", "#6EC1E4", "#FEDD3A", "#E2A929"]


def _potsdam_patterns(tiles: list[str]) -> list[str]:
    # Some copies zero-pad the column ("6_07"); accept both spellings.
    out = []
    for tile in tiles:
        row, col = tile.split("_")
        out += [f"*_{row}_{col}", f"*_{row}_{int(col):02d}"]
    return sorted(set(out))


PRESETS: dict[str, dict[str, Any]] = {
    "potsdam": {
        "image_dir": "4_Ortho_RGBIR",
        "mask_dir": "5_Labels_all_noBoundary",
        "image_patterns": ["*.tif"],
        "mask_patterns": ["*.tif"],
        "image_suffix": "_RGBIR",
        "mask_suffix": "_label_noBoundary",
        "mask_format": "rgb",
        "classes": ISPRS_CLASSES,
        "palette": ISPRS_PALETTE,
        "ignore_colors": ["#000000"],
        "train": _potsdam_patterns(POTSDAM_TRAIN_TILES),
        "test": _potsdam_patterns(POTSDAM_TEST_TILES),
    },
    "vaihingen": {
        "image_dir": "top",
        "mask_dir": "gts_eroded_for_participants",
        "image_patterns": ["*.tif"],
        "mask_patterns": ["*.tif"],
        "mask_suffix": "_noBoundary",
        "mask_format": "rgb",
        "classes": ISPRS_CLASSES,
        "palette": ISPRS_PALETTE,
        "ignore_colors": ["#000000"],
        "train": [f"*_area{n}" for n in VAIHINGEN_TRAIN_AREAS],
        "test": [f"*_area{n}" for n in VAIHINGEN_TEST_AREAS],
    },
    "dubai": {
        "image_dir": "images",
        "mask_dir": "masks",
        "image_patterns": ["*.jpg"],
        "mask_patterns": ["*.png"],
        "mask_format": "rgb",
        "classes": DUBAI_CLASSES,
        "palette": DUBAI_PALETTE,
        "ignore_colors": ["#9B9B9B", "#000000"],
        "test": ["Tile 8/*"],
    },
    "demo": {
        "image_dir": "images",
        "mask_dir": "masks",
        "mask_format": "auto",
        "classes": DEMO_CLASSES,
        "palette": DEMO_PALETTE,
        "train": ["train_*"],
        "val": ["val_*"],
        "test": ["test_*"],
    },
}


def preset_mapping(name: str) -> dict[str, Any]:
    """The values of data preset ``name`` (case-insensitive) as a raw config mapping.

    Raises:
        ValueError: unknown preset name.
    """
    key = str(name).lower()
    if key not in PRESETS:
        raise ValueError(f"unknown data preset {name!r}; choose one of {sorted(PRESETS)}")
    return {"preset": key, **copy.deepcopy(PRESETS[key])}


def resolve_preset(section: Mapping[str, Any], default: str | None = None) -> dict[str, Any]:
    """A raw ``data`` mapping with its preset's values merged *under* it (its own keys win).

    ``preset`` (or ``default`` when the mapping has no ``preset`` key) names the preset; the
    result keeps the preset's name for information, next to every value it supplied, so
    resolving it again changes nothing. An explicit value always wins, also one equal to
    the field's default (``test: []`` with ``preset: dubai`` tests on nothing).

    A complete mapping (every field) with a preset but neither ``classes`` nor ``palette``
    never went through this: it is a ``LabeledDataConfig`` built in code, or a config stored
    by contrastseg before presets were resolved on loading (every preset defines classes).
    There the preset fills the fields left at their defaults, as such configs were read
    when they were written.

    Raises:
        ValueError: unknown preset name.
    """
    name = section.get("preset", default)
    if name is None:
        return dict(section)
    base = preset_mapping(name)
    defaults = to_dict(LabeledDataConfig())
    complete = set(defaults) <= set(section)
    explicit = [k for k in ("classes", "palette") if k in section and not section[k]]
    if not complete and len(explicit) == 2:
        # both emptied on purpose: the preset's would come back later (see below), unasked
        raise ValueError(
            f"classes: [] and palette: [] leave preset {name!r} without classes: give class "
            "names or a palette, or leave both out to use the preset's"
        )
    if complete and not section.get("classes") and not section.get("palette"):
        section = {k: v for k, v in section.items() if k not in base or v != defaults.get(k)}
    return {**merge_mappings(base, section), "preset": base["preset"]}


def labeled_config(**values: Any) -> LabeledDataConfig:
    """A :class:`LabeledDataConfig` from keyword values, its ``preset`` filling the others.

    Raises:
        ValueError: unknown preset; ConfigError: an impossible value.
    """
    return from_dict(LabeledDataConfig, resolve_preset(to_dict(values)), source="labeled_config")


def apply_preset(config: LabeledDataConfig) -> LabeledDataConfig:
    """``config`` with its preset resolved (see :func:`resolve_preset`); resolved configs come back equal.

    Configs loaded from YAML / ``--set`` are resolved on loading (explicit values win);
    this resolves one built in code with a preset but no classes.

    Raises:
        ValueError: unknown preset name.
    """
    if config.preset is None:
        return config
    return from_dict(LabeledDataConfig, resolve_preset(to_dict(config)), source="data")
