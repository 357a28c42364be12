"""Image readers: PNG/JPEG through Pillow, TIFF/GeoTIFF through tifffile, with windowed reads.

Every reader returns band-first arrays ``(C, h, w)`` in the file's own dtype (uint8, uint16,
int16, float32, ...). Scaling to float happens later, on the device (:func:`to_float`).

Big TIFFs are read window by window without decoding the whole image where the layout
allows it:

- uncompressed, contiguous pixel data is memory-mapped and sliced (only the touched pages
  are read from disk);
- tiled or striped files (compressed or not) decode only the tiles/strips that overlap the
  window, through tifffile's per-segment decoder (``TiffPage.decode``);
- anything else (PNG, JPEG, odd TIFF layouts) is decoded whole and cropped.

Open TIFF handles are cached per process (a few files), so reading many windows from one
6000 x 6000 tile costs one header parse. The cache is keyed by process id, so DataLoader
workers never share a file handle inherited from the parent.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES

#: TIFF tag in which GDAL stores a file's nodata value, as ASCII text.
GDAL_NODATA_TAG = 42113

#: Open TIFF readers kept per process; big enough for a few tiles read in turn.
_CACHE_SIZE = 8


class Window(NamedTuple):
    """A pixel window: top row, left column, height, width."""

    row: int
    col: int
    height: int
    width: int


class ImageSize(NamedTuple):
    """Image size without decoding: height, width, number of bands."""

    height: int
    width: int
    bands: int


def _bad_file(path: str | os.PathLike[str], err: BaseException) -> ValueError:
    hint = ""
    if "imagecodecs" in str(err):  # LZW, JPEG, LERC... TIFF compressions need imagecodecs
        hint = " (pip install imagecodecs adds the codecs tifffile needs for this file)"
    return ValueError(f"cannot read image file {str(path)!r}: {type(err).__name__}: {err}{hint}")


def _parse_nodata(path: str, tag: tifffile.TiffTag | None) -> float | None:
    """The GDAL_NODATA tag's value (an ASCII number such as ``-9999`` or ``nan``), or None."""
    if tag is None:
        return None
    text = str(tag.value).strip().strip("\x00").strip()
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{path!r}: GDAL_NODATA tag {GDAL_NODATA_TAG} holds {text!r}, expected a number"
        ) from None


def _is_tiff(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(TIFF_SUFFIXES)


class _TiffReader:
    """An open TIFF file (first page) that reads windows as ``(C, h, w)`` arrays."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tif = tifffile.TiffFile(path)
        page = self.tif.pages.first
        if not isinstance(page, tifffile.TiffPage):
            raise ValueError(f"first page of {path!r} is not a plain TIFF page")
        if page.imagedepth != 1:
            raise ValueError(
                f"{path!r}: volumetric TIFF (depth {page.imagedepth}) is not supported"
            )
        self.page = page
        self.height = int(page.imagelength)
        self.width = int(page.imagewidth)
        self.bands = int(page.samplesperpixel)
        # Normalised shape: (separate samples, depth, length, width, contiguous samples).
        self.shaped = tuple(int(s) for s in page.shaped)
        self.dtype = np.dtype(self.tif.byteorder + page.dtype.char)
        # parsed when asked for: a malformed tag does not make the pixels unreadable
        self.nodata_tag = page.tags.get(GDAL_NODATA_TAG)
        self.lock = threading.Lock()
        self._memmap: np.ndarray | None = None
        if page.is_memmappable and page.dataoffsets:
            self._memmap = np.memmap(
                path, dtype=self.dtype, mode="r", offset=page.dataoffsets[0], shape=self.shaped
            )
        self.segmented = page.compression != 1 or page.is_tiled or len(page.dataoffsets) > 1
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = (
                min(int(page.rowsperstrip) or self.height, self.height),
                self.width,
            )

    @property
    def layout(self) -> str:
        """How windows are read: ``memmap``, ``segments`` or ``full``."""
        if self._memmap is not None:
            return "memmap"
        return "segments" if self.segmented else "full"

    def close(self) -> None:
        self._memmap = None
        self.tif.close()

    def read(self, window: Window) -> np.ndarray:
        row, col, h, w = window
        if self._memmap is not None:
            block = np.asarray(self._memmap[:, 0, row : row + h, col : col + w, :])
        elif self.segmented:
            block = self._read_segments(window)
        else:
            full = self.page.asarray().reshape(self.shaped)
            block = full[:, 0, row : row + h, col : col + w, :]
        # (S, h, w, cs) -> (S * cs, h, w): one of S and cs is 1 (planar vs interleaved).
        s, bh, bw, cs = block.shape
        return np.moveaxis(block, 3, 1).reshape(s * cs, bh, bw)

    def _read_segments(self, window: Window) -> np.ndarray:
        row, col, h, w = window
        page = self.page
        seg_h, seg_w = self.seg_h, self.seg_w
        n_rows = -(-self.height // seg_h)
        n_cols = -(-self.width // seg_w)
        separate = self.shaped[0]
        per_plane = n_rows * n_cols
        out = np.zeros((separate, h, w, self.shaped[4]), dtype=self.dtype)
        decode = page.decode
        fh = self.tif.filehandle
        for s in range(separate):
            for r in range(row // seg_h, (row + h - 1) // seg_h + 1):
                for c in range(col // seg_w, (col + w - 1) // seg_w + 1):
                    index = s * per_plane + r * n_cols + c
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    with self.lock:
                        fh.seek(offset)
                        data = fh.read(count) if count else None
                    seg, _, shape = decode(data, index, jpegtables=page.jpegtables)
                    y0, x0 = r * seg_h, c * seg_w
                    # Overlap of the segment with the window, in image coordinates.
                    ya, yb = max(y0, row), min(y0 + shape[1], row + h)
                    xa, xb = max(x0, col), min(x0 + shape[2], col + w)
                    if seg is None or ya >= yb or xa >= xb:
                        continue  # an empty segment reads as zeros
                    out[s, ya - row : yb - row, xa - col : xb - col, :] = seg[
                        0, ya - y0 : yb - y0, xa - x0 : xb - x0, :
                    ]
        return out


_readers: OrderedDict[str, _TiffReader] = OrderedDict()
_readers_pid = os.getpid()
_readers_lock = threading.Lock()


def _tiff_reader(path: str | os.PathLike[str]) -> _TiffReader:
    """A cached open reader for ``path`` (per process, least recently used dropped)."""
    global _readers_pid
    name = os.fspath(path)
    try:
        stat = os.stat(name)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {name!r} does not exist") from None
    # A rewritten file (new mtime or size) gets a fresh reader, never a stale header.
    key = f"{name}\0{stat.st_mtime_ns}\0{stat.st_size}"
    with _readers_lock:
        if _readers_pid != os.getpid():
            _readers.clear()  # handles inherited through fork belong to the parent
            _readers_pid = os.getpid()
        reader = _readers.get(key)
        if reader is not None:
            _readers.move_to_end(key)
            return reader
    try:
        reader = _TiffReader(name)
    except Exception as err:
        raise _bad_file(name, err) from err
    with _readers_lock:
        _readers[key] = reader
        while len(_readers) > _CACHE_SIZE:
            _readers.popitem(last=False)[1].close()
    return reader


def clear_reader_cache() -> None:
    """Close every cached TIFF handle of this process."""
    with _readers_lock:
        while _readers:
            _readers.popitem()[1].close()


atexit.register(clear_reader_cache)


def _pil_size(path: str | os.PathLike[str]) -> ImageSize:
    with Image.open(path) as img:
        width, height = img.size
        return ImageSize(height, width, len(img.getbands()))


def _bomb(path: str | os.PathLike[str], err: Exception) -> ValueError:
    return ValueError(
        f"{str(path)!r} declares more pixels than Pillow decodes ({err}); a PNG/JPEG is decoded "
        "whole: store so large an image as a tiled GeoTIFF (read by windows)"
    )


#: Pillow modes and the dtype :func:`read_image` returns for them (others: uint8).
_PIL_DTYPES = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}


def image_dtype(path: str | os.PathLike[str]) -> np.dtype:
    """The dtype :func:`read_image` returns for a file, from its header only.

    Raises:
        FileNotFoundError / ValueError: as :func:`image_size`.
    """
    _check_file(path)
    if _is_tiff(path):
        return np.dtype(_tiff_reader(path).dtype).newbyteorder("=")
    try:
        with Image.open(path) as img:
            return np.dtype(_PIL_DTYPES.get(img.mode, "uint8"))
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _bad_file(path, err) from err


def _check_file(path: str | os.PathLike[str]) -> None:
    if Path(path).is_dir():
        raise ValueError(f"image file {str(path)!r} is a folder, not an image file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")


def image_size(path: str | os.PathLike[str]) -> ImageSize:
    """Height, width and band count of an image, from its header only.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable image (the message names it).
    """
    _check_file(path)
    if _is_tiff(path):
        reader = _tiff_reader(path)
        return ImageSize(reader.height, reader.width, reader.bands)
    try:
        return _pil_size(path)
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _bad_file(path, err) from err


def image_nodata(path: str | os.PathLike[str]) -> float | None:
    """The nodata value a file declares (GeoTIFF ``GDAL_NODATA`` tag), or None.

    Only TIFFs can declare one; PNG / JPEG files give None (set ``data.nodata`` instead).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unreadable file, or a tag that is not a number (the message names it).
    """
    if not _is_tiff(path):
        return None
    return _parse_nodata(os.fspath(path), _tiff_reader(path).nodata_tag)


def tiff_layout(path: str | os.PathLike[str]) -> str:
    """How :func:`read_image` reads windows of a TIFF: ``memmap``, ``segments`` or ``full``."""
    return _tiff_reader(path).layout


def _check_window(path: str | os.PathLike[str], window: Window, size: ImageSize) -> None:
    row, col, h, w = window
    if h <= 0 or w <= 0 or row < 0 or col < 0 or row + h > size.height or col + w > size.width:
        raise ValueError(
            f"window (row={row}, col={col}, height={h}, width={w}) is outside image "
            f"{str(path)!r} of size {size.height} x {size.width}"
        )


def _select_bands(
    path: str | os.PathLike[str], array: np.ndarray, bands: Sequence[int] | None
) -> np.ndarray:
    if bands is None:
        return array
    n = array.shape[0]
    bad = [b for b in bands if not 0 <= b < n]
    if bad:
        raise ValueError(
            f"bands {list(bands)} ask for band(s) {bad}, but {str(path)!r} has {n} band(s) (0..{n - 1})"
        )
    return array[list(bands)]


#: Budget of decoded PNG/JPEG arrays kept per process (they cannot be read by window).
_DECODED_BUDGET = int(float(os.environ.get("CONTRASTSEG_DECODE_CACHE_MB", "128")) * 2**20)
_decoded: OrderedDict[tuple[str, int, int, bool], np.ndarray] = OrderedDict()
_decoded_pid = os.getpid()


def _read_pil(path: str | os.PathLike[str], expand_palette: bool) -> np.ndarray:
    """Whole PNG/JPEG as ``(C, H, W)``; recent decodes are cached (read-only) per process."""
    global _decoded_pid
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_mtime_ns, stat.st_size, expand_palette)
    with _readers_lock:
        if _decoded_pid != os.getpid():
            _decoded.clear()
            _decoded_pid = os.getpid()
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
    array = _decode_pil(path, expand_palette)
    array.flags.writeable = False
    if array.nbytes <= _DECODED_BUDGET // 2:
        with _readers_lock:
            _decoded[key] = array
            while sum(a.nbytes for a in _decoded.values()) > _DECODED_BUDGET:
                _decoded.popitem(last=False)
    return array


def _decode_pil(path: str | os.PathLike[str], expand_palette: bool) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "PA"):
                # Palette PNGs: either index maps (keep the indices) or colour-coded masks
                # saved with a per-file palette in arbitrary order (expand to RGB).
                array = np.asarray(img.convert("RGB") if expand_palette else img)
            elif img.mode in ("I;16", "I;16B", "I;16L"):
                array = np.asarray(img).astype(np.uint16)
            else:
                array = np.asarray(img)
    except Image.DecompressionBombError as err:
        raise _bomb(path, err) from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise _bad_file(path, err) from err
    if array.ndim == 2:
        return array[None]
    return np.ascontiguousarray(np.moveaxis(array, -1, 0))


def read_image(
    path: str | os.PathLike[str],
    window: Window | tuple[int, int, int, int] | None = None,
    bands: Sequence[int] | None = None,
    expand_palette: bool = False,
) -> np.ndarray:
    """Read an image or a window of it as a band-first array.

    Args:
        path: PNG, JPEG, BMP or TIFF/GeoTIFF file (interleaved or planar, tiled or striped,
            any compression tifffile can decode).
        window: ``(row, col, height, width)`` in pixels, or None for the whole image.
        bands: band indices (0-based) to return, in this order; None keeps all bands.
        expand_palette: palette ("P" mode) PNGs are returned as RGB colours instead of
            their palette indices (for colour-coded masks saved with a palette).

    Returns:
        Array ``(C, h, w)`` in the file's dtype (``C = len(bands)`` when given).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or corrupt file, window outside the image, or a band index
            the file does not have; the message names the file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    window = Window(*window) if window is not None else None
    if _is_tiff(path):
        reader = _tiff_reader(path)
        size = ImageSize(reader.height, reader.width, reader.bands)
        if window is None:
            window = Window(0, 0, size.height, size.width)
        _check_window(path, window, size)
        try:
            array = reader.read(window)
        except Exception as err:
            raise _bad_file(path, err) from err
    else:
        array = _read_pil(path, expand_palette)
        if window is not None:
            _check_window(path, window, ImageSize(array.shape[1], array.shape[2], array.shape[0]))
            row, col, h, w = window
            array = array[:, row : row + h, col : col + w]
    array = _select_bands(path, array, bands)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()  # never hand out the cached array
