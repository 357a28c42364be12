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
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from contrastseg.data.readers import Window, image_nodata


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
