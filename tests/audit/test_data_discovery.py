"""Audit: data discovery visits each folder once, and a bad pattern is one clear error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from contrastseg.data.files import find_images, pair_files
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
