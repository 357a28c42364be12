"""Splits by key patterns and label fractions drawn at patch level."""

from __future__ import annotations

import numpy as np
import pytest

from contrastseg.data.splits import assign_split, draw_label_fraction, read_id_list, write_id_list

IDS = [
    f"tile_{t}:{r}:{c}" for t in range(5) for r in range(0, 2560, 256) for c in range(0, 2560, 256)
]


def test_label_fraction_size_and_reproducibility() -> None:
    chosen = draw_label_fraction(IDS, 0.01, seed=3)
    assert len(chosen) == 5  # 1 % of 500 patches
    assert set(chosen) <= set(IDS) and chosen == sorted(chosen)
    assert (
        draw_label_fraction(list(reversed(IDS)), 0.01, seed=3) == chosen
    )  # listing order is irrelevant
    assert draw_label_fraction(IDS, 0.01, seed=4) != chosen
    assert draw_label_fraction(IDS, 1.0, seed=0) == sorted(IDS)
    assert len(draw_label_fraction(IDS, 1e-6, seed=0)) == 1  # never empty


def test_label_fraction_is_uniform() -> None:
    # Every patch equally likely: over many seeds each id is chosen ~ fraction of the time.
    ids = [f"p{i}" for i in range(20)]
    hits = np.zeros(20)
    for seed in range(2000):
        for pid in draw_label_fraction(ids, 0.25, seed):
            hits[int(pid[1:])] += 1
    np.testing.assert_allclose(hits / 2000, 0.25, atol=0.05)


def test_bad_fraction() -> None:
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="label fraction"):
            draw_label_fraction(IDS, bad, 0)


def test_id_list_round_trip(tmp_path) -> None:
    ids = ["Tile 1/image_part_001:0:0", "Tile 1/image_part_001:0:256"]
    path = write_id_list(tmp_path / "sub" / "ids.txt", ids, header="1 % of 2 patches\nseed 0")
    assert path.read_text().startswith("# 1 % of 2 patches\n# seed 0\n")
    assert read_id_list(path) == ids
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        read_id_list(tmp_path / "nothing.txt")


def test_assign_split() -> None:
    keys = ["top_potsdam_2_10", "top_potsdam_2_13", "top_potsdam_12_13", "top_potsdam_6_7"]
    assert assign_split(keys, "test", [], [], ["*_2_13"]) == ["top_potsdam_2_13"]
    assert assign_split(keys, "train", [], [], ["*_2_13"]) == [
        "top_potsdam_2_10",
        "top_potsdam_12_13",
        "top_potsdam_6_7",
    ]
    assert assign_split(keys, "train", ["*_6_7"], [], ["*_2_13"]) == ["top_potsdam_6_7"]
    assert assign_split(keys, "val", [], [], []) == []
    with pytest.raises(ValueError, match="several splits"):
        assign_split(keys, "train", ["*"], [], ["*_2_13"])
    with pytest.raises(ValueError, match="split must be"):
        assign_split(keys, "training", [], [], [])
