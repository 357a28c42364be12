"""Synthetic aerial-looking demo scenes with labels, so the whole pipeline runs with no download.

A seeded procedural generator paints a label map (low vegetation and paved areas from smooth
noise, a pond or river, a road grid with an optional diagonal road, rectangular buildings
with cast shadows, tree crowns, cars on the roads) and renders it to N bands: R, G, B and a
near-infrared band where vegetation is bright and water dark (as in real RGBIR imagery,
e.g. ISPRS Potsdam), with per-object colour variation, smooth texture and sensor noise.
Bands beyond the fourth are fixed mixtures of the first four plus noise.

Classes follow ISPRS Potsdam, with water in place of clutter (see :data:`DEMO_CLASSES`).
Shadows keep the class of the ground they fall on, as in the ISPRS labels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

#: Class names of the demo scenes, in class-id order.
DEMO_CLASSES = ["impervious surfaces", "building", "low vegetation", "tree", "car", "water"]
#: Mask colours of the demo classes (Potsdam's colours; water is steel blue).
DEMO_PALETTE = ["#FFFFFF", "#0000FF", "#00FFFF", "#00FF00", "#FFFF00", "#4682B4"]

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, WATER = range(6)

# Mean (R, G, B, NIR) of every class; roofs and cars get their own colours.
_CLASS_MEAN = np.array(
    [
        [128, 126, 122, 95],  # impervious: grey asphalt/concrete, moderate NIR
        [170, 110, 90, 105],  # building (replaced per roof)
        [100, 132, 64, 185],  # low vegetation: NIR bright
        [48, 84, 42, 205],  # tree: darker green, NIR brightest
        [150, 150, 150, 90],  # car (replaced per car)
        [38, 66, 96, 14],  # water: NIR absorbed
    ],
    dtype=np.float32,
)
_ROOFS = np.array(
    [[176, 84, 62, 110], [150, 150, 156, 100], [205, 195, 176, 120], [110, 100, 96, 80]],
    dtype=np.float32,
)
# Split names used by write_demo_dataset / the demo preset.
DEMO_SPLITS = ("train", "val", "test")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells x cells`` random grid upsampled bicubically."""
    grid = torch.from_numpy(rng.random((1, 1, cells, cells), dtype=np.float32))
    up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    return up.clamp_(0, 1).numpy()


def _paint_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Label map (H, W) int64, shadow map (H, W) bool, list of (slice, colour) objects."""
    s = size / 512.0  # object sizes are defined for a 512 px scene
    labels = np.full((size, size), LOW_VEGETATION, dtype=np.int64)
    labels[_smooth_noise(rng, size, 6) > 0.62] = IMPERVIOUS
    if rng.random() < 0.7:  # a pond or a river
        water = _smooth_noise(rng, size, 4)
        labels[water > np.quantile(water, 0.93)] = WATER
    road = np.zeros((size, size), dtype=bool)
    roads_h = [int(v) for v in rng.integers(0, size, int(rng.integers(1, 3)))]
    roads_v = [int(v) for v in rng.integers(0, size, int(rng.integers(1, 3)))]
    width = max(4, int(16 * s))
    for y in roads_h:
        road[max(0, y - width // 2) : y + width // 2] = True
    for x in roads_v:
        road[:, max(0, x - width // 2) : x + width // 2] = True
    if rng.random() < 0.5:  # a diagonal road: distance to a line through the scene
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0.3, 1.2)
        c = rng.uniform(0.2, 0.8) * size
        road |= np.abs(np.cos(angle) * xx + np.sin(angle) * yy - c) < width / 2
    labels[road] = IMPERVIOUS
    objects: list[tuple[tuple[slice, slice], np.ndarray]] = []
    shadow = np.zeros((size, size), dtype=bool)
    buildings = np.zeros((size, size), dtype=bool)
    wanted, placed = int(rng.integers(8, 16) * s * s) + 1, 0
    for _ in range(6 * wanted):  # rejection sampling; most scenes get all they want
        if placed == wanted:
            break
        h, w = (int(v) for v in rng.integers(int(24 * s) + 2, int(80 * s) + 3, 2))
        y0, x0 = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        box = (slice(y0, y0 + h), slice(x0, x0 + w))
        if road[box].any() or (labels[box] == WATER).any() or buildings[box].any():
            continue  # buildings stay off roads, water and each other
        buildings[box] = True
        placed += 1
        labels[box] = BUILDING
        roof = _ROOFS[rng.integers(len(_ROOFS))] + rng.normal(0, 8, 4).astype(np.float32)
        objects.append((box, roof))
        # The sun is to the upper left: the shadow falls down-right, length ~ building height.
        d = int(rng.integers(int(4 * s) + 1, int(12 * s) + 2))
        shadow[y0 + d : y0 + h + d, x0 + d : x0 + w + d] = True
    shadow &= ~buildings
    free = (labels == LOW_VEGETATION) | ((labels == IMPERVIOUS) & ~road)
    for _ in range(int(rng.integers(30, 80) * s * s) + 1):  # tree crowns in clusters
        cy, cx = (int(v) for v in rng.integers(0, size, 2))
        for _ in range(int(rng.integers(1, 6))):
            r = float(rng.uniform(4, 11) * s) + 1
            ty, tx = cy + rng.normal(0, 10 * s), cx + rng.normal(0, 10 * s)
            y0, y1 = max(0, int(ty - r)), min(size, int(ty + r) + 1)
            x0, x1 = max(0, int(tx - r)), min(size, int(tx + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            disc = ((yy - ty) ** 2 + (xx - tx) ** 2 <= r * r) & free[y0:y1, x0:x1]
            labels[y0:y1, x0:x1][disc] = TREE
    road_pixels = np.flatnonzero(road & (labels == IMPERVIOUS))
    n_cars = min(len(road_pixels), int(rng.integers(6, 20) * s * s) + 1)
    for p in rng.choice(road_pixels, n_cars, replace=False) if n_cars else []:
        y, x = divmod(int(p), size)
        along_h = any(abs(y - r) < width for r in roads_h)
        ch, cw = (int(4 * s) + 2, int(9 * s) + 3) if along_h else (int(9 * s) + 3, int(4 * s) + 2)
        box = (slice(y, min(size, y + ch)), slice(x, min(size, x + cw)))
        if (labels[box] != IMPERVIOUS).any():
            continue
        labels[box] = CAR
        colour = np.concatenate([rng.uniform(20, 235, 3), [rng.uniform(60, 120)]]).astype(
            np.float32
        )
        objects.append((box, colour))
    return labels, shadow, objects


def make_scene(size: int = 512, bands: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic aerial scene and its labels.

    Args:
        size: side of the square scene in pixels (>= 32).
        bands: number of bands: 1..3 take R, G, B in that order, the 4th is near-infrared,
            further bands are fixed mixtures of the first four plus noise.
        seed: the scene is a pure function of ``(size, bands, seed)``.

    Returns:
        ``image`` uint8 ``(bands, size, size)`` and ``labels`` int64 ``(size, size)`` with
        the class ids of :data:`DEMO_CLASSES`.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    rng = np.random.default_rng([int(seed), 7919])
    labels, shadow, objects = _paint_scene(rng, size)
    image = _CLASS_MEAN[labels].transpose(2, 0, 1).copy()  # (4, H, W) float32
    for box, colour in objects:
        image[:, box[0], box[1]] = colour[:, None, None]
    # Texture: smooth brightness variation at two scales, stronger on vegetation.
    texture = _smooth_noise(rng, size, max(4, size // 32)) - 0.5
    texture += 0.5 * (_smooth_noise(rng, size, max(8, size // 6)) - 0.5)
    gain = np.where(np.isin(labels, (LOW_VEGETATION, TREE)), 60.0, 25.0).astype(np.float32)
    image += (texture * gain)[None]
    image[:, shadow] *= np.array([0.45, 0.47, 0.55, 0.5], dtype=np.float32)[:, None]
    extra = max(0, bands - 4)
    if extra:
        mix = (
            np.random.default_rng([int(seed), 104729])
            .dirichlet(np.ones(4), extra)
            .astype(np.float32)
        )
        image = np.concatenate([image, np.einsum("kc,chw->khw", mix, image)])
    image = image[:bands]
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def demo_key(index: int, n_scenes: int) -> str:
    """Name of demo scene ``index``: the last ~1/8 are ``test_*``, the 1/8 before ``val_*``."""
    n_hold = max(1, n_scenes // 8) if n_scenes >= 3 else 0
    if index >= n_scenes - n_hold:
        return f"test_{index:03d}"
    if index >= n_scenes - 2 * n_hold:
        return f"val_{index:03d}"
    return f"train_{index:03d}"


def demo_scenes(
    n_scenes: int, size: int, bands: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n_scenes`` in memory as ``(key, image, labels)``; scene ``i`` uses seed ``seed * 100003 + i``.

    The result is cached (the unlabeled and labeled datasets of one run share it) and its
    arrays are read-only; copy before modifying.
    """
    return list(_demo_scenes(int(n_scenes), int(size), int(bands), int(seed)))


@functools.lru_cache(maxsize=4)
def _demo_scenes(
    n_scenes: int, size: int, bands: int, seed: int
) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    scenes = []
    for i in range(n_scenes):
        image, labels = make_scene(size, bands, seed * 100003 + i)
        image.flags.writeable = False
        labels.flags.writeable = False
        scenes.append((demo_key(i, n_scenes), image, labels))
    return tuple(scenes)


def _write_tiff(path: Path, image: np.ndarray) -> None:
    """Band-interleaved TIFF of a ``(C, H, W)`` array (RGB photometric for 3 bands)."""
    if image.shape[0] == 1:
        tifffile.imwrite(path, image[0], photometric="minisblack")
        return
    photometric = "rgb" if image.shape[0] == 3 else "minisblack"
    tifffile.imwrite(
        path, np.moveaxis(image, 0, -1), photometric=photometric, planarconfig="contig"
    )


def write_demo_dataset(
    root: str | os.PathLike[str],
    n_scenes: int = 16,
    size: int = 512,
    bands: int = 4,
    seed: int = 0,
    image_format: str = "tif",
    mask_format: str = "index",
) -> Path:
    """Write demo scenes as ``root/images/<key>.<ext>`` and ``root/masks/<key>.png``.

    Keys are ``train_000``, ``val_014``, ``test_015``, ... (see :func:`demo_key`), so the
    ``demo`` preset of :class:`LabeledDataset` splits them by name.

    Args:
        root: output folder (created).
        n_scenes: number of scenes.
        size: side of each scene in pixels.
        bands: number of bands.
        seed: generator seed (same scenes as the in-memory demo with this seed).
        image_format: ``tif`` (any band count, band-interleaved) or ``png`` (1, 3 or 4 bands).
        mask_format: ``index`` (8-bit class ids) or ``rgb`` (colours of :data:`DEMO_PALETTE`).

    Returns:
        ``root`` as a Path.
    """
    from contrastseg.data.palettes import Palette

    if image_format not in ("tif", "png"):
        raise ValueError(f"image_format must be 'tif' or 'png', got {image_format!r}")
    if image_format == "png" and bands not in (1, 3, 4):
        raise ValueError(
            f"PNG demo images need 1, 3 or 4 bands, got {bands}; use image_format='tif'"
        )
    if mask_format not in ("index", "rgb"):
        raise ValueError(f"mask_format must be 'index' or 'rgb', got {mask_format!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    palette = Palette(DEMO_PALETTE)
    for key, image, labels in demo_scenes(n_scenes, size, bands, seed):
        if image_format == "tif":
            _write_tiff(root / "images" / f"{key}.tif", image)
        else:
            Image.fromarray(image[0] if bands == 1 else np.moveaxis(image, 0, -1)).save(
                root / "images" / f"{key}.png"
            )
        if mask_format == "index":
            Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{key}.png")
        else:
            Image.fromarray(np.moveaxis(palette.decode(labels), 0, -1)).save(
                root / "masks" / f"{key}.png"
            )
    return root
