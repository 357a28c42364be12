"""Train/val/test splits by key patterns, and label fractions drawn at patch level.

A label fraction (say 1 %) is drawn once from the sorted list of training patch ids with a
seed and written to a list file, so every method in a comparison fine-tunes on exactly the
same patches.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


class SplitOverlap(ValueError):
    """A file key matched by the patterns of several splits (``key``, ``splits``)."""

    def __init__(self, key: str, splits: list[str]) -> None:
        super().__init__(f"file key {key!r} matches the patterns of several splits: {splits}")
        self.key, self.splits = key, splits


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def assign_split(
    keys: Sequence[str], split: str, train: Sequence[str], val: Sequence[str], test: Sequence[str]
) -> list[str]:
    """The keys of one split.

    A key belongs to ``val`` or ``test`` when it matches one of their fnmatch patterns; to
    ``train`` when it matches a ``train`` pattern, or, when ``train`` is empty, when it is in
    neither ``val`` nor ``test``.

    Raises:
        ValueError: unknown split name; SplitOverlap (a ValueError): a key matched by two splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    patterns = {"train": train, "val": val, "test": test}
    chosen = []
    for key in keys:
        hits = [s for s in ("val", "test") if _matches(key, patterns[s])]
        if train:
            if _matches(key, train):
                hits.append("train")
        elif not hits:
            hits.append("train")
        if len(hits) > 1:
            raise SplitOverlap(key, hits)
        if hits == [split]:
            chosen.append(key)
    return chosen


def draw_label_fraction(patch_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """A reproducible random subset of ``patch_ids`` of size ``max(1, round(fraction * n))``.

    The draw depends only on the *set* of ids, ``fraction`` and ``seed`` (ids are sorted
    first), so it is the same whatever order the files were listed in.

    Returns:
        The chosen ids, sorted.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or no ids.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ids = sorted(set(patch_ids))
    if not ids:
        raise ValueError("cannot draw a label fraction from an empty list of patches")
    count = max(1, min(len(ids), math.floor(fraction * len(ids) + 0.5)))
    order = np.random.default_rng(seed).permutation(len(ids))[:count]
    return sorted(ids[i] for i in order)


def write_id_list(path: str | os.PathLike[str], ids: Iterable[str], header: str = "") -> Path:
    """Write one id per line (``#`` lines are comments); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"label_list {str(path)!r} is a folder; name the list file to read or write"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in header.splitlines()] + list(ids)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # never a stray .tmp next to the list
    return path


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Ids of a list file written by :func:`write_id_list` (blank and ``#`` lines skipped).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list file {str(path)!r} does not exist")
    return [
        s
        for s in (line.strip() for line in path.read_text().splitlines())
        if s and not s.startswith("#")
    ]
