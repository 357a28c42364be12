"""Colour-coded masks: round trips, unknown colours, index maps."""

from __future__ import annotations

import numpy as np
import pytest

from contrastseg.data.palettes import Palette, check_index_mask, format_color, parse_color

COLORS = ["#FFFFFF", "#0000FF", "#00FFFF", "#00FF00", "#FFFF00", "#FF0000"]


def test_parse_and_format_colors() -> None:
    assert parse_color("#3C1098") == (0x3C, 0x10, 0x98)
    assert parse_color("9b9b9b") == (155, 155, 155)
    assert format_color((60, 16, 152)) == "#3C1098"
    for bad in ("#12345", "#GG0000", "red"):
        with pytest.raises(ValueError, match="hex colour"):
            parse_color(bad)


def test_round_trip_labels_colors_labels() -> None:
    palette = Palette(COLORS, ignore_colors=["#000000"], ignore_index=255)
    labels = np.random.default_rng(0).integers(0, 6, (37, 41))
    labels[:3] = 255
    rgb = palette.decode(labels)
    assert rgb.shape == (3, 37, 41) and rgb.dtype == np.uint8
    # Oracle: the colour of each pixel written out by hand from the hex table.
    table = {i: tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for i, c in enumerate(COLORS)}
    table[255] = (0, 0, 0)
    expected = np.array([[table[int(v)] for v in row] for row in labels], dtype=np.uint8)
    np.testing.assert_array_equal(np.moveaxis(rgb, 0, -1), expected)
    np.testing.assert_array_equal(palette.encode(rgb), labels)


def test_ignore_colors_become_ignore_index() -> None:
    palette = Palette(["#3C1098", "#8429F6"], ignore_colors=["#9B9B9B", "#000000"], ignore_index=7)
    rgb = np.zeros((3, 2, 2), dtype=np.uint8)
    rgb[:, 0, 0] = (0x3C, 0x10, 0x98)
    rgb[:, 0, 1] = (0x84, 0x29, 0xF6)
    rgb[:, 1, 0] = 0x9B
    np.testing.assert_array_equal(palette.encode(rgb), [[0, 1], [7, 7]])


def test_unknown_colours_are_an_error_with_counts() -> None:
    palette = Palette(COLORS[:2])
    rgb = np.full((3, 4, 5), 255, dtype=np.uint8)
    rgb[:, 0, :3] = np.array([1, 2, 3], dtype=np.uint8)[:, None]  # 3 px of #010203
    rgb[:, 3, 4] = np.array([250, 0, 7], dtype=np.uint8)  # 1 px of #FA0007
    with pytest.raises(
        ValueError, match=r"tile_7\.png: 4 pixel\(s\).*#010203 \(3 px\), #FA0007 \(1 px\)"
    ):
        palette.encode(rgb, source="tile_7.png")


def test_duplicate_colours_rejected() -> None:
    with pytest.raises(ValueError, match="#FFFFFF more than once"):
        Palette(["#FFFFFF", "#000000"], ignore_colors=["#ffffff"])


def test_index_masks_checked() -> None:
    mask = np.array([[0, 1, 2], [9, 255, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(
        check_index_mask(mask, num_classes=3, ignore_values=[9], ignore_index=255),
        [[0, 1, 2], [255, 255, 1]],
    )
    with pytest.raises(
        ValueError, match=r"m\.png: values outside classes 0..2 and not ignored: 9 \(1 px\)"
    ):
        check_index_mask(mask, num_classes=3, source="m.png")
    with pytest.raises(ValueError, match="one band"):
        check_index_mask(np.zeros((3, 2, 2), dtype=np.uint8), 3)
