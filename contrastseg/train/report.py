"""Evaluation reports: metrics JSON and table, a confusion-matrix image, prediction overlays.

<out>/metrics.json           ConfusionMatrix.to_dict (+ run information)
<out>/metrics.txt            ConfusionMatrix.format_table
<out>/confusion_matrix.png   row-normalised matrix (recall per true class), counts in JSON
<out>/overlays/<key>.png     image | ground truth | prediction, side by side
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from contrastseg.data.palettes import Palette, format_color
from contrastseg.metrics import ConfusionMatrix


def class_palette(palette: Sequence[str], num_classes: int) -> Palette:
    """The dataset's palette, or distinct generated colours when it has none."""
    if len(palette) == num_classes:
        return Palette(palette)
    rng = np.random.default_rng(12345)  # fixed: the same class keeps its colour across runs
    colors: list[str] = []
    while len(colors) < num_classes:
        color = format_color(rng.integers(32, 256, 3))
        if color not in colors:
            colors.append(color)
    return Palette(colors)


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """Class ids ``(h, w)`` -> RGB ``(h, w, 3)`` uint8 (ignored / unknown ids black)."""
    return np.moveaxis(palette.decode(labels), 0, -1)


def display_rgb(image: np.ndarray, rgb_bands: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """A band-first image ``(C, h, w)`` of any dtype -> displayable RGB ``(h, w, 3)`` uint8.

    Each band is stretched between its 2nd and 98th percentiles, so 16-bit and float data
    show as well as 8-bit; one- and two-band images are shown in grey.
    """
    bands = [b for b in rgb_bands if b < image.shape[0]]
    chosen = image[bands] if len(bands) == 3 else image[:1].repeat(3, axis=0)
    out = np.empty((*chosen.shape[1:], 3), dtype=np.uint8)
    for i, band in enumerate(chosen.astype(np.float32)):
        lo, hi = np.percentile(band, (2, 98))
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return out


def _thumbnail(rgb: np.ndarray, max_side: int, resample: Image.Resampling) -> Image.Image:
    img = Image.fromarray(rgb)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample
        )
    return img


def write_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray,
    palette: Palette,
    max_side: int = 512,
) -> Path:
    """Save ``image | truth | prediction`` side by side (each scaled to ``max_side``) as PNG.

    Args:
        image: ``(C, h, w)`` band-first image (as read from disk).
        truth: ``(h, w)`` class ids or None (prediction only).
        prediction: ``(h, w)`` class ids.
    """
    panels = [_thumbnail(display_rgb(image), max_side, Image.Resampling.BILINEAR)]
    for labels in (truth, prediction):
        if labels is not None:
            panels.append(_thumbnail(colorize(labels, palette), max_side, Image.Resampling.NEAREST))
    gap = 4
    canvas = Image.new(
        "RGB",
        (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height),
        (255, 255, 255),
    )
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def draw_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], cell: int = 56
) -> Path:
    """Row-normalised confusion matrix (rows true, columns predicted) as a PNG heat map."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(class_names)
    names = [f"{i}: {n[:18]}" for i, n in enumerate(class_names)]
    left, top = 12 + 6 * max(len(n) for n in names), 22
    width, height = left + k * cell + 8, top + k * cell + 24
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - 5), names[i], fill=(0, 0, 0))
        draw.text((left + i * cell + cell // 2 - 3, 6), str(i), fill=(0, 0, 0))
        for j in range(k):
            value = share[i, j]
            shade = int(255 * (1 - value))
            box = (
                left + j * cell,
                top + i * cell,
                left + (j + 1) * cell - 1,
                top + (i + 1) * cell - 1,
            )
            draw.rectangle(box, fill=(shade, shade, 255), outline=(200, 200, 200))
            text_color = (255, 255, 255) if value > 0.5 else (0, 0, 0)
            draw.text((box[0] + 6, box[1] + cell // 2 - 5), f"{100 * value:.1f}", fill=text_color)
    draw.text((4, height - 18), "rows: true class, columns: predicted (% of row)", fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def safe_name(key: str) -> str:
    """A file name for an image key (``Tile 8/image_part_001`` -> ``Tile_8_image_part_001``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "image"


def write_report(
    confusion: ConfusionMatrix,
    class_names: Sequence[str],
    out_dir: str | os.PathLike[str],
    exclude: Sequence[int] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.txt`` and ``confusion_matrix.png``; return the metrics.

    Args:
        confusion: the accumulated matrix (already all-reduced under DDP).
        class_names: names in class-id order.
        out_dir: folder to write into (created).
        exclude: classes left out of the means.
        extra: more JSON-safe information stored under ``"run"`` (checkpoint, split, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = confusion.to_dict(class_names, exclude)
    if extra:
        metrics["run"] = dict(extra)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.txt").write_text(
        confusion.format_table(class_names, exclude) + "\n", encoding="utf-8"
    )
    draw_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), class_names, out / "confusion_matrix.png"
    )
    return metrics
