"""Every architecture side by side: parameters, decoder stride and CPU inference speed.

Each network of ``model.name`` is built with its defaults at ResNet-50 (SegNet: VGG16-BN, its
one backbone), 4 bands and 6 classes, and timed in eval mode (``torch.no_grad``) on batches
of one ``256 x 256`` image, all in one process pinned to one CPU with one torch thread, so
that the numbers compare the networks and not the machine's load at different times. Reported
per network: parameters (all, the encoder parts, the rest), the decoder features' stride and
channels, and images per second (the median of ``--repeats`` timed calls after one warm-up).

Usage::

    python benchmarks/architectures.py [--quick] [--size 256] [--repeats 3] [--cpu 0]
        [--out benchmarks/results/architectures.json]

``--quick`` (128 px, one repeat) writes to ``benchmarks/results/quick/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, time_it, write_json

from contrastseg.models import MODELS, build_model, model_config

BANDS, CLASSES = 4, 6
#: the backbone each network is measured on (SegNet has one: VGG16-BN)
BACKBONE = {"segnet": ("vgg16_bn", 32)}


def measure(name: str, size: int, repeats: int) -> dict[str, Any]:
    """Parameters, decoder stride / channels and images per second of network ``name``."""
    torch.manual_seed(0)
    arch, stride = BACKBONE.get(name, ("resnet50", None))
    settings = {"arch": arch} | ({"output_stride": stride} if stride else {})
    config = model_config(name, **settings)
    net = build_model(config, BANDS, CLASSES).eval()
    encoder = {p for p in net.encoder_parts}
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    x = torch.rand(1, BANDS, size, size)
    with torch.no_grad():
        times = time_it(lambda: net(x), torch.device("cpu"), repeats=repeats, warmup=1)
    return {
        "name": name,
        "backbone": arch,
        "output_stride": config.output_stride,
        "params": count([net]),
        "encoder_params": count(net.part_modules(tuple(encoder))),
        "decoder_params": count([net]) - count(net.part_modules(tuple(encoder))),
        "decoder_stride": net.feature_stride("decoder"),
        "decoder_channels": net.decoder_channels,
        "seconds": statistics.median(times),
        "images_per_s": 1.0 / statistics.median(times),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 px, one repeat")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per network")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the process is pinned to")
    parser.add_argument("--names", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/architectures.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 128, 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    rows = [measure(name, args.size, args.repeats) for name in args.names]
    print_table(
        ["name", "backbone", "os", "params M", "decoder M", "dec. stride", "img/s"],
        [
            [r["name"], r["backbone"], r["output_stride"], r["params"] / 1e6,
             r["decoder_params"] / 1e6, r["decoder_stride"], r["images_per_s"]]
            for r in rows
        ],
    )  # fmt: skip
    report = {
        "benchmark": "architectures",
        "machine": machine_info(),
        "settings": {"bands": BANDS, "classes": CLASSES, "size": args.size,
                     "repeats": args.repeats, "threads": 1, "cpu": args.cpu},
        "results": rows,
    }  # fmt: skip
    print(f"wrote {write_json(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
