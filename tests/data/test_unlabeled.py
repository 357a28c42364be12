"""Unlabeled patches: right windows, reproducible epochs, small and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from contrastseg.data.config import DemoDataConfig, UnlabeledDataConfig
from contrastseg.data.demo import make_scene
from contrastseg.data.unlabeled import UnlabeledDataset, grid_positions


@pytest.fixture()
def folder(tmp_path: Path) -> dict[str, np.ndarray]:
    """Two uint16 4-band TIFFs (one tiled) and their arrays (C, H, W)."""
    rng = np.random.default_rng(0)
    arrays = {
        "a.tif": rng.integers(0, 65536, (4, 300, 260), dtype=np.uint16),
        "sub/b.tif": rng.integers(0, 65536, (4, 128, 400), dtype=np.uint16),
    }
    for name, array in arrays.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        tile = (64, 64) if name == "a.tif" else None
        tifffile.imwrite(
            tmp_path / name,
            np.moveaxis(array, 0, -1),
            tile=tile,
            photometric="minisblack",
            planarconfig="contig",
        )
    return {str(tmp_path / k): v for k, v in arrays.items()}


def test_grid_positions() -> None:
    assert grid_positions(10, 4, 4) == [0, 4, 6]
    assert grid_positions(8, 4, 4) == [0, 4]
    assert grid_positions(4, 4, 2) == [0]


def test_grid_patches_are_the_source_windows(folder: dict[str, np.ndarray], tmp_path: Path) -> None:
    ds = UnlabeledDataset(
        UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=128, sampling="grid")
    )
    # a: rows [0, 128, 172] x cols [0, 128, 132]; b: rows [0] x cols [0, 128, 256, 272]
    assert len(ds) == 9 + 4
    seen = set()
    for i in range(len(ds)):
        patch = ds[i]
        assert patch.shape == (4, 128, 128) and patch.dtype == torch.uint16
        src, win = ds.window(i)
        truth = folder[ds.sources[src].name][:, win.row : win.row + 128, win.col : win.col + 128]
        np.testing.assert_array_equal(patch.numpy(), truth)
        seen.add((src, win.row, win.col))
    assert len(seen) == len(ds)


def test_random_windows_reproducible_per_epoch(
    folder: dict[str, np.ndarray], tmp_path: Path
) -> None:
    config = UnlabeledDataConfig(
        roots=[str(tmp_path)], patch_size=64, coverage=2.0, bands=[3, 1], seed=7
    )
    ds = UnlabeledDataset(config)
    # Windows per image proportional to area: round(2 * 300 * 260 / 64**2), round(2 * 128 * 400 / 64**2).
    assert len(ds) == round(2 * 300 * 260 / 4096) + round(2 * 128 * 400 / 4096)
    epoch0 = [ds.window(i) for i in range(len(ds))]
    ds.set_epoch(1)
    epoch1 = [ds.window(i) for i in range(len(ds))]
    assert epoch0 != epoch1
    assert [w[0] for w in epoch0] == [w[0] for w in epoch1]  # same images, new positions
    ds.set_epoch(0)
    assert [ds.window(i) for i in range(len(ds))] == epoch0
    assert [w for w in epoch0] == [
        w for w in (UnlabeledDataset(config).window(i) for i in range(len(ds)))
    ]
    for i in (0, len(ds) - 1):
        src, win = ds.window(i)
        truth = folder[ds.sources[src].name][[3, 1], win.row : win.row + 64, win.col : win.col + 64]
        np.testing.assert_array_equal(ds[i].numpy(), truth)


def test_random_windows_cover_the_image(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    ds = UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=10, coverage=50))
    starts = np.array([ds.window(i)[1][:2] for i in range(len(ds))])
    assert starts.min() == 0 and starts.max() == 90  # every valid start is reachable, none beyond


def test_too_small_images(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 120, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((50, 300, 3), dtype=np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(
        ValueError, match=r"1 image\(s\) are smaller than patch_size 64: .*thin.png' \(50 x 300\)"
    ):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=64))
    with pytest.warns(UserWarning, match="skipped 1 smaller than the patch"):
        ds = UnlabeledDataset(
            UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=64, too_small="skip")
        )
    assert [Path(s.name).name for s in ds.sources] == ["big.png"]
    assert [Path(n).name for n in ds.skipped_small] == ["thin.png"]


def test_bad_files_error_or_skip(tmp_path: Path) -> None:
    Image.fromarray(np.full((64, 64, 3), 9, dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"broken\.png"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable"):
        ds = UnlabeledDataset(
            UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32, skip_bad_files=True)
        )
    assert len(ds.sources) == 1 and (ds[0] == 9).all()


def test_band_count_mismatch_and_bad_band(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match=r"different band counts \[1, 3\]"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32))
    with pytest.raises(ValueError, match=r"gray\.png' has 1 band"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32, bands=[2]))
    ds = UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=32, bands=[0]))
    assert ds[0].shape == (1, 32, 32)


def test_demo_scenes_when_no_roots() -> None:
    config = UnlabeledDataConfig(
        patch_size=64, sampling="grid", demo=DemoDataConfig(n_scenes=2, size=128, bands=5, seed=3)
    )
    ds = UnlabeledDataset(config)
    assert len(ds) == 2 * 4 and ds.num_bands == 5
    image, _ = make_scene(128, 5, seed=3 * 100003 + 1)
    src, win = ds.window(7)
    assert ds.sources[src].name == "demo:train_001" and win[:2] == (64, 64)
    np.testing.assert_array_equal(ds[7].numpy(), image[:, 64:, 64:])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        UnlabeledDataConfig(patch_size=0)
    with pytest.raises(ValueError, match="sampling"):
        UnlabeledDataConfig(sampling="sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coverage"):
        UnlabeledDataConfig(coverage=0)
    with pytest.raises(ValueError, match="bands"):
        UnlabeledDataConfig(bands=[-1])
    with pytest.raises(ValueError, match=r"demo\.size"):
        UnlabeledDataConfig(demo={"size": 8})  # type: ignore[arg-type]


def test_mostly_nodata_patches_are_skipped_and_nan_needs_a_nodata_value(tmp_path: Path) -> None:
    array = np.full((2, 64, 64), 7, dtype=np.uint16)
    array[:, :, :48] = 0  # three quarters of the scene are nodata (0 in every band)
    array[0, 0, 50] = 0  # one band only: a real value
    tifffile.imwrite(tmp_path / "edge.tif", array, photometric="minisblack", planarconfig="separate",
                     extratags=[(42113, "s", 0, "0", False)])  # fmt: skip
    data = UnlabeledDataset(
        UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=16, sampling="grid")
    )
    assert data.nodata == 0.0 and len(data) == 16
    items = [data[i] for i in range(len(data))]

    def window(j):  # grid window j of 16 px, row-major over a 4 x 4 grid
        row, col = (j // 4) * 16, (j % 4) * 16
        return array[:, row : row + 16, col : col + 16]

    # every returned patch is the first grid window at or after its index with >= half valid
    for index, item in enumerate(items):
        j = index
        while (window(j) != 0).any(0).mean() < 0.5:
            j = (j + 1) % 16
        assert torch.equal(item, torch.from_numpy(window(j).copy()))
    assert data.skipped_nodata > 0
    floats = np.ones((1, 32, 32), dtype=np.float32)
    floats[0, 3, 4:9] = np.nan
    (tmp_path / "nan").mkdir()
    tifffile.imwrite(tmp_path / "nan" / "f.tif", floats[0])
    with pytest.raises(ValueError, match=r"f\.tif' has 5 NaN pixel\(s\) in window"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path / "nan")], patch_size=32))
    declared = UnlabeledDataset(
        UnlabeledDataConfig(roots=[str(tmp_path / "nan")], patch_size=32, nodata=float("nan"))
    )
    assert int(torch.isnan(declared[0]).sum()) == 5
