"""Throughput of batched paired views + region matching against a per-sample worker path.

Batched path (contrastseg): ``PairedViews`` (GLCNet t1/t2, index maps) and ``match_regions``
on the whole batch, on ``--device``. Per-sample path: what a DataLoader worker of the
official GLCNet code does, one image at a time on the CPU: torchvision v2 functional ops
for the views (resized crop of the image and of an index image, flips, rot90, colour jitter,
grayscale, blur, noise), then the matching by Python set searches over every pixel
(``set`` intersection of the candidate source pixels, ``random.sample``, ``np.argwhere``
per chosen centre). Both paths run in this process, side by side, with the same number
of torch threads (``--threads``; a worker normally runs with one), and report images/s
and the ratio, for matching alone and for views + matching.

The batched path allocates a few large temporaries per call (index tables of several MB).
With glibc's default malloc such blocks are returned to the kernel when freed and
page-faulted in again on the next call, which on some machines (virtual machines above
all) costs more than the kernels; the table reports the page faults per image of each
path. ``--keep-freed-memory`` reruns the benchmark with glibc told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, what jemalloc or tcmalloc do by
default), for both paths alike.

The view pipeline against the native engine it replaced: ``benchmarks/view_pipeline.py``.

With ``--device cuda`` the batched path also reports its share of an approximate ResNet-50
GLCNet training step (DeepLabV3+ forward of both views, encoder + decoder, backward, Adam
step; heads and losses omitted, they are negligible).

Usage::

    python benchmarks/augment.py [--quick] [--device cpu|cuda] [--keep-freed-memory]
                                 [--threads 1] [--out benchmarks/results/augment.json]

``--quick`` writes to the temporary folder unless ``--out`` is given, so a smoke run never
replaces the committed results.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).parent))

import _common
from _common import machine_info, print_table, time_it, write_json

from contrastseg.augment import PairedViews, ViewsConfig, match_regions

NUM_REGIONS = 4
REGION_SIZE = 48
#: glibc: serve every block from the heap and never trim it (both values in bytes).
KEEP_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


def default_out(quick: bool) -> str:
    """The committed results file, or with ``quick`` one in the temporary folder."""
    return _common.default_out("augment", quick)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class PerSampleWorker:
    """The per-sample path: views with torchvision, matching with Python sets (one image per call)."""

    def __init__(self, config: ViewsConfig, seed: int = 0) -> None:
        self.config = config
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        t2 = config.t2
        self.jitter = T.ColorJitter(
            t2.color.brightness, t2.color.contrast, t2.color.saturation, t2.color.hue
        )

    def _crop(self, image: torch.Tensor, index: torch.Tensor, scale, ratio):
        size = self.config.size
        top, left, h, w = T.RandomResizedCrop.get_params(
            image, scale=list(scale), ratio=list(ratio)
        )
        view = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        idx = TF.resized_crop(
            index, top, left, h, w, [size, size], interpolation=T.InterpolationMode.NEAREST
        )
        return view, idx

    def views(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        _, height, width = image.shape
        index = torch.arange(1, height * width + 1, dtype=torch.int32).view(1, height, width)
        view1, index1 = self._crop(image, index, cfg.t1.crop.scale, cfg.t1.crop.ratio)
        view2, index2 = self._crop(image, index, cfg.t2.crop.scale, cfg.t2.crop.ratio)
        t2, r = cfg.t2, self.rng.random
        if r() < t2.flip.horizontal_p:
            view2, index2 = TF.horizontal_flip(view2), TF.horizontal_flip(index2)
        if r() < t2.flip.vertical_p:
            view2, index2 = TF.vertical_flip(view2), TF.vertical_flip(index2)
        if r() < t2.rot90.p:
            k = self.rng.randint(1, 3)
            view2, index2 = torch.rot90(view2, k, (-2, -1)), torch.rot90(index2, k, (-2, -1))
        if r() < t2.color.p:
            view2 = self.jitter(view2)
        if r() < t2.grayscale.p:
            view2 = TF.rgb_to_grayscale(view2, num_output_channels=3)
        if r() < t2.blur.p:
            sigma = self.rng.uniform(*t2.blur.sigma)
            view2 = TF.gaussian_blur(view2, [9, 9], [sigma, sigma])
        if r() < t2.noise.p:
            view2 = (view2 + torch.randn_like(view2) * self.rng.uniform(*t2.noise.std)).clamp(0, 1)
        return view1, view2, index1[0], index2[0]

    def match(self, index1: np.ndarray, index2: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Set searches: source pixels with a fitting window in both views, then argwhere."""
        half, size = REGION_SIZE // 2, REGION_SIZE
        h, w = index1.shape
        inner = (slice(half, h - size + half + 1), slice(half, w - size + half + 1))
        common = (set(index1[inner].ravel().tolist()) & set(index2[inner].ravel().tolist())) - {0}
        chosen = self.rng.sample(sorted(common), min(NUM_REGIONS, len(common)))
        pairs = []
        for v in chosen:
            r1, c1 = next(
                (int(r), int(c))
                for r, c in np.argwhere(index1 == v)
                if half <= r <= h - size + half and half <= c <= w - size + half
            )
            r2, c2 = next(
                (int(r), int(c))
                for r, c in np.argwhere(index2 == v)
                if half <= r <= h - size + half and half <= c <= w - size + half
            )
            pairs.append((r1, c1, r2, c2))
        return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--out",
        default=None,
        help="JSON to write (default benchmarks/results/augment.json; with --quick, a file in "
        "the temporary folder, so the committed results stay)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="images per batch (default 16 quick, 64 full)"
    )
    parser.add_argument("--source", type=int, default=256, help="side of the source images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both paths")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="rerun with glibc keeping freed memory (no page faults from reallocation)",
    )
    args = parser.parse_args()
    if args.keep_freed_memory:
        if platform.libc_ver()[0] != "glibc":
            parser.error("--keep-freed-memory sets glibc's malloc; this Python does not use glibc")
        if any(os.environ.get(k) != v for k, v in KEEP_MEMORY_ENV.items()):
            # glibc reads these once, at start-up: run this script again with them set.
            env = {**os.environ, **KEEP_MEMORY_ENV}
            os.execve(sys.executable, sys.orig_argv, env)

    args.out = args.out or default_out(args.quick)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (16 if args.quick else 64)
    repeats = 7 if args.quick else 15
    per_sample_n = 16 if args.quick else 64
    config = ViewsConfig()
    images = torch.rand(
        batch, 3, args.source, args.source, generator=torch.Generator().manual_seed(0)
    )

    # Batched path on the device.
    dev_images = images.to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    views = PairedViews(config)
    pair = views(dev_images, gen)
    n_src = args.source * args.source

    def batched_views() -> None:
        views(dev_images, gen)

    def batched_match() -> None:
        match_regions(
            pair.index1, pair.index2, NUM_REGIONS, REGION_SIZE, gen, num_source_pixels=n_src
        )

    def batched_both() -> None:
        p = views(dev_images, gen)
        match_regions(p.index1, p.index2, NUM_REGIONS, REGION_SIZE, gen, num_source_pixels=n_src)

    # Per-sample path on the CPU, one image at a time.
    worker = PerSampleWorker(config)
    cpu = torch.device("cpu")
    samples = [images[i % batch] for i in range(per_sample_n)]
    outs = [worker.views(s) for s in samples]
    maps = [(a.numpy(), b.numpy()) for _, _, a, b in outs]

    def sample_views() -> None:
        for s in samples:
            worker.views(s)

    def sample_match() -> None:
        for a, b in maps:
            worker.match(a, b)

    def sample_both() -> None:
        for s in samples:
            _, _, a, b = worker.views(s)
            worker.match(a.numpy(), b.numpy())

    # Alternate the two paths call by call, so that load from other processes on a shared
    # machine hits both alike; report medians.
    timed, faults = {}, {}
    for name, fb, fs in (
        ("matching", batched_match, sample_match),
        ("views", batched_views, sample_views),
        ("views+matching", batched_both, sample_both),
    ):
        tb, ts, fault_b, fault_s = _alternate(fb, device, fs, cpu, repeats)
        # The ratio is the median over pairs of adjacent calls, so that a change in the load
        # of a shared machine during the run cancels out of it.
        pair_ratios = [(s / per_sample_n) / (b / batch) for b, s in zip(tb, ts, strict=True)]
        timed[name] = (statistics.median(tb), statistics.median(ts), statistics.median(pair_ratios))
        faults[name] = (
            statistics.median(fault_b) / batch,
            statistics.median(fault_s) / per_sample_n,
        )
    t_both = timed["views+matching"][0]
    rows = []
    results = {}
    for name, (tb, ts, ratio) in timed.items():
        ips_b, ips_s = batch / tb, per_sample_n / ts
        pf_b, pf_s = faults[name]
        rows.append(
            [
                name,
                f"{ips_b:.1f}",
                f"{ips_s:.1f}",
                f"{ratio:.1f}x",
                f"{1e3 * tb / batch:.3f}",
                f"{pf_b:.0f} / {pf_s:.0f}",
            ]
        )
        results[name] = {
            "batched_images_per_s": ips_b,
            "per_sample_images_per_s": ips_s,
            "ratio": ratio,
            "batched_page_faults_per_image": pf_b,
            "per_sample_page_faults_per_image": pf_s,
        }

    step = None
    if device.type == "cuda":
        step = train_step_seconds(batch, config.size, device, repeats)
        results["train_step_s"] = step
        results["views_matching_share_of_step"] = t_both / step

    allocator = "glibc keeping freed memory" if args.keep_freed_memory else "default malloc"
    print(
        f"batched on {device} (batch {batch}), per-sample on cpu ({per_sample_n} images), "
        f"source {args.source}^2 -> views {config.size}^2, {NUM_REGIONS} regions of {REGION_SIZE}, "
        f"{args.threads} torch thread(s), {allocator}"
    )
    print_table(
        [
            "stage",
            "batched img/s",
            "per-sample img/s",
            "ratio (median of call pairs)",
            "batched ms/img",
            "page faults/img (batched / per-sample)",
        ],
        rows,
    )
    if step is not None:
        print(
            f"ResNet-50 GLCNet step (approx.) {step * 1e3:.1f} ms; views+matching = {100 * t_both / step:.1f} %"
        )
    path = write_json(
        args.out,
        {
            "benchmark": "augment",
            "machine": machine_info(device),
            "settings": {
                "device": str(device),
                "batch": batch,
                "per_sample_images": per_sample_n,
                "source": args.source,
                "view": config.size,
                "num_regions": NUM_REGIONS,
                "region_size": REGION_SIZE,
                "threads": args.threads,
                "keep_freed_memory": args.keep_freed_memory,
                "repeats": repeats,
                "quick": args.quick,
            },
            "results": results,
        },
    )
    print(f"wrote {path}")


def _alternate(
    first, first_device: torch.device, second, second_device: torch.device, repeats: int
) -> tuple[list[float], list[float], list[int], list[int]]:
    """Time two callables call by call alternately (load from other processes hits both alike).

    Returns the seconds of each call of ``first`` and ``second`` and the minor page faults of each.
    """
    first(), second()  # warm-up
    t1, t2, faults1, faults2 = [], [], [], []
    for _ in range(repeats):
        start = _minor_faults()
        t1 += time_it(first, first_device, repeats=1, warmup=0)
        middle = _minor_faults()
        t2 += time_it(second, second_device, repeats=1, warmup=0)
        faults1.append(middle - start)
        faults2.append(_minor_faults() - middle)
    return t1, t2, faults1, faults2


def train_step_seconds(batch: int, size: int, device: torch.device, repeats: int) -> float:
    """Median seconds of an approximate GLCNet step: DeepLabV3+ R50 on both views, backward, Adam."""
    from contrastseg.models import DeepLabV3Plus

    model = (
        DeepLabV3Plus(num_classes=None, arch="resnet50")
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2 * batch, 3, size, size, device=device).to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            feats = model.forward_features(x)
            loss = feats.encoder.float().var(dim=(-2, -1)).mean() + feats.decoder.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return statistics.median(time_it(step, device, repeats))


if __name__ == "__main__":
    main()
