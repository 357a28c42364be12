"""Colour-coded masks <-> class-index maps, with errors for colours outside the palette."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def parse_color(color: str) -> tuple[int, int, int]:
    """``'#RRGGBB'`` (or ``'RRGGBB'``) -> ``(r, g, b)``.

    Raises:
        ValueError: not a 6-digit hex colour.
    """
    text = color.strip().removeprefix("#")
    if len(text) != 6:
        raise ValueError(f"colour {color!r} is not a '#RRGGBB' hex colour")
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError as err:
        raise ValueError(f"colour {color!r} is not a '#RRGGBB' hex colour") from err


def format_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``'#RRGGBB'``."""
    return "#{:02X}{:02X}{:02X}".format(*(int(v) for v in rgb))


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(3, ...) uint8 -> one int32 code per pixel, ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32)
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


class Palette:
    """Class colours and ignored colours of RGB-coded masks.

    Args:
        colors: one ``'#RRGGBB'`` per class, in class-id order.
        ignore_colors: colours whose pixels become ``ignore_index``.
        ignore_index: label of ignored pixels.

    Raises:
        ValueError: a colour is malformed or listed twice.
    """

    def __init__(
        self, colors: Sequence[str], ignore_colors: Sequence[str] = (), ignore_index: int = 255
    ) -> None:
        if not colors:
            raise ValueError("a palette needs at least one class colour, got none")
        self.colors = [parse_color(c) for c in colors]
        self.ignore_colors = [parse_color(c) for c in ignore_colors]
        self.ignore_index = int(ignore_index)
        everything = self.colors + self.ignore_colors
        seen: set[tuple[int, int, int]] = set()
        for rgb in everything:
            if rgb in seen:
                raise ValueError(f"palette lists colour {format_color(rgb)} more than once")
            seen.add(rgb)
        codes = _pack(np.array(everything, dtype=np.int32).T)
        labels = [*range(len(self.colors)), *([self.ignore_index] * len(self.ignore_colors))]
        order = np.argsort(codes)
        self._codes = codes[order]
        self._labels = np.asarray(labels, dtype=np.int64)[order]

    @property
    def num_classes(self) -> int:
        return len(self.colors)

    def encode(self, mask: np.ndarray, source: str = "mask") -> np.ndarray:
        """RGB mask -> class indices.

        Args:
            mask: ``(3, h, w)`` (or ``(4, h, w)``, alpha ignored) uint8 colour-coded mask.
            source: file name (and window) for error messages.

        Returns:
            ``(h, w)`` int64 class ids, ``ignore_index`` for ignored colours.

        Raises:
            ValueError: the mask is not RGB, or has colours outside the palette; the
                message names ``source``, each unknown colour and its pixel count.
        """
        if mask.ndim != 3 or mask.shape[0] not in (3, 4):
            raise ValueError(f"{source}: an RGB mask has shape (3, h, w), got {tuple(mask.shape)}")
        if mask.dtype != np.uint8:
            raise ValueError(f"{source}: an RGB mask must be uint8, got {mask.dtype}")
        codes = _pack(mask[:3])
        pos = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        known = self._codes[pos] == codes
        if not known.all():
            values, counts = np.unique(codes[~known], return_counts=True)
            listed = ", ".join(
                f"{format_color(((v >> 16) & 255, (v >> 8) & 255, v & 255))} ({n} px)"
                for v, n in sorted(
                    zip(values.tolist(), counts.tolist(), strict=True), key=lambda t: -t[1]
                )[:10]
            )
            raise ValueError(
                f"{source}: {int(counts.sum())} pixel(s) have colours outside the palette: {listed}"
                f"; add them to the palette or to ignore_colors"
            )
        return self._labels[pos]

    def decode(self, labels: np.ndarray, ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
        """Class indices ``(h, w)`` -> RGB mask ``(3, h, w)`` uint8.

        ``ignore_index`` (and any id outside the palette) is painted ``ignore_color``.
        """
        table = np.array([*self.colors, tuple(ignore_color)], dtype=np.uint8)
        ids = np.where((labels >= 0) & (labels < self.num_classes), labels, self.num_classes)
        return np.ascontiguousarray(np.moveaxis(table[ids], -1, 0))


def check_index_mask(
    mask: np.ndarray,
    num_classes: int,
    ignore_values: Sequence[int] = (),
    ignore_index: int = 255,
    source: str = "mask",
) -> np.ndarray:
    """Validate an index-map mask and map ``ignore_values`` to ``ignore_index``.

    Args:
        mask: ``(h, w)`` or ``(1, h, w)`` integer class ids.
        num_classes: valid ids are ``0 .. num_classes - 1``.
        ignore_values: values that become ``ignore_index``.
        ignore_index: label of ignored pixels (itself accepted as a value).
        source: file name for error messages.

    Returns:
        ``(h, w)`` int64 labels.

    Raises:
        ValueError: values outside the classes that are not ignored; the message names
            ``source``, each value and its pixel count.
    """
    if mask.ndim == 3:
        if mask.shape[0] != 1:
            raise ValueError(
                f"{source}: an index mask has one band, got {mask.shape[0]}; "
                "set mask_format: rgb for colour-coded masks"
            )
        mask = mask[0]
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{source}: an index mask must hold integers, got {mask.dtype}")
    labels = mask.astype(np.int64)
    ignored = np.isin(labels, [*ignore_values, ignore_index])
    bad = ~ignored & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values, counts = np.unique(labels[bad], return_counts=True)
        listed = ", ".join(
            f"{v} ({n} px)" for v, n in zip(values.tolist(), counts.tolist(), strict=True)
        )
        raise ValueError(
            f"{source}: values outside classes 0..{num_classes - 1} and not ignored: {listed}"
        )
    labels[ignored] = ignore_index
    return labels
