"""Presets: official splits, explicit fields win, a Potsdam-like folder read end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from contrastseg.data.config import LabeledDataConfig
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.presets import apply_preset
from contrastseg.data.splits import assign_split

POTSDAM_TILES = [f"{r}_{c}" for r in range(2, 8) for c in range(7, 16)]  # a superset of the 38


def test_potsdam_official_split() -> None:
    config = apply_preset(LabeledDataConfig(preset="potsdam"))
    keys = [f"top_potsdam_{t}" for t in POTSDAM_TILES]
    test = {
        k.removeprefix("top_potsdam_")
        for k in assign_split(keys, "test", config.train, config.val, config.test)
    }
    train = {
        k.removeprefix("top_potsdam_")
        for k in assign_split(keys, "train", config.train, config.val, config.test)
    }
    assert test == {
        "2_13",
        "2_14",
        "3_13",
        "3_14",
        "4_13",
        "4_14",
        "4_15",
        "5_13",
        "5_14",
        "5_15",
        "6_13",
        "6_14",
        "6_15",
        "7_13",
    }
    assert len(train) == 24 and not train & test
    assert {"2_10", "6_7", "7_12"} <= train
    # Zero-padded copies of the data set ("6_07") land in the same split.
    assert assign_split(["top_potsdam_6_07"], "train", config.train, config.val, config.test) == [
        "top_potsdam_6_07"
    ]
    assert config.ignore_colors == ["#000000"] and len(config.classes) == len(config.palette) == 6


def test_vaihingen_split() -> None:
    config = apply_preset(LabeledDataConfig(preset="vaihingen"))
    keys = [f"top_mosaic_09cm_area{n}" for n in range(1, 39)]
    train = assign_split(keys, "train", config.train, config.val, config.test)
    test = assign_split(keys, "test", config.train, config.val, config.test)
    assert [int(k.split("area")[1]) for k in train] == [
        1,
        3,
        5,
        7,
        11,
        13,
        15,
        17,
        21,
        23,
        26,
        28,
        30,
        32,
        34,
        37,
    ]
    assert (
        len(test) == 17 and "top_mosaic_09cm_area38" in test and "top_mosaic_09cm_area1" not in test
    )


def test_explicit_fields_win_and_unknown_preset() -> None:
    config = apply_preset(LabeledDataConfig(preset="Dubai", test=["Tile 7/*"], ignore_index=99))
    assert config.preset == "dubai" and config.test == ["Tile 7/*"] and config.ignore_index == 99
    assert config.ignore_colors == ["#9B9B9B", "#000000"]
    with pytest.raises(ValueError, match="unknown data preset 'isaid'"):
        apply_preset(LabeledDataConfig(preset="isaid"))


def test_potsdam_layout_end_to_end(tmp_path: Path) -> None:
    # Two tiny tiles in the Potsdam layout: RGBIR uint8 images and eroded RGB labels.
    (tmp_path / "4_Ortho_RGBIR").mkdir()
    (tmp_path / "5_Labels_all_noBoundary").mkdir()
    rng = np.random.default_rng(0)
    colours = np.array(
        [
            [255, 255, 255],
            [0, 0, 255],
            [0, 255, 255],
            [0, 255, 0],
            [255, 255, 0],
            [255, 0, 0],
            [0, 0, 0],
        ],
        dtype=np.uint8,
    )
    truth = {}
    for tile in ("2_10", "2_13"):
        ids = rng.integers(0, 7, (48, 40))
        truth[tile] = np.where(ids == 6, 255, ids)
        tifffile.imwrite(
            tmp_path / "4_Ortho_RGBIR" / f"top_potsdam_{tile}_RGBIR.tif",
            rng.integers(0, 256, (48, 40, 4), dtype=np.uint8),
            photometric="minisblack",
            planarconfig="contig",
        )
        tifffile.imwrite(
            tmp_path / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif",
            colours[ids],
            photometric="rgb",
        )
    config = LabeledDataConfig(preset="potsdam", root=str(tmp_path), patch_size=16)
    train = LabeledDataset(config)
    test = LabeledDataset(config, split="test")
    assert [it.key for it in train.items] == ["top_potsdam_2_10"] and [
        it.key for it in test.items
    ] == ["top_potsdam_2_13"]
    image, mask = test[0]
    assert image.shape == (4, 48, 40)
    np.testing.assert_array_equal(mask.numpy(), truth["2_13"])  # black (eroded boundary) -> 255
    _, patch = train[len(train) - 1]
    np.testing.assert_array_equal(patch.numpy(), truth["2_10"][32:, 24:])
