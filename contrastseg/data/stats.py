"""Per-band mean and standard deviation over a dataset, streamed, and their YAML file."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from contrastseg.data.config import UnlabeledDataConfig
from contrastseg.data.nodata import file_nodata, mark_invalid
from contrastseg.data.readers import Window
from contrastseg.data.unlabeled import Source, UnlabeledDataset, list_sources, read_source
from contrastseg.utils.configtools import safe_load_unique
from contrastseg.utils.sections import ConfigError, Float, Int, coerce


@dataclass
class BandStats:
    """Per-band statistics in scaled units (pixel value / ``scale``).

    Attributes:
        mean: mean of every band.
        std: population standard deviation of every band.
        count: pixels per band that went in.
        scale: the value that was mapped to 1.0.
        bands: the band indices of the files (None = all, in file order).
    """

    mean: list[float]
    std: list[float]
    count: int
    scale: float
    bands: list[int] | None = None


def stat_windows(sources: Sequence[Source], size: int) -> list[tuple[int, Window]]:
    """Non-overlapping windows of at most ``size`` px tiling every source exactly once."""
    return [
        (i, Window(r, c, min(size, s.height - r), min(size, s.width - c)))
        for i, s in enumerate(sources)
        for r in range(0, s.height, size)
        for c in range(0, s.width, size)
    ]


def compute_band_stats(
    source: UnlabeledDataset | UnlabeledDataConfig,
    max_samples: int | None = 1000,
    scale: float | None = None,
    seed: int = 0,
    window_size: int = 512,
) -> BandStats:
    """Per-band mean and std over (a sample of) the pixels of a dataset's images.

    The images are tiled into non-overlapping windows of ``window_size`` px (so every pixel
    counts once whatever the dataset's patch size or sampling), and ``max_samples`` of them
    are drawn at random. Streamed: each window contributes its float64 mean and sum of
    squared deviations, merged with Chan et al.'s pairwise update (numerically stable, exact
    for the pixels seen).

    Args:
        source: a dataset (its images and band selection), or a config.
        max_samples: at most this many windows, drawn at random with ``seed``; None = all.
        scale: value mapped to 1.0; None = the config's scale or the dtype's range.
        seed: seed of the window sample.
        window_size: side of the windows in pixels.

    Returns:
        :class:`BandStats` in scaled units.

    Nodata and non-finite pixels (:mod:`contrastseg.data.nodata`) are left out; ``count``
    is the number of valid pixels that went in.

    Raises:
        ValueError: no images or no valid pixel, ``window_size`` < 1, or NaN pixels in a
            file that declares no nodata value (the message names it).
    """
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if isinstance(source, UnlabeledDataset):
        config, sources, arrays = source.config, source.sources, source._arrays
    else:
        config = source
        sources, arrays, _ = list_sources(config)
    counts = sorted({src.bands for src in sources})
    if config.bands is None and len(counts) > 1:
        examples = {c: next(src.name for src in sources if src.bands == c) for c in counts}
        raise ValueError(
            f"images have different band counts {counts} (e.g. {examples}); select bands, "
            "or leave other files out (exclude, e.g. '*/masks/*')"
        )
    windows = stat_windows(sources, window_size)
    if max_samples is not None and max_samples < len(windows):
        chosen = np.sort(
            np.random.default_rng(seed).choice(len(windows), max_samples, replace=False)
        )
        windows = [windows[int(k)] for k in chosen]
    scale = scale if scale is not None else config.scale
    n_total = 0
    mean = m2 = None
    nodata: dict[str, float | None] = {}
    for i, window in windows:
        name = sources[i].name
        if name not in nodata:
            nodata[name] = file_nodata(name, config.nodata)
        patch, invalid = mark_invalid(
            read_source(name, window, config.bands, arrays), nodata[name], name, window
        )
        if scale is None:
            scale = (
                1.0 if np.issubdtype(patch.dtype, np.floating) else float(np.iinfo(patch.dtype).max)
            )
        # nodata and non-finite pixels carry no measurement: they stay out of the statistics
        x = patch.reshape(patch.shape[0], -1)[:, ~invalid.ravel()].astype(np.float64)
        n = x.shape[1]
        if n == 0:
            continue
        p_mean = x.mean(axis=1)
        p_m2 = ((x - p_mean[:, None]) ** 2).sum(axis=1)
        if mean is None:
            mean, m2, n_total = p_mean, p_m2, n
            continue
        delta = p_mean - mean
        total = n_total + n
        mean = mean + delta * (n / total)
        m2 = m2 + p_m2 + delta**2 * (n_total * n / total)
        n_total = total
    if mean is None or m2 is None or scale is None:
        raise ValueError(
            "no valid pixels to compute band statistics from (no images, or only nodata)"
        )
    std = np.sqrt(m2 / n_total)
    return BandStats(
        mean=[float(v) / scale for v in mean],
        std=[float(v) / scale for v in std],
        count=int(n_total),
        scale=float(scale),
        bands=None if config.bands is None else list(config.bands),
    )


def write_stats_yaml(stats: BandStats, path: str | os.PathLike[str]) -> Path:
    """Write stats as YAML (``mean``, ``std``, ``scale``, ``count``, ``bands``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "mean": [round(v, 8) for v in stats.mean],
        "std": [round(v, 8) for v in stats.std],
        "scale": stats.scale,
        "count": stats.count,
        "bands": stats.bands,
    }
    text = "# per-band statistics (pixel / scale) written by contrastseg stats\n" + yaml.safe_dump(
        payload, sort_keys=False, default_flow_style=None
    )
    path.write_text(text)
    return path


def load_stats_yaml(path: str | os.PathLike[str]) -> BandStats:
    """Read a file written by :func:`write_stats_yaml`, validated like a config.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not YAML, a duplicate key, ``mean``/``std`` missing, not lists of finite
            numbers (the message names the file and the key, e.g. ``std[2]``), of different
            lengths, or a std that is not positive.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"band statistics file {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"band statistics file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:  # a file: messages name it
            data = safe_load_unique(handle) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or "mean" not in data or "std" not in data:
        raise ValueError(f"{str(path)!r} is not a band statistics file (needs mean and std lists)")
    source = repr(str(path))
    mean = coerce(data["mean"], list[Float], "mean", source)
    std = coerce(data["std"], list[Float], "std", source)
    if len(mean) != len(std) or not mean:
        raise ValueError(f"{source}: mean has {len(mean)} values but std has {len(std)}")
    bad = [i for i, v in enumerate(std) if v <= 0]
    if bad:
        raise ValueError(f"{source}: 'std[{bad[0]}]' must be positive, got {std[bad[0]]}")
    return BandStats(
        mean=mean,
        std=std,
        count=coerce(data.get("count", 0), Int, "count", source),
        scale=coerce(data.get("scale", 1.0), Float, "scale", source),
        bands=coerce(data.get("bands"), list[Int] | None, "bands", source),
    )


def normalization_values(
    section: Any, bands: int | None = None, source: str = "normalize"
) -> tuple[list[float] | None, list[float] | None]:
    """The per-band ``(mean, std)`` a ``normalize`` section asks for (None: not applied).

    Args:
        section: a :class:`~contrastseg.config.NormalizeConfig` or its dict; its
            ``stats_file`` wins over its ``mean`` / ``std``.
        bands: the data's band count; a list of another length is a ``ConfigError`` naming
            the file or ``source``.
        source: what the section is called in that message.
    """
    get = section.get if isinstance(section, Mapping) else lambda key: getattr(section, key)
    mean, std, stats_file = get("mean"), get("std"), get("stats_file")
    if stats_file:
        stats = load_stats_yaml(stats_file)
        mean, std = stats.mean, stats.std
    for name, values in (("mean", mean), ("std", std)):
        if bands is not None and values is not None and len(values) != bands:
            where = stats_file or f"{source}.{name}"
            raise ConfigError(
                f"{where}: {len(values)} {name} values but the data has {bands} band(s)"
            )
    return (None if mean is None else list(mean)), (None if std is None else list(std))


def stored_normalization(
    payload: Mapping[str, Any], path: str | os.PathLike[str], bands: int | None = None
) -> tuple[list[float] | None, list[float] | None]:
    """The per-band ``(mean, std)`` the network of checkpoint ``payload`` was trained on.

    Checkpoints store the values themselves (``payload["normalize"]``), so they travel with
    the file. A pretraining checkpoint of contrastseg 0.1.0 has only its config: its
    ``normalize.stats_file`` is read again, and a file that is gone is a ``ConfigError``
    (guessing no normalisation would feed the encoder inputs it never saw). With ``bands``,
    values for another band count are a ``ConfigError``.
    """
    if isinstance(payload.get("normalize"), Mapping):
        return normalization_values(payload["normalize"], bands, f"{path}: normalize")
    section = dict((payload.get("config") or {}).get("normalize") or {})
    stats_file = section.get("stats_file")
    if stats_file and not Path(stats_file).is_file():
        raise ConfigError(
            f"{path} was pretrained with normalize.stats_file={stats_file!r}, which does not "
            "exist here (this checkpoint does not store the values): set normalize.stats_file "
            "to a copy of that file, or normalize.mean and normalize.std"
        )
    return normalization_values(section, bands, f"{path}: normalize")


def run_stats_command(
    paths: Sequence[str],
    out: str | None = None,
    bands: Sequence[int] | None = None,
    max_samples: int | None = 1000,
    window_size: int = 512,
    scale: float | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    nodata: float | None = None,
    overwrite: bool = False,
) -> int:
    """``contrastseg stats DATA...``: print per-band mean/std and write them as YAML.

    Args:
        paths: folders or image files; empty = the built-in demo scenes.
        out: YAML file to write; None = print only.
        overwrite: replace an existing ``out`` (otherwise refused before computing).
        bands: band indices (0-based) to use, in order; None = all.
        max_samples: at most this many windows (random, with ``seed``); None = every pixel.
        window_size: side of the non-overlapping windows the images are tiled into.
        scale: value mapped to 1.0; None = the dtype's range.
        seed: seed of the window sample.
        exclude: fnmatch patterns of paths (relative to their root) to leave out.
        nodata: value of missing pixels in every file; None = each GeoTIFF's tag.

    Returns:
        Exit status 0.

    Raises:
        ValueError: ``max_samples`` or ``window_size`` below 1, NaN pixels without a nodata
            value, unreadable data, ``out`` a folder (before computing), or a band whose std
            is 0 (nothing is written).
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(
            f"--max-samples must be >= 1 (or omitted for every window), got {max_samples}"
        )
    config = UnlabeledDataConfig(
        roots=list(paths),
        exclude=list(exclude),
        bands=None if bands is None else list(bands),
        scale=scale,
        nodata=nodata,
        seed=seed,
    )
    if out and Path(out).is_dir():  # refused before the (long) computation
        raise ValueError(f"--out {out} is a folder; name the YAML file to write")
    if out and Path(out).exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite to replace it")
    sources, _, _ = list_sources(config)
    stats = compute_band_stats(config, max_samples, scale, seed, window_size)
    names = stats.bands if stats.bands is not None else list(range(len(stats.mean)))
    print(
        f"{len(sources)} image(s), {stats.count} pixel(s) per band "
        f"(windows of {window_size} px, at most {max_samples}), scale {stats.scale:g}"
    )
    print(f"{'band':>4}  {'mean':>10}  {'std':>10}")
    for b, m, s in zip(names, stats.mean, stats.std, strict=True):
        print(f"{b:>4}  {m:>10.6f}  {s:>10.6f}")
    if not all(math.isfinite(v) for v in stats.mean + stats.std):
        print("warning: non-finite statistics (NaN or inf pixels in the data)")
    flat = [b for b, v in zip(names, stats.std, strict=True) if v <= 0]
    if out and flat:  # pretrain refuses such a file: never write it
        files = ", ".join(repr(src.name) for src in sources[:3])
        files += f" and {len(sources) - 3} more" if len(sources) > 3 else ""
        raise ValueError(
            f"band(s) {flat} have a std of 0 (every sampled pixel holds the same value) in "
            f"{files}: normalising by them would divide by 0, so {out} was not written; leave "
            "them out with --bands, or sample more windows (--max-samples)"
        )
    if out:
        print(f"wrote {write_stats_yaml(stats, out)}")
    return 0
