"""Labeled patches and whole images from files written here, and from the real Dubai tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from contrastseg.data.config import DemoDataConfig, LabeledDataConfig
from contrastseg.data.demo import make_scene, write_demo_dataset
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.splits import read_id_list

DUBAI = Path(__file__).resolve().parents[3] / "shared" / "data" / "dubai-aerial"
DUBAI_COLOURS = {  # from the dataset's README; grey and black are ignored
    (0x3C, 0x10, 0x98): 0, (0x84, 0x29, 0xF6): 1, (0x6E, 0xC1, 0xE4): 2,
    (0xFE, 0xDD, 0x3A): 3, (0xE2, 0xA9, 0x29): 4, (0x9B, 0x9B, 0x9B): 255, (0, 0, 0): 255,
}  # fmt: skip


@pytest.fixture(scope="module")
def demo_root(module_tmp: Path) -> Path:
    root = module_tmp
    write_demo_dataset(root, n_scenes=8, size=160, bands=4, seed=1, mask_format="rgb")
    return root


def _scene(key: str) -> tuple[np.ndarray, np.ndarray]:
    return make_scene(160, 4, seed=1 * 100003 + int(key.split("_")[1]))


def test_training_patches_match_the_scenes(demo_root: Path) -> None:
    ds = LabeledDataset(LabeledDataConfig(preset="demo", root=str(demo_root), patch_size=64))
    assert [it.key for it in ds.items] == [f"train_{i:03d}" for i in range(6)]
    assert len(ds) == 6 * 9  # rows/cols at 0, 64, 96
    assert ds.classes[1] == "building" and ds.palette[1] == "#0000FF" and ds.ignore_index == 255
    for index in (0, 13, len(ds) - 1):
        image, mask = ds[index]
        assert image.shape == (4, 64, 64) and image.dtype == torch.uint8
        assert mask.shape == (64, 64) and mask.dtype == torch.int64
        i, win = ds.windows[index]
        truth_image, truth_labels = _scene(ds.items[i].key)
        rows, cols = slice(win.row, win.row + 64), slice(win.col, win.col + 64)
        np.testing.assert_array_equal(image.numpy(), truth_image[:, rows, cols])
        np.testing.assert_array_equal(
            mask.numpy(), truth_labels[rows, cols]
        )  # RGB -> ids round trip


def test_whole_images_for_evaluation(demo_root: Path) -> None:
    ds = LabeledDataset(LabeledDataConfig(preset="demo", root=str(demo_root)), split="test")
    assert ds.whole_images and len(ds) == 1
    image, mask = ds[0]
    truth_image, truth_labels = _scene("test_007")
    np.testing.assert_array_equal(image.numpy(), truth_image)
    np.testing.assert_array_equal(mask.numpy(), truth_labels)


def test_in_memory_demo_preset() -> None:
    config = LabeledDataConfig(
        preset="demo", patch_size=64, demo=DemoDataConfig(n_scenes=3, size=96, seed=4)
    )
    ds = LabeledDataset(config, split="val")
    image, mask = ds[0]
    truth_image, truth_labels = make_scene(96, 4, seed=4 * 100003 + 1)
    np.testing.assert_array_equal(image.numpy(), truth_image)
    np.testing.assert_array_equal(mask.numpy(), truth_labels)


def test_label_fraction_written_and_reused(demo_root: Path, tmp_path: Path) -> None:
    lists = tmp_path / "fraction.txt"
    config = LabeledDataConfig(
        preset="demo",
        root=str(demo_root),
        patch_size=32,
        label_fraction=0.1,
        label_list=str(lists),
        seed=3,
    )
    first = LabeledDataset(config)
    assert len(first) == round(0.1 * 6 * 25)
    assert read_id_list(lists) == sorted(first.patch_ids)
    again = LabeledDataset(config)  # reads the list back
    assert again.patch_ids == first.patch_ids
    image, _ = first[0]
    key, row, col = first.patch_ids[0].split(":")
    truth_image, _ = _scene(key)
    np.testing.assert_array_equal(
        image.numpy(), truth_image[:, int(row) : int(row) + 32, int(col) : int(col) + 32]
    )
    lists.write_text("train_000:5:5\n")
    with pytest.raises(ValueError, match="does not have"):
        LabeledDataset(config)


def test_small_images_are_padded_with_ignore(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "images" / "s.png")
    Image.fromarray(np.ones((20, 30), dtype=np.uint8)).save(tmp_path / "masks" / "s.png")
    ds = LabeledDataset(LabeledDataConfig(root=str(tmp_path), classes=["a", "b"], patch_size=32))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    np.testing.assert_array_equal(x[:, :20, :30].numpy(), np.moveaxis(image, -1, 0))
    assert (
        (x[:, 20:] == 0).all()
        and (y[20:] == 255).all()
        and (y[:, 30:] == 255).all()
        and (y[:20, :30] == 1).all()
    )


def test_unknown_colour_names_file_colour_and_count(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(
        tmp_path / "images" / "t.tif",
        np.zeros((16, 16, 4), dtype=np.uint16),
        photometric="minisblack",
        planarconfig="contig",
    )
    mask = np.zeros((16, 16, 3), dtype=np.uint8)
    mask[:2, :3] = (1, 2, 3)
    Image.fromarray(mask).save(tmp_path / "masks" / "t.png")
    config = LabeledDataConfig(root=str(tmp_path), palette=["#000000", "#FFFFFF"], test=["*"])
    # found when the dataset is built, before any patch is drawn
    with pytest.raises(
        ValueError, match=r"t\.png.*6 pixel\(s\) have colours outside the palette: #010203 \(6 px\)"
    ):
        LabeledDataset(config, split="test")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "masks" / "t.png")
    image, mask = LabeledDataset(config, split="test")[0]
    assert image.dtype == torch.uint16 and image.shape == (4, 16, 16) and (mask == 0).all()


def test_errors_for_pairs_and_splits(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((16, 17), dtype=np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    config = LabeledDataConfig(root=str(tmp_path), classes=["x"])
    with pytest.raises(ValueError, match=r"image without a mask|without a mask: \[.*b\.png"):
        LabeledDataset(config)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"a\.png' is 16 x 16 but its mask .*a\.png' is 16 x 17"):
        LabeledDataset(config)
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match="split 'val' is empty"):
        LabeledDataset(config, split="val")
    with pytest.raises(ValueError, match="classes"):
        LabeledDataset(LabeledDataConfig(root=str(tmp_path)))


@pytest.mark.skipif(not DUBAI.is_dir(), reason="real Dubai tiles not present")
def test_real_dubai_tiles() -> None:
    config = LabeledDataConfig(preset="dubai", root=str(DUBAI), patch_size=256)
    train, test = LabeledDataset(config), LabeledDataset(config, split="test")
    assert len(train.items) == 63 and len(test.items) == 9
    assert {it.key.split("/")[0] for it in test.items} == {"Tile 8"}
    assert "Tile 8" not in {it.key.split("/")[0] for it in train.items}
    assert train.classes == ["building", "land", "road", "vegetation", "water"]
    # Whole images: one with a palette ("P" mode) mask and one RGB mask, against a dict lookup.
    for key in ("Tile 2/image_part_006", "Tile 8/image_part_009"):
        ds = (
            test
            if key.startswith("Tile 8")
            else LabeledDataset(config, split="train", whole_images=True)
        )
        index = [it.key for it in ds.items].index(key)
        image, mask = ds[index]
        tile, part = key.split("/")
        with Image.open(DUBAI / tile / "images" / f"{part}.jpg") as img:
            truth_image = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)
        with Image.open(DUBAI / tile / "masks" / f"{part}.png") as img:
            rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
        codes = (rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2]
        values, inverse = np.unique(codes, return_inverse=True)
        lookup = {(r << 16) | (g << 8) | b: label for (r, g, b), label in DUBAI_COLOURS.items()}
        truth_mask = np.array([lookup[int(v)] for v in values])[inverse.ravel()]
        np.testing.assert_array_equal(image.numpy(), truth_image)
        np.testing.assert_array_equal(mask.numpy().ravel(), truth_mask)
    # A training patch is the matching window of the whole image.
    patch_image, patch_mask = train[5]
    i, win = train.windows[5]
    whole = LabeledDataset(config, split="train", whole_images=True)[i]
    rows, cols = slice(win.row, win.row + 256), slice(win.col, win.col + 256)
    assert torch.equal(patch_image, whole[0][:, rows, cols]) and torch.equal(
        patch_mask, whole[1][rows, cols]
    )


def test_index_masks_and_png_images(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, n_scenes=3, size=64, bands=3, seed=2, image_format="png")
    ds = LabeledDataset(LabeledDataConfig(preset="demo", root=str(tmp_path)), split="val")
    image, mask = ds[0]
    truth_image, truth_labels = make_scene(64, 3, seed=2 * 100003 + 1)
    np.testing.assert_array_equal(image.numpy(), truth_image)
    np.testing.assert_array_equal(mask.numpy(), truth_labels)  # 8-bit index PNG, read as ids
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(tmp_path / "masks" / "val_001.png")
    with pytest.raises(
        ValueError, match=r"val_001\.png.*values outside classes 0..5.*9 \(4096 px\)"
    ):
        LabeledDataset(LabeledDataConfig(preset="demo", root=str(tmp_path)), split="val")[0]


def test_nodata_image_pixels_get_ignore_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = rng.random((3, 32, 32), dtype=np.float32)
    image[:, :, :8] = -1.0  # nodata edge
    image[1, 20, 20] = np.nan  # a NaN pixel, missing as well
    mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", image, photometric="minisblack",
                     planarconfig="separate", extratags=[(42113, "s", 0, "-1", False)])  # fmt: skip
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    config = LabeledDataConfig(root=str(tmp_path), classes=["a", "b", "c"], mask_format="index",
                               train=["*"], patch_size=32)  # fmt: skip
    x, y = LabeledDataset(config, "train")[0]
    missing = (image == -1.0).all(0) | ~np.isfinite(image).all(0)  # oracle
    expected = np.where(missing, 255, mask).astype(np.int64)
    np.testing.assert_array_equal(y.numpy(), expected)
    assert torch.isnan(x).all(0).numpy().tolist() == missing.tolist()
    from contrastseg.data.loader import to_float

    assert torch.isfinite(to_float(x[None], None, [0.5] * 3, [0.2] * 3)).all()


def test_masks_are_checked_once_at_construction_and_the_check_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "images" / f"t{i}.tif", np.zeros((64, 64), dtype=np.uint8))
        mask = np.zeros((64, 64, 3), dtype=np.uint8)
        mask[40:, 40:] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"t{i}.png")
    bad = np.zeros((64, 64, 3), dtype=np.uint8)
    bad[60, 63] = (9, 9, 9)  # one pixel in the last patch of the grid
    Image.fromarray(bad).save(tmp_path / "masks" / "t2.png")
    config = LabeledDataConfig(root=str(tmp_path), palette=["#000000", "#FFFFFF"], train=["*"],
                               patch_size=16, label_fraction=0.1)  # fmt: skip
    with pytest.raises(ValueError, match=r"mask '.*t2\.png'.*1 pixel\(s\).*#090909"):
        LabeledDataset(config, split="train")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "masks" / "t2.png")
    calls = []
    original = LabeledDataset.labels
    monkeypatch.setattr(
        LabeledDataset, "labels", lambda self, m, s: calls.append(s) or original(self, m, s)
    )
    LabeledDataset(config, split="train")
    assert [Path(c.split("'")[1]).name for c in calls] == ["t2.png"]  # t0, t1 passed before
    LabeledDataset(config, split="train")
    assert len(calls) == 1  # nothing changed: nothing read again
