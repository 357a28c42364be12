"""``draw_view_grid`` / ``preview_views``: one PNG to check the augmentations by eye.

Rows are images; columns are the original, view 1 and view 2, with each matched region
pair drawn in the same colour in both views. Multi-band images show their RGB bands (or
the first band as grey) with a per-image percentile stretch taken from the original, so
colour changes of view 2 stay visible.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from contrastseg.augment.config import ViewsConfig
from contrastseg.augment.regions import MatchedRegions, match_regions
from contrastseg.augment.views import PairedViews, ViewPair

#: Distinct outline colours for region pairs (cycled).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


def describe_views(config: ViewsConfig) -> list[str]:
    """One line per view naming its ops in order, e.g. ``t2: crop, flip, ... + RandomErasing(p=0.3)``.

    Built-in ops with probability 0 are left out; ``extra`` ops are listed with their arguments.
    """
    from contrastseg.augment.ops.registry import op_label

    lines = []
    for name, pipe in (("t1", config.t1), ("t2", config.t2)):
        ops = ["crop"]
        ops += ["hflip"] if pipe.flip.horizontal_p > 0 else []
        ops += ["vflip"] if pipe.flip.vertical_p > 0 else []
        for op in ("rot90", "rotation", "color", "grayscale", "blur", "noise"):
            if getattr(pipe, op).p > 0:
                ops.append(op)
        extra = " + " + ", ".join(op_label(spec) for spec in pipe.extra) if pipe.extra else ""
        lines.append(f"{name}: {', '.join(ops)}{extra}")
    return lines


def _display_bands(image: Tensor, rgb_bands: Sequence[int] | None) -> Tensor:
    if rgb_bands is not None and max(rgb_bands) < image.shape[0]:
        return image[list(rgb_bands)]
    return image[:1].expand(3, -1, -1)


def _to_uint8(image: Tensor, low: Tensor, high: Tensor) -> np.ndarray:
    scaled = ((image - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return (scaled * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def draw_view_grid(
    images: Tensor,
    pair: ViewPair,
    regions: MatchedRegions | None,
    path: str | os.PathLike[str],
    rgb_bands: Sequence[int] | None = (0, 1, 2),
    percentiles: tuple[float, float] = (2.0, 98.0),
    cell: int = 256,
    margin: int = 4,
    title: Sequence[str] = (),
) -> Path:
    """Write one PNG grid of originals, views and matched regions.

    Args:
        images: ``(B, C, H, W)`` the batch given to ``PairedViews``.
        pair: its :class:`ViewPair`.
        regions: matched regions of ``pair`` (valid pairs are drawn), or ``None``.
        path: the PNG to write (parent folders are created).
        rgb_bands: bands shown as R, G, B; ``None`` (or bands the image lacks) shows the
            first band as grey.
        percentiles: per-image low / high percentiles mapped to black / white.
        cell: side in pixels of each grid cell (images are resized to fit, keeping aspect).
        margin: gap between cells in pixels.
        title: lines written above the grid, wrapped to its width (e.g.
            :func:`describe_views`); none by default.

    Returns:
        The written path.

    Raises:
        ValueError: mismatched shapes or bad percentiles.
    """
    if images.ndim != 4 or pair.view1.shape[0] != images.shape[0]:
        raise ValueError(
            f"draw_view_grid: images {tuple(images.shape)} and views {tuple(pair.view1.shape)} "
            "must be (B, C, H, W) batches of the same size"
        )
    if not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise ValueError(
            f"draw_view_grid: percentiles must satisfy 0 <= low < high <= 100, got {percentiles}"
        )
    batch = images.shape[0]
    width = 3 * cell + 4 * margin
    # The default bitmap font is about 6 x 11 pixels a character: wrap to the grid's width.
    lines = [part for line in title for part in textwrap.wrap(line, max(20, width // 6 - 1))]
    header = 14 * len(lines)
    grid = Image.new("RGB", (width, header + batch * cell + (batch + 1) * margin), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(lines):
        draw.text((margin, margin + 14 * i), line, fill=(0, 0, 0))
    for row in range(batch):
        original = _display_bands(images[row].detach().float().cpu(), rgb_bands)
        q = torch.tensor(percentiles, dtype=torch.float32) / 100
        low, high = torch.quantile(original.reshape(3, -1), q, dim=1)  # (3,) each
        low, high = low.view(3, 1, 1), high.view(3, 1, 1)
        top = header + margin + row * (cell + margin)
        for col, tensor in enumerate((images[row], pair.view1[row], pair.view2[row])):
            shown = _display_bands(tensor.detach().float().cpu(), rgb_bands)
            picture = Image.fromarray(_to_uint8(shown, low, high))
            scale = cell / max(picture.size)
            picture = picture.resize(
                (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                Image.Resampling.NEAREST,
            )
            left = margin + col * (cell + margin)
            grid.paste(picture, (left, top))
            if regions is None or col == 0:
                continue
            boxes = (regions.boxes1 if col == 1 else regions.boxes2)[row].detach().cpu()
            for n, (box, ok) in enumerate(
                zip(boxes.tolist(), regions.valid[row].tolist(), strict=True)
            ):
                if ok:
                    x1, y1, x2, y2 = (v * scale for v in box)
                    draw.rectangle(
                        (left + x1, top + y1, left + x2 - 1, top + y2 - 1),
                        outline=PALETTE[n % len(PALETTE)],
                        width=2,
                    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def preview_views(
    images: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    config: ViewsConfig | None = None,
    num_regions: int = 4,
    region_size: int = 48,
    seed: int = 0,
    cell: int = 256,
) -> Path:
    """Make the two views of a few images, match regions and write the PNG grid.

    What ``contrastseg views`` runs. Images of different sizes are centre-cropped to the
    smallest common height and width first (a preview, not training).

    Args:
        images: ``(B, C, H, W)`` float batch, or a sequence of ``(C, H, W)`` float images
            with the same band count (e.g. read from a folder, scaled to ``[0, 1]``).
        path: the PNG to write.
        config: the views recipe (``None``: GLCNet defaults); its ``rgb_bands`` are shown.
        num_regions: region pairs per image.
        region_size: region side in view pixels.
        seed: seed of the generator (same seed, same picture).
        cell: side in pixels of each grid cell.

    Returns:
        The written path.

    Raises:
        ValueError: no images, or images with different band counts.
    """
    if isinstance(images, Tensor):
        batch = images
    else:
        items = list(images)
        if (
            not items
            or len({int(t.shape[0]) for t in items}) != 1
            or any(t.ndim != 3 for t in items)
        ):
            shapes = [tuple(t.shape) for t in items]
            raise ValueError(
                f"preview_views needs (C, H, W) images with one band count, got {shapes}"
            )
        height = min(int(t.shape[1]) for t in items)
        width = min(int(t.shape[2]) for t in items)
        batch = torch.stack(
            [
                t[:, (t.shape[1] - height) // 2 :][:, :height, (t.shape[2] - width) // 2 :][
                    :, :, :width
                ]
                for t in items
            ]
        )
    config = config if config is not None else ViewsConfig()
    generator = torch.Generator(device=batch.device).manual_seed(seed)
    pair = PairedViews(config)(batch, generator)
    regions = match_regions(
        pair.index1,
        pair.index2,
        num_regions,
        region_size,
        generator,
        num_source_pixels=batch.shape[-2] * batch.shape[-1],
    )
    # The recipe goes above the grid when it has ops beyond the built-in ones.
    title = describe_views(config) if config.t1.extra or config.t2.extra else ()
    return draw_view_grid(
        batch, pair, regions, path, rgb_bands=config.rgb_bands, cell=cell, title=title
    )
