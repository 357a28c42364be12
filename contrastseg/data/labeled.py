"""Image/mask pairs for fine-tuning and evaluation: training patches or whole images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastseg.data.config import LabeledDataConfig
from contrastseg.data.demo import demo_scenes
from contrastseg.data.files import pair_files
from contrastseg.data.nodata import check_files, file_nodata, mark_invalid
from contrastseg.data.palettes import Palette, check_index_mask
from contrastseg.data.presets import apply_preset
from contrastseg.data.readers import Window, image_size, read_image
from contrastseg.data.splits import assign_split, draw_label_fraction, read_id_list, write_id_list
from contrastseg.data.unlabeled import grid_positions, to_tensor


class LabeledItem(NamedTuple):
    """One labeled image: its key, files (``demo:<key>`` in memory) and size."""

    key: str
    image: str
    mask: str
    height: int
    width: int
    bands: int


def patch_id(key: str, window: Window) -> str:
    """The id of a training patch: ``<key>:<row>:<col>`` (written to label-fraction lists)."""
    return f"{key}:{window.row}:{window.col}"


#: Masks whose values were all checked: (path, size, mtime, label settings) -> the count of
#: their labeled (not ignored) pixels, per process.
_CHECKED_MASKS: dict[tuple[Any, ...], int] = {}


class LabeledDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Labeled images of one split, as training patches or as whole images.

    Items are ``(image, mask)``: ``image`` an integer tensor ``(C, h, w)`` in the file's
    dtype, ``mask`` int64 ``(h, w)`` with class ids and ``ignore_index``. Training patches
    form a grid of ``patch_size`` over every image (no overlap, last patch flush with the
    edge; images smaller than a patch give one patch padded with 0 / ``ignore_index``),
    restricted to the label fraction. Whole images (the default for ``val`` and ``test``)
    have their own sizes: use batch size 1 or sliding-window inference. Nodata and
    non-finite image pixels (:mod:`contrastseg.data.nodata`) get ``ignore_index`` in the mask;
    in float images they are NaN, which :func:`~contrastseg.data.loader.to_float` turns into
    the band mean.

    Args:
        config: the data configuration (a preset fills fields left at their defaults).
        split: ``train``, ``val`` or ``test``.
        whole_images: items are whole images instead of patches; None = ``split != "train"``.

    Attributes:
        classes: class names in id order.
        palette: one ``'#RRGGBB'`` per class (may be empty for index masks without colours).
        ignore_index: label of ignored pixels.
        num_classes: number of classes.
        num_bands: bands of the returned images.
        items: the images of the split.
        windows: ``(item index, window)`` per dataset item.
        patch_ids: ids of the dataset items (``key:row:col``; the key alone for whole images).

    Raises:
        FileNotFoundError: the root or its image/mask folders do not exist.
        ValueError: unpaired files, an image and mask of different sizes, an empty split, a
            label list naming unknown patches, a mask colour outside the palette or a mask
            value outside the classes (every mask of the split is checked on construction).
    """

    def __init__(
        self,
        config: LabeledDataConfig,
        split: Literal["train", "val", "test"] = "train",
        whole_images: bool | None = None,
    ) -> None:
        cfg = apply_preset(config)
        self.config = cfg
        self.split = split
        self.whole_images = split != "train" if whole_images is None else whole_images
        self.classes = list(cfg.classes)
        self.palette = list(cfg.palette)
        self.ignore_index = cfg.ignore_index
        self.num_classes = len(self.classes) or len(self.palette)
        if self.num_classes == 0:
            raise ValueError("labeled data needs class names (classes) or a palette, got neither")
        self._palette = (
            Palette(cfg.palette, cfg.ignore_colors, cfg.ignore_index) if cfg.palette else None
        )
        self._arrays: dict[str, np.ndarray] = {}
        self._nodata_values: dict[str, float | None] = {}
        self.skipped_bad: list[str] = []
        all_items = self._find_items()
        keys = assign_split([it.key for it in all_items], split, cfg.train, cfg.val, cfg.test)
        if not keys:
            raise ValueError(
                f"split {split!r} is empty: none of the {len(all_items)} image keys "
                f"(e.g. {[it.key for it in all_items[:3]]}) match its patterns "
                f"(train={cfg.train}, val={cfg.val}, test={cfg.test})"
            )
        chosen = set(keys)
        self.items = [it for it in all_items if it.key in chosen]
        counts = sorted({it.bands for it in self.items})
        if cfg.bands is None and len(counts) > 1:
            raise ValueError(
                f"images of split {split!r} have different band counts {counts}; "
                "select the same bands for all with the bands setting"
            )
        #: Bands of the returned images.
        self.num_bands = len(cfg.bands) if cfg.bands is not None else counts[0]
        names = [it.image for it in self.items]
        check_files(names, {n: self._nodata(n) for n in names})  # one dtype, NaN found now
        labeled = self._check_masks()
        if labeled == 0:
            raise ValueError(
                f"the {len(self.items)} mask(s) of split {split!r} hold no labeled pixel (every "
                f"pixel is ignore_index {self.ignore_index}"
                + (
                    f" or one of ignore_values {list(cfg.ignore_values)}"
                    if cfg.ignore_values
                    else ""
                )
                + "): there is nothing to "
                + ("train on" if split == "train" else "score")
                + f", e.g. {self.items[0].mask}"
            )
        self.windows = self._plan_windows()
        self.patch_ids = [
            it.key if self.whole_images else patch_id(it.key, w)
            for it, w in ((self.items[i], w) for i, w in self.windows)
        ]
        if cfg.label_fraction < 1.0 and split == "train" and not self.whole_images:
            self._apply_label_fraction()
        elif cfg.label_list and split == "train" and not self.whole_images:
            warnings.warn(
                f"label_list {cfg.label_list!r} is not used: label_fraction is 1.0, so every "
                "training patch is used (set label_fraction below 1 to draw or read the list)",
                stacklevel=2,
            )
        if self.skipped_bad:
            warnings.warn(
                f"skipped {len(self.skipped_bad)} unreadable pair(s): {self.skipped_bad[:10]}",
                stacklevel=2,
            )

    def _find_items(self) -> list[LabeledItem]:
        cfg = self.config
        if cfg.preset == "demo" and not cfg.root:
            demo = cfg.demo
            items = []
            for key, image, labels in demo_scenes(demo.n_scenes, demo.size, demo.bands, demo.seed):
                self._arrays[f"demo:{key}"] = image
                self._arrays[f"demo:{key}:mask"] = labels
                items.append(
                    LabeledItem(
                        key, f"demo:{key}", f"demo:{key}:mask", *labels.shape, image.shape[0]
                    )
                )
            return items
        if not cfg.root:
            raise ValueError(
                "labeled data needs a root folder (root), or preset: demo for built-in scenes"
            )
        pairs = pair_files(
            cfg.root, cfg.image_dir, cfg.mask_dir, cfg.image_patterns, cfg.mask_patterns,
            cfg.image_suffix, cfg.mask_suffix, cfg.image_regex, cfg.mask_regex,
        )  # fmt: skip
        items = []
        for pair in pairs:
            try:
                isize, msize = image_size(pair.image), image_size(pair.mask)
            except ValueError:
                if not cfg.skip_bad_files:
                    raise
                self.skipped_bad.append(pair.image)
                continue
            if (isize.height, isize.width) != (msize.height, msize.width):
                raise ValueError(
                    f"image {pair.image!r} is {isize.height} x {isize.width} but its mask "
                    f"{pair.mask!r} is {msize.height} x {msize.width}"
                )
            if cfg.bands is not None and max(cfg.bands) >= isize.bands:
                raise ValueError(
                    f"bands {cfg.bands} ask for band {max(cfg.bands)}, but {pair.image!r} has {isize.bands}"
                )
            items.append(
                LabeledItem(pair.key, pair.image, pair.mask, isize.height, isize.width, isize.bands)
            )
        return items

    def _expand_palette(self) -> bool:
        # Palette PNGs hold colours (as in the Dubai set) unless masks are index maps.
        return self.config.mask_format == "rgb" or (
            self.config.mask_format == "auto" and self._palette is not None
        )

    def _check_masks(self) -> int | None:
        """Read every mask of the split once, so a colour outside the palette (or a value
        outside the classes) stops the run now, not when its patch is first drawn.

        A mask that passed is remembered by path, size and mtime (and the label settings),
        so the other splits and later datasets of this process do not read it again.

        Returns:
            The count of labeled (not ignored) pixels over the masks, or None when there
            are in-memory (demo) masks, which are not counted.
        """
        cfg = self.config
        settings = (
            cfg.mask_format, tuple(cfg.palette), tuple(cfg.ignore_colors),
            tuple(cfg.ignore_values), cfg.ignore_index, self.num_classes,
        )  # fmt: skip
        labeled: int | None = 0
        for item in self.items:
            if item.mask in self._arrays:
                labeled = None  # demo scenes: labels made in memory
                continue
            stat = os.stat(item.mask)
            key = (os.path.abspath(item.mask), stat.st_size, stat.st_mtime_ns, settings)
            if key not in _CHECKED_MASKS:
                whole = Window(0, 0, item.height, item.width)
                labels = self.labels(
                    self._read(item.mask, whole, None, self._expand_palette()),
                    f"mask {item.mask!r}",
                )
                _CHECKED_MASKS[key] = int((labels != self.ignore_index).sum())
            if labeled is not None:
                labeled += _CHECKED_MASKS[key]
        return labeled

    def _plan_windows(self) -> list[tuple[int, Window]]:
        windows = []
        p = self.config.patch_size
        for i, it in enumerate(self.items):
            if self.whole_images:
                windows.append((i, Window(0, 0, it.height, it.width)))
                continue
            ph, pw = min(p, it.height), min(p, it.width)
            for r in grid_positions(it.height, ph, p):
                windows += [(i, Window(r, c, ph, pw)) for c in grid_positions(it.width, pw, p)]
        return windows

    def _apply_label_fraction(self) -> None:
        cfg = self.config
        path = Path(cfg.label_list) if cfg.label_list else None
        if path is not None and path.is_file():
            chosen = read_id_list(path)
            unknown = sorted(set(chosen) - set(self.patch_ids))
            if unknown:
                raise ValueError(
                    f"label list {str(path)!r} names {len(unknown)} patch(es) this dataset does not have "
                    f"(e.g. {unknown[:5]}); it was drawn for other data or another patch_size"
                )
        else:
            chosen = draw_label_fraction(self.patch_ids, cfg.label_fraction, cfg.seed)
            if path is not None:
                write_id_list(
                    path, chosen,
                    header=f"label fraction {cfg.label_fraction} of {len(self.patch_ids)} patches, "
                    f"patch_size {cfg.patch_size}, seed {cfg.seed}",
                )  # fmt: skip
        keep = set(chosen)
        pairs = [
            (w, pid) for w, pid in zip(self.windows, self.patch_ids, strict=True) if pid in keep
        ]
        self.windows = [w for w, _ in pairs]
        self.patch_ids = [pid for _, pid in pairs]

    def __len__(self) -> int:
        return len(self.windows)

    def _read(
        self, name: str, window: Window, bands: list[int] | None, expand_palette: bool = False
    ) -> np.ndarray:
        if name in self._arrays:
            array = self._arrays[name]
            array = array[
                ..., window.row : window.row + window.height, window.col : window.col + window.width
            ]
            return array if bands is None else array[bands]
        return read_image(name, window, bands, expand_palette=expand_palette)

    def labels(self, mask: np.ndarray, source: str) -> np.ndarray:
        """A mask read from disk ``(B, h, w)`` -> class ids ``(h, w)`` int64."""
        cfg = self.config
        rgb = cfg.mask_format == "rgb" or (cfg.mask_format == "auto" and mask.shape[0] in (3, 4))
        if rgb:
            if self._palette is None:
                raise ValueError(f"{source}: colour-coded mask but no palette is configured")
            return self._palette.encode(mask, source)
        return check_index_mask(mask, self.num_classes, cfg.ignore_values, cfg.ignore_index, source)

    def _nodata(self, name: str) -> float | None:
        if name not in self._nodata_values:
            self._nodata_values[name] = file_nodata(name, self.config.nodata)
        return self._nodata_values[name]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, win = self.windows[index]
        item = self.items[i]
        image, missing = mark_invalid(
            self._read(item.image, win, self.config.bands),
            self._nodata(item.image),
            item.image,
            win,
        )
        if item.mask in self._arrays:
            labels = self._read(item.mask, win, None).astype(np.int64)
        else:
            where = f"mask {item.mask!r} window (row={win.row}, col={win.col}, {win.height} x {win.width})"
            labels = self.labels(self._read(item.mask, win, None, self._expand_palette()), where)
        if missing.any():  # no label where the image holds no measurement
            labels = np.where(missing, self.ignore_index, labels)
        p = self.config.patch_size
        if not self.whole_images and (win.height < p or win.width < p):
            # Small image: pad to a full patch; padded pixels are ignored by the loss.
            padded = np.zeros((image.shape[0], p, p), dtype=image.dtype)
            padded[:, : win.height, : win.width] = image
            full = np.full((p, p), self.ignore_index, dtype=np.int64)
            full[: win.height, : win.width] = labels
            image, labels = padded, full
        return to_tensor(image), torch.from_numpy(np.ascontiguousarray(labels))
