"""Non-overlapping region draws (``match_regions(overlap=False)``) against the official rule.

The oracle restates ``get_index`` of the official ``utils/data_for_self_GLCNet.py``: after
drawing source pixel ``a`` it removes every source pixel under the view-1 window
``label1[r - s//2 : r + s//2, c - s//2 : c + s//2]`` around ``a``'s position from the
candidates, unless fewer than 2 would remain; each draw is ``random.sample`` over the set
that remains.
"""

from __future__ import annotations

import numpy as np
import torch

from contrastseg.augment.config import ViewsConfig
from contrastseg.augment.regions import match_regions
from contrastseg.augment.views import PairedViews


def _centres(boxes: torch.Tensor, size: int) -> np.ndarray:
    """``(B, n, 2)`` view pixel (row, col) at the centre of each box."""
    return (boxes[..., [1, 0]].long() + size // 2).numpy()


def _window_ids(index: np.ndarray, centre: np.ndarray, size: int) -> set[int]:
    """The official window slice ``label1[r - s//2 : r + s//2, c - s//2 : c + s//2]``."""
    r, c, h = int(centre[0]), int(centre[1]), size // 2
    return set(index[r - h : r + h, c - h : c + h].reshape(-1).tolist())


def test_no_later_centre_lies_in_an_earlier_window_over_random_view_pairs() -> None:
    torch.manual_seed(0)
    views = PairedViews(ViewsConfig(size=48))
    generator = torch.Generator().manual_seed(1)
    size, n, checked = 8, 5, 0
    for _ in range(4):
        pair = views(torch.rand(32, 3, 64, 64), generator)
        regions = match_regions(
            pair.index1, pair.index2, n, size, generator=generator, overlap=False
        )
        c1, c2 = _centres(regions.boxes1, size), _centres(regions.boxes2, size)
        for b in range(pair.index1.shape[0]):
            idx1, idx2 = pair.index1[b].numpy(), pair.index2[b].numpy()
            valid = regions.valid[b].numpy()
            assert valid.all()  # 48 px views always hold 5 windows of 8 px apart
            removed: set[int] = set()
            for j in range(n):
                source = idx1[tuple(c1[b, j])]
                assert source > 0 and source == idx2[tuple(c2[b, j])]
                assert source not in removed, (b, j)
                removed |= _window_ids(idx1, c1[b, j], size)
                checked += 1
    assert checked == 4 * 32 * n


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_each_draw_is_uniform_over_what_remains() -> None:
    # Identity view maps 7 x 7, windows of 2: 36 candidate centres (rows and cols 1..6).
    b, side, size = 6000, 7, 2
    index = (torch.arange(side * side) + 1).view(1, side, side).repeat(b, 1, 1)
    generator = torch.Generator().manual_seed(3)
    regions = match_regions(index, index.clone(), 2, size, generator=generator, overlap=False)
    assert regions.valid.all()
    first, second = _centres(regions.boxes1, size)[:, 0], _centres(regions.boxes1, size)[:, 1]
    counts = np.bincount((first[:, 0] - 1) * 6 + first[:, 1] - 1, minlength=36)
    assert _chi2(counts) < 75.0  # 35 dof: p ~ 1e-4 beyond 67
    # Second draw: its rank among the candidates left by the official removal, per first draw.
    candidates = {(r, c) for r in range(1, 7) for c in range(1, 7)}
    ranks: dict[int, list[int]] = {}
    for f, s in zip(first, second, strict=True):
        hit = {(r, c) for r in (f[0] - 1, f[0]) for c in (f[1] - 1, f[1])}
        left = sorted(candidates - hit)
        assert tuple(s) in left
        ranks.setdefault(len(left), []).append(left.index(tuple(s)))
    total, dof = 0.0, 0
    for m, values in ranks.items():
        total += _chi2(np.bincount(values, minlength=m).astype(float))
        dof += m - 1
    # Wilson-Hilferty: chi2(dof) above dof * (1 - 2/(9 dof) + 4 * sqrt(2/(9 dof)))^3 has p < 1e-4.
    bound = dof * (1 - 2 / (9 * dof) + 4.0 * (2 / (9 * dof)) ** 0.5) ** 3
    assert total < bound, (total, dof)


def test_removal_that_would_leave_under_two_candidates_is_skipped() -> None:
    # 3 x 3 identity view, windows of 2: 4 candidates (rows/cols 1..2); the window of (2, 2)
    # holds all 4, so there the official rule keeps the set (we then drop the centre only).
    index = (torch.arange(9) + 1).view(1, 3, 3).repeat(300, 1, 1)
    regions = match_regions(index, index.clone(), 4, 2, overlap=False)
    centres = _centres(regions.boxes1, 2)
    candidates = {(1, 1), (1, 2), (2, 1), (2, 2)}
    skipped = 0
    for row, valid in zip(centres, regions.valid.numpy(), strict=True):
        left = set(candidates)
        for centre, ok in zip(map(tuple, row), valid, strict=True):
            if not ok:
                assert not left  # an invalid slot only when nothing is left
                break
            assert centre in left
            after = left - {
                (r, c) for r in (centre[0] - 1, centre[0]) for c in (centre[1] - 1, centre[1])
            }
            if len(after) > 1:
                left = after
            else:
                skipped += 1
                left = left - {centre}
    assert skipped > 0


def test_overlap_true_is_the_default_and_unchanged() -> None:
    index = (torch.arange(64) + 1).view(1, 8, 8).repeat(4, 1, 1)
    a = match_regions(index, index.clone(), 3, 2, generator=torch.Generator().manual_seed(0))
    b = match_regions(
        index, index.clone(), 3, 2, generator=torch.Generator().manual_seed(0), overlap=True
    )
    assert torch.equal(a.boxes1, b.boxes1) and torch.equal(a.valid, b.valid)
