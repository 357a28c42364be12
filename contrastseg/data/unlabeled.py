"""Unlabeled images cut into patches for pretraining."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastseg.data.config import UnlabeledDataConfig
from contrastseg.data.demo import demo_scenes
from contrastseg.data.files import find_images
from contrastseg.data.nodata import check_files, file_nodata, mark_invalid
from contrastseg.data.readers import Window, image_size, read_image


class Source(NamedTuple):
    """One image of a dataset: a file path (or ``demo:<key>``) and its size."""

    name: str
    height: int
    width: int
    bands: int


def grid_positions(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` px, plus one flush with the far edge.

    The last window is moved to end at the image edge, so every pixel is covered and no
    window reaches outside the image. Requires ``length >= patch``.
    """
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A ``(C, h, w)`` numpy array as a tensor of the same dtype (uint16 stays torch.uint16).

    Shares memory when it can; read-only views (cached demo scenes) are copied.
    """
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def list_sources(
    config: UnlabeledDataConfig,
) -> tuple[list[Source], dict[str, np.ndarray], list[str]]:
    """The images a config names, with their sizes (read from headers only).

    Returns:
        ``(sources, arrays, skipped_bad)``: every readable image; the in-memory arrays of the
        demo scenes (``roots`` empty) keyed by source name; files skipped as unreadable
        (``skip_bad_files``).

    Raises:
        FileNotFoundError: a root does not exist or holds no matching files.
        ValueError: an unreadable file and ``skip_bad_files`` is false.
    """
    sources: list[Source] = []
    arrays: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    if not config.roots:
        demo = config.demo
        for key, image, _ in demo_scenes(demo.n_scenes, demo.size, demo.bands, demo.seed):
            arrays[f"demo:{key}"] = image
            sources.append(Source(f"demo:{key}", image.shape[1], image.shape[2], image.shape[0]))
        return sources, arrays, skipped
    for path in find_images(config.roots, config.patterns, exclude=config.exclude):
        try:
            sources.append(Source(path, *image_size(path)))
        except ValueError:
            if not config.skip_bad_files:
                raise
            skipped.append(path)
    return sources, arrays, skipped


def read_source(
    name: str, window: Window, bands: list[int] | None, arrays: dict[str, np.ndarray]
) -> np.ndarray:
    """A window ``(C, h, w)`` of a file, or of an in-memory array listed in ``arrays``."""
    if name in arrays:
        array = arrays[name][
            :, window.row : window.row + window.height, window.col : window.col + window.width
        ]
        return array if bands is None else array[bands]
    return read_image(name, window, bands)


class UnlabeledDataset(Dataset[torch.Tensor]):
    """Patches of unlabeled images, read lazily (windowed reads of big TIFFs).

    Items are integer tensors ``(C, patch_size, patch_size)`` in the files' dtype (uint8, or
    uint16 as ``torch.uint16``: it collates across worker processes and converts with
    ``.float()`` in torch 2.15, tested on CPU; pinning and the host-to-GPU copy move bytes
    whatever the dtype), so DataLoader workers only decode and crop; :func:`to_float` makes
    them float on the device.

    With ``sampling="random"`` an image of ``H x W`` px gives
    ``max(1, round(coverage * H * W / patch_size**2))`` windows per epoch, whose positions
    are drawn from ``(seed, epoch, index)``: reproducible, independent of worker count, and
    re-drawn by :meth:`set_epoch` (the epoch lives in shared memory, so persistent workers
    see it; call ``set_epoch`` before iterating the loader). ``sampling="grid"`` gives a fixed
    grid with ``grid_stride`` (last window flush with the edge).

    With ``roots`` empty, the built-in demo scenes (``config.demo``) are generated in memory.

    Args:
        config: the data configuration.

    Attributes:
        sources: the images used, with their sizes.
        skipped_small: images skipped for being smaller than the patch.
        skipped_bad: files skipped as unreadable (header at start, data while reading).

    Raises:
        FileNotFoundError: a root does not exist or holds no matching files.
        ValueError: an image smaller than the patch (``too_small="error"``), an unreadable file
            (``skip_bad_files=False``), images with different band counts, or a band index
            a file does not have; messages name the file.
    """

    def __init__(self, config: UnlabeledDataConfig) -> None:
        self.config = config
        self.patch_size = config.patch_size
        self.skipped_small: list[str] = []
        self.skipped_bad: list[str] = []
        candidates, self._arrays, self.skipped_bad = list_sources(config)
        self.sources = self._keep_usable(candidates)
        self._check_bands()
        self._nodata = {src.name: file_nodata(src.name, config.nodata) for src in self.sources}
        self.nodata = self._common_nodata()
        check_files([s.name for s in self.sources], self._nodata)  # one dtype, NaN found now
        self.skipped_nodata = 0
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._build_index()
        if self.skipped_small or self.skipped_bad:
            warnings.warn(self.summary(), stacklevel=2)

    def _keep_usable(self, candidates: list[Source]) -> list[Source]:
        p = self.patch_size
        small = [s for s in candidates if s.height < p or s.width < p]
        if small and self.config.too_small == "error":
            listed = ", ".join(f"{s.name!r} ({s.height} x {s.width})" for s in small[:10])
            raise ValueError(
                f"{len(small)} image(s) are smaller than patch_size {p}: {listed}; "
                "set too_small: skip to leave them out, or lower patch_size"
            )
        self.skipped_small = [s.name for s in small]
        usable = [s for s in candidates if s.height >= p and s.width >= p]
        if not usable:
            raise ValueError(
                f"no usable images: {len(small)} smaller than patch_size {p}, "
                f"{len(self.skipped_bad)} unreadable"
            )
        return usable

    def _check_bands(self) -> None:
        bands = self.config.bands
        if bands is not None:
            for s in self.sources:
                if max(bands) >= s.bands:
                    raise ValueError(
                        f"bands {bands} ask for band {max(bands)}, but {s.name!r} has {s.bands} band(s)"
                    )
            self.num_bands = len(bands)
            return
        counts = {s.bands for s in self.sources}
        if len(counts) > 1:
            examples = {
                c: next(s.name for s in self.sources if s.bands == c) for c in sorted(counts)
            }
            raise ValueError(
                f"images have different band counts {sorted(counts)} (e.g. {examples}); "
                "select the same bands for all with the bands setting"
            )
        self.num_bands = counts.pop()

    def _common_nodata(self) -> float | None:
        """The one nodata value of integer items (float items mark nodata as NaN instead)."""
        values = {v for v in self._nodata.values() if v is not None and not math.isnan(v)}
        if len(values) > 1:
            examples = {v: next(n for n, w in self._nodata.items() if w == v) for v in values}
            raise ValueError(
                f"images declare different nodata values {sorted(values)} (e.g. {examples}); "
                "set data.nodata to the one value that marks missing pixels in all of them"
            )
        return values.pop() if values else None

    def _build_index(self) -> None:
        p, cfg = self.patch_size, self.config
        if cfg.sampling == "grid":
            stride = cfg.grid_stride or p
            rows = []
            for i, s in enumerate(self.sources):
                for r in grid_positions(s.height, p, stride):
                    rows += [(i, r, c) for c in grid_positions(s.width, p, stride)]
            self._grid = np.asarray(rows, dtype=np.int64)
            self._length = len(rows)
        else:
            counts = [max(1, round(cfg.coverage * s.height * s.width / p**2)) for s in self.sources]
            self._ends = np.cumsum(counts)
            self._length = int(self._ends[-1])

    def summary(self) -> str:
        """One line: images used, patches per epoch, images skipped and why."""
        text = (
            f"{len(self.sources)} image(s), {len(self)} patch(es) of {self.patch_size} px per epoch"
        )
        if self.skipped_small:
            text += f"; skipped {len(self.skipped_small)} smaller than the patch"
        if self.skipped_bad:
            text += f"; skipped {len(self.skipped_bad)} unreadable: {self.skipped_bad[:5]}"
        return text

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the random windows for ``epoch`` (reproducible from ``(seed, epoch)``)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return self._length

    def window(self, index: int) -> tuple[int, Window]:
        """Source index and pixel window of item ``index`` in the current epoch."""
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} patches")
        p = self.patch_size
        if self.config.sampling == "grid":
            i, r, c = (int(v) for v in self._grid[index])
            return i, Window(r, c, p, p)
        i = int(np.searchsorted(self._ends, index, side="right"))
        s = self.sources[i]
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        r, c = rng.integers(0, [s.height - p + 1, s.width - p + 1])
        return i, Window(int(r), int(c), p, p)

    def read(self, index: int) -> np.ndarray:
        """Item ``index`` as a numpy array ``(C, p, p)`` (no skipping of bad files or nodata).

        Nodata pixels of float files are NaN in every band (see :mod:`contrastseg.data.nodata`).

        Raises:
            ValueError: an unreadable file, or NaN pixels in a file without a nodata value.
        """
        return self._read_marked(index)[0]

    def _read_marked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        i, win = self.window(index)
        name = self.sources[i].name
        array = read_source(name, win, self.config.bands, self._arrays)
        return mark_invalid(array, self._nodata[name], name, win)

    def __getitem__(self, index: int) -> torch.Tensor:
        # Bad files (skip_bad_files) and mostly-nodata patches are passed over: the next
        # items are tried in turn, so the choice stays a function of the index.
        limit = self.config.max_nodata_fraction
        for attempt in range(min(len(self), 200)):
            j = (index + attempt) % len(self)
            try:
                array, invalid = self._read_marked(j)
            except (ValueError, OSError) as err:
                if not self.config.skip_bad_files or "NaN pixel" in str(err):
                    raise
                name = self.sources[self.window(j)[0]].name
                if name not in self.skipped_bad:
                    self.skipped_bad.append(name)
                    warnings.warn(
                        f"skipping unreadable file {name!r} ({len(self.skipped_bad)} skipped so far "
                        f"in this worker): {err}",
                        stacklevel=2,
                    )
                continue
            if invalid.mean() > limit:
                self.skipped_nodata += 1
                continue
            return to_tensor(array)
        raise ValueError(
            f"no usable patch found near index {index} (tried {min(len(self), 200)}): skipped "
            f"files {self.skipped_bad[:10]}, {self.skipped_nodata} patch(es) with more than "
            f"data.max_nodata_fraction={limit} nodata pixels"
        )
