"""Synthetic demo scenes: deterministic, labelled consistently, vegetation bright in NIR."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from contrastseg.data.demo import (
    BUILDING,
    CAR,
    DEMO_CLASSES,
    DEMO_PALETTE,
    IMPERVIOUS,
    LOW_VEGETATION,
    TREE,
    WATER,
    demo_key,
    make_scene,
    write_demo_dataset,
)


def test_scene_shapes_and_determinism() -> None:
    image, labels = make_scene(128, 4, seed=5)
    assert image.shape == (4, 128, 128) and image.dtype == np.uint8
    assert labels.shape == (128, 128) and labels.dtype == np.int64
    again, labels_again = make_scene(128, 4, seed=5)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = make_scene(128, 4, seed=6)
    assert not np.array_equal(image, other)
    assert labels.min() >= 0 and labels.max() < len(DEMO_CLASSES) == len(DEMO_PALETTE)


def test_band_counts() -> None:
    four, _ = make_scene(64, 4, seed=1)
    rgb, _ = make_scene(64, 3, seed=1)
    seven, _ = make_scene(64, 7, seed=1)
    assert rgb.shape[0] == 3 and seven.shape[0] == 7
    # The first bands are the same rendering up to the independent sensor noise (sigma 3).
    assert np.abs(four[:3].astype(int) - rgb.astype(int)).mean() < 6
    assert make_scene(64, 1, seed=1)[0].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="size"):
        make_scene(16, 3, 0)


def test_classes_present_and_spectra_plausible() -> None:
    images, labels = zip(*(make_scene(256, 4, seed=s) for s in range(4)), strict=True)
    image = np.concatenate([im.reshape(4, -1) for im in images], axis=1).astype(float)
    label = np.concatenate([lb.ravel() for lb in labels])
    assert set(np.unique(label)) == set(range(6))
    nir, red = image[3], image[0]

    def mean_nir(cls: int) -> float:
        return nir[label == cls].mean()

    # Near-infrared: vegetation bright, water dark (the NDVI contrast real RGBIR data shows).
    assert (
        min(mean_nir(TREE), mean_nir(LOW_VEGETATION))
        > max(mean_nir(IMPERVIOUS), mean_nir(BUILDING)) + 40
    )
    assert mean_nir(WATER) < 40
    ndvi = (nir - red) / (nir + red + 1e-6)
    assert ndvi[label == TREE].mean() > 0.4 > ndvi[label == IMPERVIOUS].mean()
    assert (label == CAR).sum() > 0


def test_demo_keys_hold_out_val_and_test() -> None:
    keys = [demo_key(i, 16) for i in range(16)]
    assert keys[:12] == [f"train_{i:03d}" for i in range(12)]
    assert keys[12:] == ["val_012", "val_013", "test_014", "test_015"]
    assert [demo_key(i, 3) for i in range(3)] == ["train_000", "val_001", "test_002"]
    assert [demo_key(i, 2) for i in range(2)] == ["train_000", "train_001"]


def test_write_demo_dataset(tmp_path) -> None:
    write_demo_dataset(tmp_path, n_scenes=3, size=64, bands=4, seed=2, mask_format="rgb")
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == ["test_002.tif", "train_000.tif", "val_001.tif"]
    image, labels = make_scene(64, 4, seed=2 * 100003 + 1)
    np.testing.assert_array_equal(
        np.moveaxis(tifffile.imread(tmp_path / "images" / "val_001.tif"), -1, 0), image
    )
    rgb = np.asarray(Image.open(tmp_path / "masks" / "val_001.png"))
    colours = np.array(
        [[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in DEMO_PALETTE], dtype=np.uint8
    )
    np.testing.assert_array_equal(rgb, colours[labels])
