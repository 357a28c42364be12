"""Tests of contrastseg/augment/preview.py: the PNG grid of views and regions."""

import numpy as np
import pytest
import torch
from PIL import Image

from contrastseg.augment.preview import PALETTE, draw_view_grid
from contrastseg.augment.regions import MatchedRegions
from contrastseg.augment.views import ViewPair


def make_pair(b, bands, size=32):
    g = torch.Generator().manual_seed(0)
    images = (
        torch.rand(b, bands, 40, 40, generator=g) * 0.1 + 0.45
    )  # low contrast: the stretch matters
    views = torch.rand(b, bands, size, size, generator=g) * 0.1 + 0.45
    index = torch.ones(b, size, size, dtype=torch.long)
    return images, ViewPair(views, views.clone(), index, index)


def test_grid_layout_and_region_colours(tmp_path):
    images, pair = make_pair(2, 4)
    boxes1 = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0]]]).repeat(2, 1, 1)
    boxes2 = boxes1 + 8
    valid = torch.tensor([[True, True], [True, False]])
    path = draw_view_grid(
        images,
        pair,
        MatchedRegions(boxes1, boxes2, valid),
        tmp_path / "sub" / "grid.png",
        cell=64,
        margin=4,
    )
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (2 * 64 + 3 * 4, 3 * 64 + 4 * 4, 3)
    scale = 64 / 32
    for row in range(2):
        top = 4 + row * 68
        for col, boxes in ((1, boxes1), (2, boxes2)):
            left = 4 + col * 68
            for n in range(2):
                x1, y1 = (int(v * scale) for v in boxes[row, n, :2].tolist())
                colour = tuple(picture[top + y1, left + x1 + 5])
                assert (colour == PALETTE[n]) == bool(valid[row, n]), (row, col, n)


def test_percentile_stretch_uses_the_full_range(tmp_path):
    images, pair = make_pair(1, 13)
    path = draw_view_grid(
        images, pair, None, tmp_path / "grid.png", rgb_bands=[3, 2, 1], cell=40, margin=0
    )
    original = np.asarray(Image.open(path).convert("RGB"))[:40, :40]
    assert original.min() == 0 and original.max() == 255


def test_single_band_is_shown_as_grey(tmp_path):
    images, pair = make_pair(1, 1)
    path = draw_view_grid(
        images, pair, None, tmp_path / "grid.png", rgb_bands=(0, 1, 2), cell=32, margin=0
    )
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all()


def test_mismatched_batch_raises(tmp_path):
    images, pair = make_pair(2, 3)
    with pytest.raises(ValueError, match="same size"):
        draw_view_grid(images[:1], pair, None, tmp_path / "grid.png")


def test_preview_views_crops_a_list_to_a_common_size(tmp_path):
    from contrastseg.augment import ViewsConfig, preview_views

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(4, 50, 60, generator=g), torch.rand(4, 64, 48, generator=g)]
    cfg = ViewsConfig(size=32, rgb_bands=[2, 1, 0])
    path = preview_views(images, tmp_path / "views.png", cfg, num_regions=3, region_size=8, cell=32)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (2 * 32 + 3 * 4, 3 * 32 + 4 * 4, 3)
    # The original column holds the 50 x 48 centre crop scaled to 32 x 31 (aspect kept).
    original = picture[4 : 4 + 32, 4 : 4 + 32]
    assert (original[:, 30] != 255).any(axis=-1).all() and (original[:, 31] == 255).all()
    again = preview_views(
        images, tmp_path / "again.png", cfg, num_regions=3, region_size=8, cell=32
    )
    assert np.array_equal(picture, np.asarray(Image.open(again).convert("RGB")))
    with pytest.raises(ValueError, match="band count"):
        preview_views([torch.rand(3, 8, 8), torch.rand(4, 8, 8)], tmp_path / "bad.png")


def test_preview_lists_the_extra_ops_above_the_grid(tmp_path):
    from contrastseg.augment import PipelineConfig, ViewsConfig, preview_views
    from contrastseg.augment.preview import describe_views

    extra = [{"name": "RandomErasing", "p": 0.5}]
    cfg = ViewsConfig(size=32, t2=PipelineConfig(extra=extra))
    assert describe_views(cfg) == ["t1: crop", "t2: crop + RandomErasing(p=0.5)"]
    assert describe_views(ViewsConfig())[1] == (
        "t2: crop, hflip, vflip, rot90, color, grayscale, blur, noise"
    )
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    path = preview_views(images, tmp_path / "v.png", cfg, num_regions=2, region_size=8, cell=64)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (2 * 14 + 2 * 64 + 3 * 4, 3 * 64 + 4 * 4, 3)  # two title lines
    assert (picture[: 2 * 14] != 255).any()  # text drawn
    # A grid too narrow for a line wraps it: 112 px hold 20 characters, so t2's line takes two.
    path = preview_views(images, tmp_path / "n.png", cfg, num_regions=2, region_size=8, cell=32)
    assert np.asarray(Image.open(path)).shape[0] == 3 * 14 + 2 * 32 + 3 * 4
