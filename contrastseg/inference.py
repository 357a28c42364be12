"""Sliding-window prediction over images of any size.

A segmenter trained on small patches is applied to a whole tile by cutting it into windows
(``window`` pixels, ``stride`` apart, the last window flush with the border), running the
windows in batches, and averaging the logits where windows overlap (each pixel's logits are
the mean over the windows that cover it). An image smaller than the window is padded with
reflected pixels (zeros when it is too small to reflect) and the padding is cropped away.
Optional test-time augmentation averages the logits of the image and its horizontal and
vertical flips.

Two entry points:

- :func:`sliding_window_logits` over an in-memory float tensor ``(B, C, H, W)``;
- :func:`predict_file` over an image file read strip by strip with
  :func:`contrastseg.data.read_image`, for images larger than memory: it holds one strip of
  ``window`` rows of input and logits at a time and hands finished rows of labels to a sink.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastseg.data.nodata import mark_invalid
from contrastseg.data.readers import Window, image_size, read_image

#: ``(B, C, h, w)`` float images -> ``(B, K, h, w)`` logits.
PredictFn = Callable[[Tensor], Tensor]


class WindowPlan(NamedTuple):
    """Where the windows of one image lie.

    Attributes:
        rows: top rows of the windows (inside the padded image).
        cols: left columns of the windows.
        window: ``(height, width)`` of every window (at most the padded image size).
        padded: ``(height, width)`` after padding an image smaller than the window.
    """

    rows: list[int]
    cols: list[int]
    window: tuple[int, int]
    padded: tuple[int, int]


def window_positions(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows covering ``[0, length)``: ``0, stride, 2 stride, ...``, last flush.

    Every position lies in ``[0, length - window]`` (``[0]`` when ``length <= window``), so a
    window never reaches past the end, and every pixel is covered at least once.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"stride ({stride}) larger than window ({window}) would skip pixels")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def plan_windows(height: int, width: int, window: int, stride: int) -> WindowPlan:
    """The windows :func:`sliding_window_logits` runs on an ``height x width`` image."""
    padded = (max(height, window), max(width, window))
    return WindowPlan(
        window_positions(padded[0], window, stride),
        window_positions(padded[1], window, stride),
        (min(window, padded[0]), min(window, padded[1])),
        padded,
    )


def _pad_to(images: Tensor, height: int, width: int) -> Tensor:
    dh, dw = height - images.shape[-2], width - images.shape[-1]
    if dh == 0 and dw == 0:
        return images
    reflectable = dh < images.shape[-2] and dw < images.shape[-1]
    return F.pad(images, (0, dw, 0, dh), mode="reflect" if reflectable else "constant")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, Tensor) else None
        raise ValueError(
            f"expected float images of shape (B, C, H, W), got shape {shape} and dtype {dtype}"
        )


def _flip_logits(predict: PredictFn, crops: Tensor, flip: bool) -> Tensor:
    logits = predict(crops).float()
    if flip:
        for dims in ((-1,), (-2,)):
            logits = logits + predict(crops.flip(dims)).float().flip(dims)
        logits = logits / 3
    return logits


@torch.no_grad()
def sliding_window_logits(
    predict: PredictFn,
    images: Tensor,
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
    flip: bool = False,
) -> Tensor:
    """Logits of a whole image from overlapping windows, averaged where they overlap.

    Args:
        predict: the model in eval mode, ``(n, C, window, window) -> (n, K, window, window)``.
        images: float images ``(B, C, H, W)`` of any size (normalised like the training data).
        window: window side in pixels.
        stride: step between windows; None = ``window // 2`` (half overlap).
        batch_size: windows per call of ``predict``.
        flip: average with the logits of horizontally and vertically flipped windows.

    Returns:
        float32 logits ``(B, K, H, W)`` on the device of ``images``.

    Raises:
        ValueError: images not float ``(B, C, H, W)``, a bad window/stride, or a ``predict``
            output whose size differs from its input.
    """
    _check_images(images)
    stride = stride or max(1, window // 2)
    height, width = images.shape[-2:]
    plan = plan_windows(height, width, window, stride)
    padded = _pad_to(images, *plan.padded)
    wh, ww = plan.window
    boxes = [(r, c) for r in plan.rows for c in plan.cols]
    total: Tensor | None = None
    count = torch.zeros(1, 1, *plan.padded, device=images.device)
    for b in range(images.shape[0]):
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            crops = torch.stack([padded[b, :, r : r + wh, c : c + ww] for r, c in chunk])
            logits = _flip_logits(predict, crops, flip)
            if logits.shape[-2:] != crops.shape[-2:] or logits.shape[0] != len(chunk):
                raise ValueError(
                    f"predict returned shape {tuple(logits.shape)} for windows {tuple(crops.shape)}; "
                    "expected logits at the window's resolution"
                )
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], *plan.padded).float()
            for (r, c), item in zip(chunk, logits, strict=True):
                total[b, :, r : r + wh, c : c + ww] += item
                if b == 0:
                    count[0, 0, r : r + wh, c : c + ww] += 1
    assert total is not None  # at least one window per image
    return (total / count)[..., :height, :width]


class StripSink:
    """Receives finished label rows from :func:`predict_file` (override :meth:`write`)."""

    def write(self, row: int, labels: np.ndarray) -> None:  # pragma: no cover - interface
        """``labels`` ``(h, W)`` int64 are the classes of image rows ``row .. row + h - 1``."""
        raise NotImplementedError


class ArraySink(StripSink):
    """Collects the label rows into ``array`` (an ndarray or a ``np.memmap`` of shape ``(H, W)``)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def write(self, row: int, labels: np.ndarray) -> None:
        self.array[row : row + labels.shape[0]] = labels


@torch.no_grad()
def predict_file(
    predict: PredictFn,
    path: str | os.PathLike[str],
    sink: StripSink | Callable[[int, np.ndarray], None],
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
    flip: bool = False,
    bands: Sequence[int] | None = None,
    prepare: Callable[[np.ndarray], Tensor] | None = None,
    device: torch.device | str = "cpu",
    nodata: float | None = None,
    nodata_label: int | None = None,
) -> tuple[int, int]:
    """Label map of an image file, streamed strip by strip (images larger than memory).

    The windows are the same as :func:`sliding_window_logits` plans for the whole image, so
    the labels are identical to an in-memory prediction. Memory holds one strip of
    ``window`` rows: ``C x window x W`` input values and ``K x window x W`` float32 logits.

    Args:
        predict: the model in eval mode (see :func:`sliding_window_logits`).
        path: image file (TIFF/GeoTIFF windows are read without decoding the rest; PNG/JPEG
            are decoded whole by their reader).
        sink: an :class:`ArraySink`-like object or a callable ``(row, labels (h, W))`` that
            receives every image row exactly once, top to bottom.
        window, stride, batch_size, flip: as in :func:`sliding_window_logits`.
        bands: band indices to read; None = all.
        prepare: ``(C, h, w)`` array -> float tensor ``(C, h, w)`` on ``device`` (scaling and
            normalisation); None = ``float32`` as read.
        device: where the strips go.
        nodata: the file's nodata value (see :mod:`contrastseg.data.nodata`); NaN pixels
            without one are an error.
        nodata_label: label written at nodata / non-finite pixels; None = predict them.

    Returns:
        ``(height, width)`` of the image.

    Raises:
        FileNotFoundError / ValueError: unreadable file (from the reader) or bad arguments.
    """
    write = sink.write if isinstance(sink, StripSink) else sink
    size = image_size(path)
    stride = stride or max(1, window // 2)
    plan = plan_windows(size.height, size.width, window, stride)
    wh = plan.window[0]
    prepare = prepare or (lambda a: torch.from_numpy(a.astype(np.float32)).to(device))
    # Rolling accumulator over padded rows [top, top + wh); rows above the next window's top
    # get no further contributions and are emitted.
    acc: Tensor | None = None
    count: Tensor | None = None
    ncols: Tensor | None = None
    top = 0
    done = 0
    for i, r in enumerate(plan.rows):
        rows = min(wh, size.height - r)  # real (unpadded) rows of this strip
        strip_window = Window(r, 0, rows, size.width)
        array, invalid = mark_invalid(
            read_image(path, strip_window, bands), nodata, str(path), strip_window
        )
        strip = prepare(array)[None]
        logits = sliding_window_logits(
            predict, _pad_to(strip, wh, strip.shape[-1]), window, stride, batch_size, flip
        )[0]
        # sliding_window_logits averaged over the strip's column windows; weight the strip by
        # the number of column windows so overlapping strips average like the 2-D plan.
        if ncols is None:
            ncols = torch.zeros(plan.padded[1], device=logits.device)
            for c in plan.cols:
                ncols[c : c + plan.window[1]] += 1
            ncols = ncols[: size.width]
        if acc is None:
            acc = logits.new_zeros(logits.shape[0], wh, size.width)
            count = logits.new_zeros(1, wh, size.width)
            missing = np.zeros((wh, size.width), dtype=bool)
        shift = r - top
        if shift:
            acc = torch.cat([acc[:, shift:], acc.new_zeros(acc.shape[0], shift, size.width)], 1)
            count = torch.cat([count[:, shift:], count.new_zeros(1, shift, size.width)], 1)
            missing = np.concatenate([missing[shift:], np.zeros((shift, size.width), bool)])
            top = r
        missing[:rows] |= invalid
        acc += logits * ncols
        count += ncols
        next_top = plan.rows[i + 1] if i + 1 < len(plan.rows) else size.height
        finish = min(next_top, size.height) - done  # done == top here
        if finish > 0:
            labels = (acc[:, :finish] / count[:, :finish]).argmax(0).cpu().numpy().astype(np.int64)
            if nodata_label is not None:
                labels[missing[:finish]] = nodata_label
            write(done, labels)
            done += finish
    return size.height, size.width
