"""Finding images and pairing them with masks (module: contrastseg/data/files.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastseg.data.files import find_images, pair_files


def _touch_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)


def test_find_images_recursive_case_insensitive(tmp_path: Path) -> None:
    for name in ["a/x.PNG", "a/b/y.tif", "c.jpg", ".hidden/z.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path], ["*.png", "*.tif", "*.jpg"])
    assert [Path(f).relative_to(tmp_path).as_posix() for f in found] == [
        "a/b/y.tif",
        "a/x.PNG",
        "c.jpg",
    ]
    excluded = find_images([tmp_path], ["*.png", "*.tif", "*.jpg"], exclude=["a/b/*"])
    assert [Path(f).relative_to(tmp_path).as_posix() for f in excluded] == ["a/x.PNG", "c.jpg"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "nope"], ["*.png"])
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_images([tmp_path / "a"], ["*.bmp"])


def test_parallel_folders_at_any_depth(tmp_path: Path) -> None:
    for tile in ("Tile 1", "Tile 2"):
        for part in ("p1", "p2"):
            _touch_png(tmp_path / tile / "images" / f"{part}.png")
            _touch_png(tmp_path / tile / "masks" / f"{part}.png")
    pairs = pair_files(tmp_path, "images", "masks", ["*.png"], ["*.png"])
    assert [p.key for p in pairs] == ["Tile 1/p1", "Tile 1/p2", "Tile 2/p1", "Tile 2/p2"]
    assert all(
        Path(p.image).parent.name == "images" and Path(p.mask).parent.name == "masks" for p in pairs
    )
    assert all(Path(p.image).parts[-3] == Path(p.mask).parts[-3] for p in pairs)


def test_suffix_rule(tmp_path: Path) -> None:
    for tile in ("2_10", "6_7"):
        _touch_png(tmp_path / "4_Ortho_RGBIR" / f"top_potsdam_{tile}_RGBIR.png")
        _touch_png(tmp_path / "5_Labels" / f"top_potsdam_{tile}_label.png")
    pairs = pair_files(
        tmp_path, "4_Ortho_RGBIR", "5_Labels", ["*.png"], ["*.png"], "_RGBIR", "_label"
    )
    assert [p.key for p in pairs] == ["top_potsdam_2_10", "top_potsdam_6_7"]


def test_regex_rule(tmp_path: Path) -> None:
    _touch_png(tmp_path / "img" / "scene-004_rgb.png")
    _touch_png(tmp_path / "lab" / "gt_004.png")
    pairs = pair_files(
        tmp_path,
        "img",
        "lab",
        ["*.png"],
        ["*.png"],
        image_regex=r"scene-(\d+)",
        mask_regex=r"gt_(?P<key>\d+)",
    )
    assert [(p.key, Path(p.image).name, Path(p.mask).name) for p in pairs] == [
        ("004", "scene-004_rgb.png", "gt_004.png")
    ]


def test_unpaired_files_are_listed(tmp_path: Path) -> None:
    _touch_png(tmp_path / "images" / "a.png")
    _touch_png(tmp_path / "images" / "b.png")
    _touch_png(tmp_path / "masks" / "a.png")
    _touch_png(tmp_path / "masks" / "c.png")
    with pytest.raises(
        ValueError,
        match=r"1 image\(s\) without a mask: \[.*b\.png'\]; 1 mask\(s\) without an image: \[.*c\.png'\]",
    ):
        pair_files(tmp_path, "images", "masks", ["*.png"], ["*.png"])
    with pytest.raises(FileNotFoundError, match="no masks"):
        pair_files(tmp_path, "images", "labels", ["*.png"], ["*.png"])
