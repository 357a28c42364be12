"""Readers against independent decoders: Pillow for PNG/JPEG, tifffile.imread for TIFF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from contrastseg.data.readers import clear_reader_cache, image_size, read_image, tiff_layout

# GeoTIFF tags (pixel scale, tie point, a minimal GeoKey directory), as a GIS would write.
GEO_TAGS = [
    (33550, "d", 3, (0.5, 0.5, 0.0), False),
    (33922, "d", 6, (0.0, 0.0, 0.0, 350000.0, 5800000.0, 0.0), False),
    (34735, "H", 8, (1, 1, 0, 1, 3072, 0, 1, 32633), False),
]


@pytest.fixture(scope="module")
def big_tiled(module_tmp: Path) -> tuple[str, np.ndarray]:
    """A 2000 x 2000 x 4 uint8 tiled, deflate-compressed TIFF (written once per module)."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (2000, 2000, 4), dtype=np.uint8)
    path = module_tmp / "big_tiled.tif"
    tifffile.imwrite(
        path,
        array,
        tile=(256, 256),
        compression="zlib",
        photometric="minisblack",
        planarconfig="contig",
    )
    return str(path), np.moveaxis(array, -1, 0)


def test_tiled_windows_match_full_read(big_tiled: tuple[str, np.ndarray]) -> None:
    path, expected = big_tiled
    assert tiff_layout(path) == "segments"
    assert image_size(path) == (2000, 2000, 4)
    full = tifffile.imread(path)  # independent full decode, (H, W, C)
    np.testing.assert_array_equal(np.moveaxis(full, -1, 0), expected)
    for row, col, h, w in [
        (0, 0, 224, 224),
        (255, 255, 2, 2),
        (1000, 37, 224, 300),
        (1776, 1776, 224, 224),
        (0, 0, 2000, 2000),
    ]:
        window = read_image(path, (row, col, h, w))
        assert window.shape == (4, h, w) and window.dtype == np.uint8
        np.testing.assert_array_equal(window, expected[:, row : row + h, col : col + w])


def test_band_selection_and_order(big_tiled: tuple[str, np.ndarray]) -> None:
    path, expected = big_tiled
    window = read_image(path, (100, 200, 64, 32), bands=[3, 0])
    np.testing.assert_array_equal(window, expected[[3, 0], 100:164, 200:232])


@pytest.mark.parametrize(
    "kwargs, layout",
    [
        ({"planarconfig": "separate", "photometric": "minisblack", "tile": (64, 64)}, "segments"),
        ({"planarconfig": "separate", "photometric": "minisblack"}, "memmap"),
        ({"planarconfig": "contig", "photometric": "minisblack"}, "memmap"),
        (
            {
                "planarconfig": "contig",
                "photometric": "minisblack",
                "rowsperstrip": 16,
                "compression": "zlib",
            },
            "segments",
        ),
        (
            {
                "planarconfig": "separate",
                "photometric": "minisblack",
                "rowsperstrip": 7,
                "compression": "zlib",
            },
            "segments",
        ),
    ],
)
def test_uint16_geotiff_layouts(tmp_path, kwargs: dict, layout: str) -> None:
    rng = np.random.default_rng(1)
    bands = rng.integers(0, 65536, (4, 150, 170), dtype=np.uint16)
    data = bands if kwargs["planarconfig"] == "separate" else np.moveaxis(bands, 0, -1)
    path = tmp_path / "geo.tif"
    tifffile.imwrite(path, data, extratags=GEO_TAGS, **kwargs)
    assert tiff_layout(path) == layout
    assert image_size(path) == (150, 170, 4)
    whole = read_image(path)
    assert whole.dtype == np.uint16
    np.testing.assert_array_equal(whole, bands)
    np.testing.assert_array_equal(read_image(path, (33, 61, 50, 70)), bands[:, 33:83, 61:131])
    np.testing.assert_array_equal(
        read_image(path, (149, 0, 1, 170), bands=[2]), bands[2:3, 149:150]
    )
    clear_reader_cache()


def test_big_endian_tiff_is_returned_native(tmp_path) -> None:
    array = np.arange(2 * 40 * 30, dtype=np.uint16).reshape(40, 30, 2)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, array, byteorder=">", photometric="minisblack", planarconfig="contig")
    out = read_image(path, (5, 6, 10, 11))
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, np.moveaxis(array, -1, 0)[:, 5:15, 6:17])


def test_png_rgb_and_gray(tmp_path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert image_size(tmp_path / "a.png") == (60, 80, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(
        read_image(tmp_path / "a.png", (10, 20, 5, 7), bands=[2, 1]),
        np.moveaxis(rgb, -1, 0)[[2, 1], 10:15, 20:27],
    )
    gray16 = rng.integers(0, 65536, (30, 20), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (1, 30, 20) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], gray16)


def test_jpeg_matches_pillow_decode(tmp_path) -> None:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        tmp_path / "a.jpg", quality=90
    )
    with Image.open(tmp_path / "a.jpg") as img:
        expected = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)
    np.testing.assert_array_equal(
        read_image(tmp_path / "a.jpg", (8, 16, 16, 32)), expected[:, 8:24, 16:48]
    )


def test_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"corrupt\.tif"):
        image_size(tmp_path / "corrupt.tif")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"corrupt\.png"):
        read_image(tmp_path / "corrupt.png")
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match=r"outside image .*ok.png"):
        read_image(tmp_path / "ok.png", (5, 5, 6, 2))
    with pytest.raises(ValueError, match=r"band\(s\) \[3\].*ok.png"):
        read_image(tmp_path / "ok.png", bands=[0, 3])


def test_truncated_tiff_data_names_the_file(tmp_path) -> None:
    array = np.random.default_rng(4).integers(0, 256, (256, 256), dtype=np.uint8)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, array, tile=(64, 64), compression="zlib")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
    data[offset : offset + 20] = b"\xff" * 20  # break one deflate stream
    path.write_bytes(bytes(data))
    clear_reader_cache()
    with pytest.raises(ValueError, match=r"cut\.tif"):
        read_image(path, (64, 64, 64, 64))


def test_missing_codec_is_reported_with_the_file(tmp_path) -> None:
    # An LZW-compressed TIFF needs imagecodecs; without it the error names file and package.
    if importlib.util.find_spec("imagecodecs") is not None:
        pytest.skip("imagecodecs is installed, LZW decodes")
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.zeros((32, 32), dtype=np.uint8), compression="zlib")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset = tag.valueoffset
    data[offset : offset + 2] = (5).to_bytes(2, "little")  # claim LZW
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"lzw\.tif.*imagecodecs"):
        read_image(path)


def test_the_gdal_nodata_tag_is_read_as_a_number(tmp_path) -> None:
    from contrastseg.data.readers import image_nodata

    array = np.zeros((8, 8), dtype=np.float32)
    tagged = tmp_path / "tagged.tif"
    tifffile.imwrite(tagged, array, extratags=[(42113, "s", 0, "-9999", False)])
    assert image_nodata(tagged) == -9999.0
    nan_tagged = tmp_path / "nan.tif"
    tifffile.imwrite(nan_tagged, array, extratags=[(42113, "s", 0, "nan", False)])
    assert np.isnan(image_nodata(nan_tagged))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, array)
    assert image_nodata(plain) is None
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(png)
    assert image_nodata(png) is None
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, array, extratags=[(42113, "s", 0, "none", False)])
    with pytest.raises(ValueError, match=r"bad\.tif.*GDAL_NODATA tag 42113 holds 'none'"):
        image_nodata(bad)
    assert read_image(bad).shape == (1, 8, 8)  # the pixels stay readable
