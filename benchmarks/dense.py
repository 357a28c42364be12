"""Memory and time per image of the dense method's loss, by the number of cells per image.

The ``dense`` method contrasts matched decoder cells of the two views (see
``contrastseg/methods/dense.py``): ``match_points`` on the index maps, the cells gathered from
the decoder features, the dense head, and NT-Xent over all sampled cells of the batch. Its
memory grows with ``(2 * cells_per_image * batch)^2`` (the logits), which is why cells are
sub-sampled to a fixed number per image: with every cell of a 224 px view (56 x 56 = 3136 at
stride 4) the logits of a batch of 16 alone would take ``(2 * 16 * 3136)^2 * 4`` bytes, 40 GB.

Each case runs the method's part of one step, forward + backward, on fixed decoder features
``(B, 256, 56, 56)`` (what a ResNet DeepLabV3+ gives for 224 px views) and index maps made by
``PairedViews`` (256 px sources, 224 px views, the default GLCNet views). Peak memory is what
the loss adds on top of the features (matching table, gathered cells, head, logits, and their
backward down to the features; the features' own gradient, which any decoder loss costs the
network, is left out):

* ``--device cuda``: ``torch.cuda.max_memory_allocated`` minus what was allocated before;
* ``--device cpu``: each case in a fresh subprocess, the growth of the resident high-water mark
  (``ru_maxrss``) over one forward + backward (allocator caches included).

Usage::

    python benchmarks/dense.py [--quick] [--device cpu|cuda] [--out benchmarks/results/dense.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, peak_memory_bytes, print_table, time_it, write_json

from contrastseg.augment import PairedViews
from contrastseg.augment.config import ViewsConfig
from contrastseg.methods import build_method, method_config
from contrastseg.models import DeepLabV3Plus
from contrastseg.models.base import DeepLabFeatures

CHANNELS, SIDE, SOURCE, VIEW = 256, 56, 256, 224


def run_case(batch: int, cells: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """Peak extra memory of the dense loss (forward + backward) and its median time."""
    torch.manual_seed(0)
    net = DeepLabV3Plus(None, "resnet18", 3, aspp_channels=CHANNELS, decoder_channels=CHANNELS)
    config = method_config("dense", cells_per_image=cells, lam=0.0, gather=False)
    method = build_method(config, net).to(device)
    views = PairedViews(ViewsConfig(size=VIEW)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    pair = views(torch.rand(batch, 3, SOURCE, SOURCE, device=device), generator)
    encoder = torch.randn(batch, CHANNELS, VIEW // 16, VIEW // 16, device=device)
    # The features take no gradient here: their gradient (the size of the features) is what
    # any loss on the decoder costs the network's backward, not this loss's own memory.
    dec1 = torch.randn(batch, CHANNELS, SIDE, SIDE, device=device)
    dec2 = torch.randn(batch, CHANNELS, SIDE, SIDE, device=device)

    def step() -> float:
        method.zero_grad(set_to_none=True)
        inputs = method.prepare(pair, generator, SOURCE * SOURCE)
        out = method(DeepLabFeatures(encoder, dec1), DeepLabFeatures(encoder, dec2), **inputs)
        out["total"].backward()
        return float(out["dense/valid_fraction"])

    valid, peak = peak_memory_bytes(step, device)
    times = time_it(step, device, repeats=repeats, warmup=0)
    return {
        "batch": batch,
        "cells_per_image": cells,
        "valid_fraction": valid,
        "peak_bytes": int(peak),
        "peak_mib_per_image": peak / 2**20 / batch,
        "logits_mib": (2 * batch * cells) ** 2 * 4 / 2**20,
        "time_ms_per_image": 1e3 * statistics.median(times) / batch,
    }


def _in_subprocess(batch: int, cells: int, repeats: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", f"{batch},{cells}", "--repeats", str(repeats),
           "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # a negative code is a signal: the kernel's OOM killer, usually
        why = proc.stderr.strip()[-300:] or f"killed by signal {-proc.returncode}"
        return {"batch": batch, "cells_per_image": cells, "error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, fewer cases and repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/dense.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.child:
        batch, cells = map(int, args.child.split(","))
        print(json.dumps(run_case(batch, cells, torch.device("cpu"), repeats)))
        return
    device = torch.device(args.device)
    batches = [8] if args.quick else [16, 64]
    cell_counts = [16, 64] if args.quick else [16, 64, 256]
    results = []
    for batch in batches:
        for cells in cell_counts:
            if device.type == "cuda":
                result = run_case(batch, cells, device, repeats)
            else:
                result = _in_subprocess(batch, cells, repeats, args.threads)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    rows = [
        [r["batch"], r["cells_per_image"], f"{r.get('peak_mib_per_image', float('nan')):.2f}",
         f"{r.get('logits_mib', float('nan')):.1f}", f"{r.get('time_ms_per_image', float('nan')):.2f}",
         f"{r.get('valid_fraction', float('nan')):.2f}"]
        for r in results
    ]  # fmt: skip
    headers = ["batch", "cells/image", "peak MiB / image", "logits MiB", "ms / image", "valid"]
    print_table(headers, rows)
    path = write_json(
        args.out,
        {
            "benchmark": "dense",
            "machine": machine_info(device),
            "settings": {
                "device": str(device),
                "threads": args.threads,
                "repeats": repeats,
                "features": [CHANNELS, SIDE, SIDE],
                "source": SOURCE,
                "view": VIEW,
            },
            "table": {"headers": headers, "rows": rows},
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
