"""Finding image files under folders, and pairing images with masks by a naming rule."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class Pair(NamedTuple):
    """An image and its mask, with the key that paired them."""

    key: str
    image: str
    mask: str


def _matches(name: str, patterns: Sequence[str]) -> bool:
    name = name.lower()
    return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def walk_once(top: str | os.PathLike[str]):
    """``os.walk(top, followlinks=True)`` that enters every real folder once.

    A symlink back up the tree (``sub -> .``) or two links to one folder would otherwise
    list the same files again under each path (until the OS refuses the path as too deep).
    Hidden folders are skipped; the caller may prune ``dirnames`` further.
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        try:
            stat = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def compile_regex(pattern: str, key: str) -> re.Pattern[str] | None:
    """``re.compile(pattern)`` (None for an empty one), an error naming the setting."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{key} {pattern!r} is not a valid regular expression: {err}") from None


def find_images(
    roots: Sequence[str | os.PathLike[str]],
    patterns: Sequence[str],
    allow_empty: bool = False,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Image files under ``roots`` (recursive, hidden entries skipped), sorted, deduplicated.

    A root may also be a single file, taken whatever its name. ``exclude`` holds fnmatch
    patterns matched against each file's path relative to its root (``*/masks/*``).

    Raises:
        FileNotFoundError: a root does not exist, or nothing matched anywhere (unless
            ``allow_empty``).
    """
    found: set[str] = set()
    for root in roots:
        path = Path(root)
        if path.is_file():
            found.add(str(path))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"data root {str(root)!r} does not exist")
        for dirpath, _, filenames in walk_once(path):
            for f in filenames:
                if f.startswith(".") or not _matches(f, patterns):
                    continue
                full = os.path.join(dirpath, f)
                inner = Path(full).relative_to(path).as_posix()
                if not any(fnmatch.fnmatchcase(inner, p) for p in exclude):
                    found.add(full)
    if not found and not allow_empty:
        raise FileNotFoundError(
            f"no image files matching {list(patterns)} under {[str(r) for r in roots]}"
        )
    return sorted(found)


def _folders(root: Path, folder: str) -> list[tuple[str, Path]]:
    """``(prefix, directory)`` for a folder name (any depth) or a path relative to root."""
    if "/" in folder or os.sep in folder or Path(folder).is_absolute():
        path = Path(folder) if Path(folder).is_absolute() else root / folder
        return [("", path)] if path.is_dir() else []
    out = []
    for dirpath, dirnames, _ in walk_once(root):
        if folder in dirnames:
            prefix = Path(dirpath).relative_to(root).as_posix()
            out.append(("" if prefix == "." else prefix + "/", Path(dirpath) / folder))
            dirnames.remove(folder)  # an image folder never holds the next level's folders
    return out


def _key(inner: str, suffix: str, regex: re.Pattern[str] | None, path: str) -> str | None:
    stem = inner.rsplit(".", 1)[0] if "." in Path(inner).name else inner
    if regex is not None:
        match = regex.search(stem)
        if match is None:
            return None
        return (
            match.group("key")
            if "key" in regex.groupindex
            else match.group(1 if regex.groups else 0)
        )
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem


def _collect(
    root: Path, folder: str, patterns: Sequence[str], suffix: str, regex: str, kind: str
) -> tuple[dict[str, str], list[str]]:
    compiled = compile_regex(regex, f"{kind}_regex")
    keyed: dict[str, str] = {}
    unmatched: list[str] = []
    for prefix, directory in _folders(root, folder):
        for path in find_images([directory], patterns, allow_empty=True):
            inner = Path(path).relative_to(directory).as_posix()
            key = _key(inner, suffix, compiled, path)
            if key is None:
                unmatched.append(path)
                continue
            key = prefix + key
            if key in keyed:
                raise ValueError(
                    f"files {keyed[key]!r} and {path!r} have the same pairing key {key!r}"
                )
            keyed[key] = path
    return keyed, unmatched


def pair_files(
    root: str | os.PathLike[str],
    image_dir: str,
    mask_dir: str,
    image_patterns: Sequence[str],
    mask_patterns: Sequence[str],
    image_suffix: str = "",
    mask_suffix: str = "",
    image_regex: str = "",
    mask_regex: str = "",
) -> list[Pair]:
    """Pair images with masks by key (see :class:`LabeledDataConfig` for the rule).

    Returns:
        Pairs sorted by key.

    Raises:
        FileNotFoundError: ``root`` or the image/mask folders do not exist, or hold no files.
        ValueError: files without a partner (all of them are listed, up to 20 per side),
            files the regex does not match, two files with the same key, or an invalid regex.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
    images, bad_images = _collect(
        root, image_dir, image_patterns, image_suffix, image_regex, "image"
    )
    masks, bad_masks = _collect(root, mask_dir, mask_patterns, mask_suffix, mask_regex, "mask")
    if not images:
        raise FileNotFoundError(
            f"no images matching {list(image_patterns)} in folder(s) {image_dir!r} under {str(root)!r}"
        )
    if not masks:
        raise FileNotFoundError(
            f"no masks matching {list(mask_patterns)} in folder(s) {mask_dir!r} under {str(root)!r}"
        )
    problems = []
    if bad_images or bad_masks:
        problems.append(f"files the pairing regex does not match: {(bad_images + bad_masks)[:20]}")
    lonely_images = sorted(images[k] for k in images.keys() - masks.keys())
    lonely_masks = sorted(masks[k] for k in masks.keys() - images.keys())
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without a mask: {lonely_images[:20]}")
    if lonely_masks:
        problems.append(f"{len(lonely_masks)} mask(s) without an image: {lonely_masks[:20]}")
    if problems:
        raise ValueError(
            f"unpaired files under {str(root)!r} (images in {image_dir!r}, masks in {mask_dir!r}, "
            f"suffixes {image_suffix!r}/{mask_suffix!r}): " + "; ".join(problems)
        )
    return [Pair(k, images[k], masks[k]) for k in sorted(images)]
