"""Nodata and NaN pixels: which pixels of an image hold no measurement, and keeping them out.

A pixel is *invalid* when any of its bands is not finite (NaN, inf) or when all its bands
equal the nodata value: the file's own (GeoTIFF ``GDAL_NODATA`` tag) or ``data.nodata``
from the config, which wins. NaN pixels in a file that declares no nodata value are an
error (they would otherwise end in a non-finite loss many steps later).

Invalid pixels are left out of the band statistics, of the region centres of pretraining
(an index-map entry pointing at an invalid source pixel counts as outside the source), and
of the fine-tuning loss (their label becomes ``ignore_index``); predictions keep them as
nodata. Before they reach a network they are replaced by a neutral value (the band mean,
0 after normalisation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from contrastseg.data.readers import Window, image_dtype, image_nodata, image_size, read_image


def file_nodata(name: str, configured: float | None) -> float | None:
    """The nodata value of a file: ``configured`` (``data.nodata``) if set, else its tag.

    In-memory sources (``demo:...``) have none unless configured.
    """
    if configured is not None:
        return float(configured)
    if name.startswith("demo:"):
        return None
    return image_nodata(name)


def invalid_pixels(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(h, w)`` bool: pixels of a ``(C, h, w)`` array with a non-finite band or all bands nodata."""
    invalid = np.zeros(array.shape[1:], dtype=bool)
    if np.issubdtype(array.dtype, np.floating):
        invalid |= ~np.isfinite(array).all(axis=0)
    if nodata is not None and not math.isnan(nodata):
        invalid |= (array == np.asarray(nodata).astype(array.dtype)).all(axis=0)
    return invalid


def check_nan(
    array: np.ndarray, nodata: float | None, name: str, window: Window | None = None
) -> None:
    """Refuse NaN pixels in a file that declares no nodata value.

    Raises:
        ValueError: naming the file, the window and the count of NaN pixels.
    """
    if nodata is not None or not np.issubdtype(array.dtype, np.floating):
        return
    count = int(np.isnan(array).any(axis=0).sum())
    if count:
        where = (
            ""
            if window is None
            else f" in window (row={window.row}, col={window.col}, {window.height} x {window.width})"
        )
        raise ValueError(
            f"{name!r} has {count} NaN pixel(s){where} but declares no nodata value (no "
            "GDAL_NODATA tag): set data.nodata (nan, or the file's fill value) to leave them "
            "out, or fix the file"
        )


#: Files whose NaN scan passed: (path, size, mtime) -> dtype, per process.
_SCANNED: dict[tuple[str, int, int], np.dtype] = {}
#: Rows read at a time by the NaN scan.
SCAN_ROWS = 1024


def check_files(names: Sequence[str], nodata: Mapping[str, float | None]) -> None:
    """Check the image files of a dataset when it is indexed, before any step.

    - All files have one dtype: pixel values are scaled by their dtype's range, so a mix of
      uint8 and uint16 files would put them on scales 256 times apart (and not batch).
    - A float file without a nodata value holds no NaN pixel: read strip by strip
      (``SCAN_ROWS`` rows) once per file and process, so the error comes now, naming the
      file and the strip, not when a patch holding them is first drawn hours in.

    In-memory sources (``demo:...``) are skipped.

    Raises:
        ValueError: the message names the files (or the file and its window).
    """
    dtypes: dict[str, str] = {}
    for name in names:
        if name.startswith("demo:"):
            continue
        stat = os.stat(name)
        key = (os.path.abspath(name), stat.st_size, stat.st_mtime_ns)
        dtype = _SCANNED.get(key)
        if dtype is None:
            dtype = image_dtype(name)
            if nodata.get(name) is None and np.issubdtype(dtype, np.floating):
                size = image_size(name)
                for row in range(0, size.height, SCAN_ROWS):
                    window = Window(row, 0, min(SCAN_ROWS, size.height - row), size.width)
                    check_nan(read_image(name, window), None, name, window)
            _SCANNED[key] = dtype
        dtypes.setdefault(dtype.name, name)
    if len(dtypes) > 1:
        examples = ", ".join(f"{d} (e.g. {n!r})" for d, n in sorted(dtypes.items()))
        raise ValueError(
            f"the images have different dtypes: {examples}; values are scaled by their dtype's "
            "range, so one dataset needs one dtype: convert the files to one"
        )


def mark_invalid(
    array: np.ndarray, nodata: float | None, name: str, window: Window | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check a window read from ``name`` and find its invalid pixels.

    Float arrays get NaN in every band of an invalid pixel, so later stages (which see
    tensors, not files) recognise them without the file's nodata value; integer arrays are
    returned as they are.

    Returns:
        ``(array, invalid)``: the (possibly copied) array and the ``(h, w)`` invalid mask.

    Raises:
        ValueError: NaN pixels without a declared nodata value (see :func:`check_nan`).
    """
    check_nan(array, nodata, name, window)
    invalid = invalid_pixels(array, nodata)
    if invalid.any() and np.issubdtype(array.dtype, np.floating):
        array = array.copy()
        array[:, invalid] = np.nan
    return array, invalid


def valid_pixels(batch: Tensor, nodata: float | None) -> Tensor | None:
    """``(B, H, W)`` bool of the valid pixels of a batch ``(B, C, H, W)``, or None if all are.

    Float batches mark invalid pixels with NaN (:func:`mark_invalid`); integer batches by
    ``nodata`` in every band.
    """
    if batch.is_floating_point():
        valid = torch.isfinite(batch).all(dim=1)
    elif nodata is not None and not math.isnan(nodata):
        valid = ~(batch == nodata).all(dim=1)
    else:
        return None
    return None if bool(valid.all()) else valid


def fill_invalid(images: Tensor, valid: Tensor | None, mean: Sequence[float] | None) -> Tensor:
    """Replace invalid pixels of ``(B, C, H, W)`` float images by the band mean.

    The band mean is 0 after normalisation, the most neutral input a network can get.

    Args:
        images: the batch (invalid pixels may hold NaN or any value).
        valid: ``(B, H, W)`` bool from :func:`valid_pixels`; None = nothing to fill.
        mean: per-band mean in the images' units; None = the mean of the batch's valid
            pixels (0 when there are none).
    """
    if valid is None:
        return images
    if mean is not None:
        fill = torch.as_tensor(mean, device=images.device, dtype=images.dtype)
    else:
        weights = valid[:, None].to(images.dtype)
        total = torch.where(valid[:, None], images, 0).sum(dim=(0, 2, 3))
        fill = total / weights.sum().clamp(min=1)
    return torch.where(valid[:, None], images, fill.view(1, -1, 1, 1))
