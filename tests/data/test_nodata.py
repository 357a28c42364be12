"""Nodata masks (module: contrastseg/data/nodata.py) against explicit per-pixel loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastseg.data.nodata import (
    check_nan,
    fill_invalid,
    invalid_pixels,
    mark_invalid,
    valid_pixels,
)
from contrastseg.data.readers import Window


def loop_invalid(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """The rule spelled out pixel by pixel: a non-finite band, or every band equal to nodata."""
    _, h, w = array.shape
    out = np.zeros((h, w), dtype=bool)
    for r in range(h):
        for c in range(w):
            pixel = array[:, r, c].astype(np.float64)
            out[r, c] = (not np.isfinite(pixel).all()) or (
                nodata is not None and bool((pixel == nodata).all())
            )
    return out


def test_invalid_pixels_match_the_per_pixel_rule():
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 3, (3, 9, 7)).astype(np.uint16)  # many all-0 and partly-0 pixels
    np.testing.assert_array_equal(invalid_pixels(ints, 0), loop_invalid(ints, 0))
    assert not invalid_pixels(ints, None).any()
    floats = rng.normal(size=(2, 6, 5)).astype(np.float32)
    floats[0, 1, 2] = np.nan
    floats[1, 3, 3] = np.inf
    floats[:, 4, 0] = -9999.0
    floats[0, 5, 1] = -9999.0  # one band only: a real value
    np.testing.assert_array_equal(invalid_pixels(floats, -9999.0), loop_invalid(floats, -9999.0))
    assert invalid_pixels(floats, -9999.0).sum() == 3


def test_nan_without_nodata_is_an_error_naming_file_and_count():
    array = np.ones((2, 4, 4), dtype=np.float32)
    array[0, 0, :3] = np.nan
    array[1, 0, 0] = np.nan  # same pixel as band 0's: counted once
    with pytest.raises(
        ValueError, match=r"'scene\.tif' has 3 NaN pixel\(s\) in window \(row=8, col=0, 4 x 4\)"
    ):
        check_nan(array, None, "scene.tif", Window(8, 0, 4, 4))
    check_nan(array, -9999.0, "scene.tif")  # declared nodata: NaN is missing data too
    source = np.full((2, 2, 2), -9999.0, dtype=np.float32)
    source[:, 1, 1] = 3.0
    source[0, 0, 1] = np.nan
    marked, invalid = mark_invalid(source, -9999.0, "x")
    assert invalid.tolist() == [[True, True], [True, False]]
    assert np.isnan(marked[:, invalid]).all() and marked[:, 1, 1].tolist() == [3.0, 3.0]
    assert source[0, 0, 0] == -9999.0  # the caller's array is not changed


def test_valid_pixels_and_fill_on_batches():
    batch = torch.tensor([[[[0, 5], [0, 0]], [[0, 0], [7, 0]]]], dtype=torch.uint8)
    valid = valid_pixels(batch, 0)
    assert valid.tolist() == [[[False, True], [True, False]]]
    assert valid_pixels(batch, None) is None and valid_pixels(batch, 9) is None
    images = torch.rand(1, 2, 2, 2)
    images[0, :, 0, 0] = torch.nan
    valid = valid_pixels(images, None)
    filled = fill_invalid(images, valid, [0.25, 0.75])
    assert filled[0, :, 0, 0].tolist() == [0.25, 0.75]
    assert torch.equal(filled[0, :, 1], images[0, :, 1])
    # without a configured mean: the mean of the valid pixels (oracle: explicit average)
    expected = [
        sum(float(images[0, c, r, k]) for r, k in ((0, 1), (1, 0), (1, 1))) / 3 for c in (0, 1)
    ]
    assert fill_invalid(images, valid, None)[0, :, 0, 0].tolist() == pytest.approx(expected)
