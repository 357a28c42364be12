"""Tests of contrastseg/augment/regions.py against a per-sample Python set search."""

import pytest
import torch

from contrastseg.augment.config import RotationConfig, ViewsConfig
from contrastseg.augment.regions import MatchedRegions, match_regions
from contrastseg.augment.views import PairedViews


def centres(boxes):
    """Pixel at the centre of each box: (row, col) = floor of the box midpoint."""
    col = torch.floor((boxes[..., 0] + boxes[..., 2]) / 2).long()
    row = torch.floor((boxes[..., 1] + boxes[..., 3]) / 2).long()
    return row, col


def value_at(index, row, col):
    b = torch.arange(index.shape[0])[:, None].expand_as(row)
    return index[b, row.clamp(0, index.shape[1] - 1), col.clamp(0, index.shape[2] - 1)]


def candidate_sets(index1, index2, size):
    """Oracle: per image, the set of source pixels whose window fits in both views."""
    half = size // 2
    out = []
    for i1, i2 in zip(index1.tolist(), index2.tolist(), strict=True):
        sets = []
        for idx in (i1, i2):
            h, w = len(idx), len(idx[0])
            sets.append(
                {
                    idx[r][c]
                    for r in range(half, h - size + half + 1)
                    for c in range(half, w - size + half + 1)
                    if idx[r][c] > 0
                }
            )
        out.append(sets[0] & sets[1])
    return out


def views(b=6, size=40, seed=0, rotation=True):
    cfg = ViewsConfig(size=size, rgb_bands=None)
    if rotation:
        cfg.t2.rotation = RotationConfig(p=1.0, degrees=(-60.0, 60.0))
    return PairedViews(cfg)(torch.rand(b, 3, 50, 56), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_valid_pairs_have_equal_centre_indices_and_windows_inside(seed):
    pair = views(seed=seed)
    size = 12
    regions = match_regions(pair.index1, pair.index2, 6, size, torch.Generator().manual_seed(seed))
    assert isinstance(regions, MatchedRegions)
    assert regions.boxes1.shape == (6, 6, 4) and regions.valid.shape == (6, 6)
    assert regions.boxes1.dtype == torch.float32 and regions.valid.dtype == torch.bool
    assert regions.valid.all()
    for boxes in (regions.boxes1, regions.boxes2):
        assert (boxes[..., 0] >= 0).all() and (boxes[..., 1] >= 0).all()
        assert (boxes[..., 2] <= 40).all() and (boxes[..., 3] <= 40).all()
        assert ((boxes[..., 2] - boxes[..., 0]) == size).all() and (
            (boxes[..., 3] - boxes[..., 1]) == size
        ).all()
    v1 = value_at(pair.index1, *centres(regions.boxes1))
    v2 = value_at(pair.index2, *centres(regions.boxes2))
    assert (v1 > 0).all() and torch.equal(v1, v2)
    oracle = candidate_sets(pair.index1, pair.index2, size)
    for i in range(6):
        chosen = v1[i].tolist()
        assert len(set(chosen)) == len(chosen)  # distinct per image
        assert set(chosen) <= oracle[i]


def test_number_of_valid_pairs_equals_the_candidate_count_when_few():
    # 9 x 9 windows in 14 x 14 views with rotation: 0 to 4 candidates per image.
    pair = views(b=8, size=14, seed=5)
    size, n = 9, 3
    regions = match_regions(pair.index1, pair.index2, n, size, torch.Generator().manual_seed(0))
    oracle = candidate_sets(pair.index1, pair.index2, size)
    counts = [len(s) for s in oracle]
    assert min(counts) == 0 and max(counts) > n  # the case covers none, some and more than n
    assert regions.valid.sum(1).tolist() == [min(n, c) for c in counts]
    v1 = value_at(pair.index1, *centres(regions.boxes1))
    for i in range(8):
        chosen = set(v1[i][regions.valid[i]].tolist())
        assert chosen == oracle[i] if counts[i] <= n else chosen < oracle[i]


def test_empty_overlap_gives_invalid_pairs():
    index1 = torch.arange(1, 33).view(1, 4, 8).repeat(2, 4, 2)  # (2, 16, 16), values 1..32
    index2 = index1 + 100  # no shared source pixel
    regions = match_regions(index1, index2, 4, 5, num_source_pixels=200)
    assert not regions.valid.any()
    assert torch.equal(regions.boxes1, torch.tensor([0.0, 0.0, 5.0, 5.0]).expand(2, 4, 4))


def test_one_shared_pixel_gives_one_valid_pair():
    index1 = torch.zeros(1, 9, 9, dtype=torch.long)
    index2 = torch.zeros(1, 9, 9, dtype=torch.long)
    index1[0, 4, 5] = 77
    index2[0, 3, 4] = 77
    index1[0, 0, 0] = 5  # shared, but a 3 x 3 window does not fit at the corner
    index2[0, 4, 4] = 5
    regions = match_regions(index1, index2, 3, 3)
    assert regions.valid.tolist() == [[True, False, False]]
    assert regions.boxes1[0, 0].tolist() == [4.0, 3.0, 7.0, 6.0]
    assert regions.boxes2[0, 0].tolist() == [3.0, 2.0, 6.0, 5.0]


def test_window_larger_than_the_view_and_more_regions_than_pixels():
    index = torch.arange(1, 17).view(1, 4, 4)
    assert not match_regions(index, index, 2, 5).valid.any()
    regions = match_regions(index, index, 40, 1)
    assert regions.valid.shape == (1, 40) and regions.valid.sum() == 16


def test_duplicated_source_pixels_count_once():
    # Upsampled views repeat source pixels; centres stay distinct source pixels.
    index1 = torch.arange(1, 17).view(4, 4).repeat_interleave(3, 0).repeat_interleave(3, 1)[None]
    regions = match_regions(index1, index1, 16, 3)
    v = value_at(index1, *centres(regions.boxes1))[0][regions.valid[0]]
    assert len(set(v.tolist())) == len(v) == 16


def test_reproducible_and_source_size_optional():
    pair = views(seed=4)
    a = match_regions(pair.index1, pair.index2, 4, 10, torch.Generator().manual_seed(1))
    b = match_regions(
        pair.index1, pair.index2, 4, 10, torch.Generator().manual_seed(1), num_source_pixels=50 * 56
    )
    c = match_regions(pair.index1, pair.index2, 4, 10, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.boxes1, c.boxes1)


def test_int32_index_maps_work():
    pair = views(b=2, seed=5)
    a = match_regions(pair.index1.int(), pair.index2.int(), 4, 8, torch.Generator().manual_seed(0))
    b = match_regions(pair.index1, pair.index2, 4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(a.boxes1, b.boxes1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"index1": torch.zeros(2, 4, 4)}, "index1"),
        ({"index2": torch.zeros(2, 4, dtype=torch.long)}, "index2"),
        ({"index2": torch.zeros(3, 4, 4, dtype=torch.long)}, "batch"),
        ({"num_regions": 0}, "num_regions"),
        ({"size": 2.5}, "size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {
        "index1": torch.zeros(2, 4, 4, dtype=torch.long),
        "index2": torch.zeros(2, 4, 4, dtype=torch.long),
        "num_regions": 2,
        "size": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        match_regions(**args)


def test_values_beyond_num_source_pixels_count_as_outside():
    index1 = torch.zeros(1, 5, 5, dtype=torch.long)
    index2 = torch.zeros(1, 5, 5, dtype=torch.long)
    index1[0, 2, 2] = index2[0, 2, 2] = 30  # beyond a 25-pixel source
    index1[0, 1, 1] = index2[0, 3, 3] = 25  # the last real source pixel
    regions = match_regions(index1, index2, 2, 1, num_source_pixels=25)
    assert regions.valid.tolist() == [[True, False]]
    assert regions.boxes1[0, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert regions.boxes2[0, 0].tolist() == [3.0, 3.0, 4.0, 4.0]


def test_draws_are_uniform_over_source_pixels_not_positions():
    # Five shared source pixels; pixel 1 fills four view-1 positions, the others one each.
    # Every unordered pair of distinct source pixels must be equally likely (1/10), so the
    # repeated pixel is no likelier than the rest (a draw over positions would favour it).
    row = torch.tensor([1, 1, 1, 1, 2, 3, 4, 5])
    index1 = row.view(1, 1, 8).expand(3000, 1, 8).contiguous()
    index2 = torch.tensor([5, 4, 3, 2, 1]).view(1, 1, 5).expand(3000, 1, 5).contiguous()
    regions = match_regions(index1, index2, 2, 1, torch.Generator().manual_seed(0))
    assert regions.valid.all()
    v1 = value_at(index1, *centres(regions.boxes1))
    v2 = value_at(index2, *centres(regions.boxes2))
    assert torch.equal(v1, v2) and (v1[:, 0] != v1[:, 1]).all()
    pairs = (v1.min(1).values * 10 + v1.max(1).values).tolist()
    counts = torch.tensor([pairs.count(a * 10 + b) for a in range(1, 6) for b in range(a + 1, 6)])
    expected = 3000 / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0, counts.tolist()  # 9 degrees of freedom: p < 1e-5 beyond 40
    # The first view-1 position of the repeated pixel is the one used.
    cols1 = centres(regions.boxes1)[1][v1 == 1]
    assert (cols1 == 0).all()


def test_valid_pairs_come_first_when_candidates_are_few():
    index = torch.tensor([[0, 7, 0, 9]]).view(1, 1, 4)
    regions = match_regions(index, index, 4, 1, torch.Generator().manual_seed(3))
    assert regions.valid.tolist() == [[True, True, False, False]]
    assert sorted(value_at(index, *centres(regions.boxes1))[0, :2].tolist()) == [7, 9]


def test_every_slot_is_uniform_over_the_candidates():
    # Ten shared source pixels in one row, four regions: each slot on its own must be
    # uniform over the ten (a user keeping boxes[:, :1] gets no bias toward the bottom-right).
    index = torch.arange(1, 11).view(1, 1, 10).expand(5000, 1, 10).contiguous()
    regions = match_regions(index, index, 4, 1, torch.Generator().manual_seed(0))
    assert regions.valid.all()
    values = value_at(index, *centres(regions.boxes1))
    for slot in range(4):
        counts = torch.bincount(values[:, slot], minlength=11)[1:].float()
        chi2 = float(((counts - 500.0) ** 2 / 500.0).sum())
        assert chi2 < 37.0, (slot, counts.tolist())  # 9 degrees of freedom: p < 1e-4 beyond 37


def test_empty_maps_need_no_source_size():
    empty = torch.zeros(2, 0, 5, dtype=torch.long)
    regions = match_regions(empty, empty, 3, 1)
    assert not regions.valid.any() and regions.boxes1.shape == (2, 3, 4)


def test_regions_are_never_centred_on_nodata_source_pixels():
    from contrastseg.augment.regions import drop_invalid_sources

    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 12, 12
    valid = torch.rand(b, h, w, generator=g) > 0.5
    index = torch.randint(0, h * w + 1, (b, 10, 10), generator=g)
    dropped = drop_invalid_sources(index, valid)
    for i in range(b):  # oracle: the rule entry by entry
        for v_in, v_out in zip(
            index[i].flatten().tolist(), dropped[i].flatten().tolist(), strict=True
        ):
            keep = v_in > 0 and bool(valid[i].flatten()[v_in - 1])
            assert v_out == (v_in if keep else 0)
    assert drop_invalid_sources(index, None) is index
    regions = match_regions(dropped, dropped.flip(-1), 6, 3, generator=g, num_source_pixels=h * w)
    assert regions.valid.any()
    row, col = centres(regions.boxes1)
    for i in range(b):
        for k in range(6):
            if regions.valid[i, k]:
                source = int(index[i, row[i, k], col[i, k]]) - 1
                assert source >= 0 and bool(valid[i].flatten()[source])
