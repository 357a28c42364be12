"""Audit: data discovery visits each folder once, and a bad pattern is one clear error."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from contrastseg.data import LabeledDataset, UnlabeledDataset, write_demo_dataset
from contrastseg.data.config import UnlabeledDataConfig
from contrastseg.data.files import find_images, pair_files
from contrastseg.data.readers import image_size
from contrastseg.train.finetune_config import load_finetune_config


def test_a_symlink_loop_is_visited_once(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    os.symlink(".", tmp_path / "sub")  # sub -> . : the same folder again, forever
    (tmp_path / "deeper").mkdir()
    os.symlink("..", tmp_path / "deeper" / "up")
    assert find_images([tmp_path], ["*.png"]) == [str(tmp_path / "a.png")]


def test_a_symlink_loop_in_a_labeled_dataset_pairs_each_file_once(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "k.png")
        os.symlink(".", tmp_path / folder / "loop")
    pairs = pair_files(tmp_path, "images", "masks", ["*.png"], ["*.png"])
    assert [p.key for p in pairs] == ["k"]


@pytest.mark.parametrize("key", ["image_regex", "mask_regex"])
def test_an_invalid_regex_is_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=rf"{key} '\(' is not a valid regular expression"):
        load_finetune_config(None, [f"data.{key}='('"])


def test_nan_pixels_without_nodata_are_found_when_indexed(tmp_path):
    image = np.ones((1, 40, 40), np.float32)
    image[0, 39, 39] = np.nan  # one pixel, far from where a patch would be drawn first
    (tmp_path / "u").mkdir()
    tifffile.imwrite(tmp_path / "u" / "scene.tif", image[0])
    with pytest.raises(ValueError, match=r"scene\.tif' has 1 NaN pixel\(s\) in window"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path / "u")], patch_size=8))
    root = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=1)
    floats = tifffile.imread(root / "images" / "val_002.tif").astype(np.float32)
    floats[..., 5, 5] = np.nan
    tifffile.imwrite(root / "images" / "val_002.tif", floats)
    config = load_finetune_config(None, [f"data.root={root}"]).data
    with pytest.raises(ValueError, match=r"val_002\.tif' has 1 NaN pixel"):
        LabeledDataset(config, "val")


def test_mixed_dtypes_are_refused_naming_a_file_of_each(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((16, 16), np.uint16))
    with pytest.raises(ValueError, match=r"different dtypes: uint16 \(e\.g\. .*b\.tif'\), uint8"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=8))


def test_a_decompression_bomb_is_refused_by_name(tmp_path):
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 40000, 40000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bomb\.png' declares more pixels than Pillow decodes"):
        image_size(path)
    with pytest.raises(ValueError, match=r"bomb\.png' declares more pixels"):
        UnlabeledDataset(UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=8))
