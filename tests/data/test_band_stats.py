"""Band statistics (module: contrastseg/data/stats.py) against numpy over all pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from contrastseg.data.config import UnlabeledDataConfig
from contrastseg.data.stats import (
    compute_band_stats,
    load_stats_yaml,
    run_stats_command,
    write_stats_yaml,
)
from contrastseg.data.unlabeled import UnlabeledDataset


@pytest.fixture()
def images(tmp_path) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # Large offsets and small spread: a naive sum-of-squares in float32 would lose the variance.
    arrays = [
        (60000 + rng.normal(0, 3, (64, 96, 3))).astype(np.uint16),
        (60010 + rng.normal(0, 5, (64, 64, 3))).astype(np.uint16),
    ]
    for i, array in enumerate(arrays):
        tifffile.imwrite(tmp_path / f"{i}.tif", array, photometric="rgb")
    return arrays


def test_stats_match_numpy(tmp_path, images: list[np.ndarray]) -> None:
    config = UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32, sampling="grid")
    stats = compute_band_stats(config, max_samples=None)
    pixels = np.concatenate([a.reshape(-1, 3) for a in images]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0) / 65535.0, rtol=1e-10)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0) / 65535.0, rtol=1e-8)
    assert stats.count == len(pixels) and stats.scale == 65535.0 and stats.bands is None


def test_band_selection_and_sampling(tmp_path, images: list[np.ndarray]) -> None:
    ds = UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=48, bands=[2, 0]))
    stats = compute_band_stats(ds, max_samples=None, scale=1.0, window_size=20)
    pixels = np.concatenate([a.reshape(-1, 3)[:, [2, 0]] for a in images]).astype(np.float64)
    assert stats.bands == [2, 0] and stats.count == len(pixels)  # every pixel once
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.std, pixels.std(axis=0), rtol=1e-8)
    sampled = compute_band_stats(ds, max_samples=5, scale=1.0, seed=1, window_size=20)
    assert sampled.count < len(pixels)
    assert sampled == compute_band_stats(ds, max_samples=5, scale=1.0, seed=1, window_size=20)
    np.testing.assert_allclose(sampled.mean, pixels.mean(axis=0), atol=1.0)  # spread is 3-5


def test_yaml_round_trip_and_command(tmp_path, images: list[np.ndarray], capsys) -> None:
    out = tmp_path / "stats" / "bands.yaml"
    assert run_stats_command([str(tmp_path)], str(out), bands=None, max_samples=None) == 0
    printed = capsys.readouterr().out
    assert "2 image(s)" in printed and f"wrote {out}" in printed
    stats = load_stats_yaml(out)
    pixels = np.concatenate([a.reshape(-1, 3) for a in images]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=0) / 65535.0, rtol=1e-6)
    assert stats.scale == 65535.0
    write_stats_yaml(stats, tmp_path / "again.yaml")
    assert load_stats_yaml(tmp_path / "again.yaml") == stats
    (tmp_path / "bad.yaml").write_text("mean: [1, 2]\n")
    with pytest.raises(ValueError, match="needs mean and std"):
        load_stats_yaml(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="none"):
        load_stats_yaml(tmp_path / "none.yaml")


def test_nodata_and_nan_pixels_stay_out_of_the_statistics(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    array = rng.normal(100, 7, (40, 50, 2)).astype(np.float32)
    array[:, :10] = -9999.0  # a scene edge
    array[5, 20, 1] = np.nan
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(
        tagged, array, photometric="minisblack", planarconfig="contig",
        extratags=[(42113, "s", 0, "-9999", False)],
    )  # fmt: skip
    stats = compute_band_stats(UnlabeledDataConfig(roots=[str(tagged)]), None, window_size=16)
    valid = np.isfinite(array).all(-1) & ~(array == -9999.0).all(-1)
    expected = array[valid].astype(np.float64)  # oracle: numpy over the valid pixels
    np.testing.assert_allclose(stats.mean, expected.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats.std, expected.std(0), rtol=1e-7)
    assert stats.count == valid.sum() == 40 * 40 - 1
    # NaN in a file without a nodata value: an error naming the file and the pixels
    untagged = tmp_path / "untagged.tif"
    tifffile.imwrite(
        untagged, np.where(valid[..., None], array, np.nan).astype(np.float32),
        photometric="minisblack", planarconfig="contig",
    )  # fmt: skip
    assert run_stats_command([str(untagged)], nodata=-1.0) == 0
    capsys.readouterr()
    from contrastseg.cli import main

    assert main(["stats", str(untagged), "--window-size", "1000"]) == 2
    assert "untagged.tif' has 401 NaN pixel(s)" in capsys.readouterr().err
    assert main(["stats", str(untagged), "--max-samples", "-3"]) == 2
    assert "--max-samples must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mean: 0.5\nstd: [1.0]\n", r"'mean' in '.*s\.yaml': expected list\[float\], got 0\.5"),
        (
            "mean: [0.5, oops]\nstd: [1, 1]\n",
            r"'mean\[1\]' in '.*s\.yaml': expected float, got 'oops'",
        ),
        ("mean: [.nan]\nstd: [1]\n", r"'mean\[0\]' in '.*s\.yaml': expected a finite number"),
        ("mean: [1]\nstd: [0]\n", r"s\.yaml': 'std\[0\]' must be positive"),
        ("mean: [1]\nmean: [2]\nstd: [1]\n", r"s\.yaml: key 'mean' is given twice"),
    ],
)
def test_stats_files_are_validated_like_configs(tmp_path, text, message) -> None:
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_stats_yaml(tmp_path / "s.yaml")


def test_stats_files_accept_exponent_numbers(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("mean: [1e-4, 0.5]\nstd: [2E-1, 1]\n")
    assert load_stats_yaml(tmp_path / "s.yaml").mean == [1e-4, 0.5]
