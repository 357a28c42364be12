"""Patch reads from a big tile: windowed reads against decoding the whole tile per patch.

Generates a 6000 x 6000 x 4 uint8 TIFF (ISPRS Potsdam size; a mosaic of synthetic demo
scenes, so it compresses like real imagery) in a temporary folder, in three layouts:
tiled 256 px + deflate, tiled 256 px uncompressed, striped uncompressed (memory-mapped).
For each it times random 224 px patches read with ``read_image(path, window)`` and with a
whole-tile decode per patch (``tifffile.imread`` + crop, what a naive dataset does), and
reports patches/s side by side with their ratio. A last row times the
``UnlabeledDataset`` + ``DataLoader`` path (decode, crop, collate) on the tiled file.

    python benchmarks/io.py [--quick] [--out benchmarks/results/io.json]

``--quick`` uses a 3000 x 3000 tile (and says so in the table and JSON).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json

from contrastseg.data import (
    UnlabeledDataConfig,
    UnlabeledDataset,
    build_loader,
    make_scene,
    read_image,
    tiff_layout,
)
from contrastseg.data.readers import clear_reader_cache

LAYOUTS = {
    "tiled 256, deflate": {"tile": (256, 256), "compression": "zlib"},
    "tiled 256, raw": {"tile": (256, 256)},
    "striped, raw": {},
}


def make_tile(size: int) -> np.ndarray:
    """A ``(size, size, 4)`` uint8 mosaic of 512 px demo scenes."""
    scenes = [np.moveaxis(make_scene(512, 4, seed=s)[0], 0, -1) for s in range(4)]
    reps = -(-size // 512)
    rows = [np.concatenate([scenes[(r + c) % 4] for c in range(reps)], axis=1) for r in range(reps)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def windows(size: int, patch: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, size - patch + 1, (count, 2))


def rate(fn, count: int) -> float:
    """Patches per second of ``fn`` (reading ``count`` patches), best of two runs after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3000 x 3000 tile instead of 6000 x 6000"
    )
    parser.add_argument(
        "--device", default="cpu", help="unused (I/O runs on the host); kept for a uniform CLI"
    )
    parser.add_argument("--out", default="benchmarks/results/io.json")
    parser.add_argument("--patch", type=int, default=224)
    args = parser.parse_args()
    size = 3000 if args.quick else 6000
    patch = args.patch
    n_windowed, n_whole = 400, 2 if not args.quick else 3
    print(
        f"tile {size} x {size} x 4 uint8{' (--quick: smaller than Potsdam 6000 x 6000)' if args.quick else ''}, patch {patch}"
    )
    tile = make_tile(size)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in LAYOUTS.items():
            path = Path(tmp) / f"{name.replace(' ', '').replace(',', '_')}.tif"
            tifffile.imwrite(path, tile, photometric="minisblack", planarconfig="contig", **kwargs)
            clear_reader_cache()
            layout = tiff_layout(path)
            wins = windows(size, patch, n_windowed, seed=0)

            def windowed(path=path, wins=wins) -> None:
                for r, c in wins:
                    read_image(path, (int(r), int(c), patch, patch))

            def whole(path=path, wins=wins) -> None:
                for r, c in wins[:n_whole]:
                    np.ascontiguousarray(tifffile.imread(path)[r : r + patch, c : c + patch])

            fast, slow = rate(windowed, n_windowed), rate(whole, n_whole)
            row = {
                "layout": name, "reader": layout, "file_mb": path.stat().st_size / 2**20,
                "windowed_patches_per_s": fast, "whole_tile_patches_per_s": slow, "ratio": fast / slow,
            }  # fmt: skip
            results.append(row)
            rows.append([name, layout, row["file_mb"], fast, slow, f"{fast / slow:.0f}x"])
            if name.startswith("tiled 256, deflate"):
                config = UnlabeledDataConfig(roots=[str(path)], patch_size=patch, coverage=2.0)
                dataset = UnlabeledDataset(config)
                loader = build_loader(
                    dataset, batch_size=32, num_workers=0, shuffle=True, pin_memory=False
                )
                n_batches = min(len(loader), 10)

                def load(loader=loader, n_batches=n_batches) -> None:
                    for k, _ in enumerate(loader):
                        if k + 1 == n_batches:
                            break

                loader_rate = rate(load, n_batches * 32)
                results.append(
                    {
                        "layout": name,
                        "reader": "UnlabeledDataset+DataLoader(0 workers)",
                        "patches_per_s": loader_rate,
                    }
                )
    print_table(
        ["layout", "reader", "file MiB", "windowed patches/s", "whole-tile patches/s", "ratio"],
        rows,
    )
    print(
        f"UnlabeledDataset + DataLoader (batch 32, main process, tiled deflate): {loader_rate:.0f} patches/s"
    )
    payload = {
        "benchmark": "io",
        "quick": args.quick,
        "tile": [size, size, 4],
        "patch": patch,
        "machine": machine_info(torch.device("cpu")),
        "results": results,
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
