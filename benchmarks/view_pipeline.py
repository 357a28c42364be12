"""Time per image of the view pipeline against the native engine it replaced, in one process.

The pipeline (``PairedViews``: every op a Kornia module, the geometric ones composed into
one warp) and the last native engine (``views.engine: native`` of contrastseg at commit
``--baseline``, default a145278, the commit before the pipeline) make the default GLCNet
views of the same batch; the baseline's package is taken from git (``git archive``) into a
temporary folder and imported beside the current one, so both run in this process, on the
same data, timed call by call alternately in process CPU time (the ratio is the median over
adjacent pairs of calls, so that a change of load on a shared machine cancels out). Threads
are pinned (``--threads``, default 1, also for OpenMP / MKL).

Usage::

    python benchmarks/view_pipeline.py [--quick] [--threads 1] [--batches 16 64]
                                       [--baseline a145278] [--out ...]

``--quick`` writes to the temporary folder unless ``--out`` is given, so a smoke run never
replaces the committed results (``benchmarks/results/view_pipeline.json``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common
import torch
from _common import machine_info, print_table, write_json

from contrastseg.augment import PairedViews, ViewsConfig

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = "a145278"


def default_out(quick: bool) -> str:
    """The committed results file, or with ``quick`` one in the temporary folder."""
    return _common.default_out("view_pipeline", quick)


def load_baseline(commit: str, folder: str) -> Callable[[ViewsConfig], Callable]:
    """The ``PairedViews`` of contrastseg at ``commit``, imported beside the current package.

    Returns:
        A function making the baseline's views from a current ``ViewsConfig`` (its fields
        are passed over as they are; the baseline's default engine is the native one).
    """
    archive = Path(folder) / "baseline.tar"
    with archive.open("wb") as out:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "contrastseg"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    if done.returncode != 0:
        raise SystemExit(
            f"--baseline {commit}: git archive failed in {ROOT} ({done.stderr.strip()}); "
            "run from a git checkout that holds that commit"
        )
    with tarfile.open(archive) as tar:
        # our own git archive; the "data" filter where this Python has it (3.10.12+)
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    current = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "contrastseg"}
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, folder)
    try:
        views = importlib.import_module("contrastseg.augment.views")
        config = importlib.import_module("contrastseg.augment.config")
    finally:
        sys.path.remove(folder)
        for name in [k for k in sys.modules if k.split(".")[0] == "contrastseg"]:
            del sys.modules[name]
        sys.modules.update(current)

    def make(cfg: ViewsConfig) -> Callable:
        old = config.ViewsConfig(
            size=cfg.size, rgb_bands=cfg.rgb_bands, value_range=cfg.value_range
        )
        if old.engine != "native":
            raise SystemExit(f"the baseline {commit} does not default to the native engine")
        return views.PairedViews(old)

    return make


def alternate(first: Callable[[], None], second: Callable[[], None], repeats: int):
    """CPU seconds per call of ``first`` and ``second``, called alternately (one warm-up each).

    Process CPU time, not wall time: on a machine shared with other jobs a process waiting
    for a core gets wall time but no CPU time, so CPU time measures the work itself (with
    one thread; the cache and memory bandwidth other jobs take still show).
    """
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.process_time()
            fn()
            out.append(time.process_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 16 only, fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP / MKL threads")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default 16 64")
    parser.add_argument("--source", type=int, default=256, help="side of the source images")
    parser.add_argument("--repeats", type=int, default=None, help="timed call pairs (7 / 21)")
    parser.add_argument(
        "--baseline", default=DEFAULT_BASELINE, help="git commit of the native engine"
    )
    parser.add_argument("--out", default=None, help="JSON to write (default: see --quick)")
    args = parser.parse_args()
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(args.threads)
    torch.set_num_threads(args.threads)
    out = args.out or default_out(args.quick)
    batches = args.batches or ([16] if args.quick else [16, 64])
    repeats = args.repeats or (7 if args.quick else 21)
    config = ViewsConfig()
    with tempfile.TemporaryDirectory() as folder:
        make_baseline = load_baseline(args.baseline, folder)
        pipeline, native = PairedViews(config), make_baseline(config)
        rows, results = [], {}
        for batch in batches:
            images = torch.rand(batch, 3, args.source, args.source)
            g_new, g_old = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
            t_new, t_old = alternate(
                lambda x=images, g=g_new: pipeline(x, g),
                lambda x=images, g=g_old: native(x, g),
                repeats,
            )
            ratio = statistics.median(n / o for n, o in zip(t_new, t_old, strict=True))
            ratios = sorted(n / o for n, o in zip(t_new, t_old, strict=True))
            quartiles = (ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4])
            new_ms = 1e3 * statistics.median(t_new) / batch
            old_ms = 1e3 * statistics.median(t_old) / batch
            results[f"batch_{batch}"] = {
                "pipeline_cpu_ms_per_image": new_ms,
                "native_cpu_ms_per_image": old_ms,
                "pipeline_over_native": ratio,
                "ratio_quartiles": list(quartiles),
            }
            rows.append(
                [
                    str(batch),
                    f"{new_ms:.3f}",
                    f"{old_ms:.3f}",
                    f"{ratio:.3f}x",
                    f"{quartiles[0]:.2f}-{quartiles[1]:.2f}",
                ]
            )
    print(
        f"default GLCNet views, {args.source} px sources -> {config.size} px views, "
        f"{args.threads} thread(s), baseline {args.baseline} (views.engine: native)"
    )
    print_table(
        ["batch", "pipeline CPU ms/img", "native CPU ms/img", "pipeline / native", "quartiles"],
        rows,
    )
    path = write_json(
        out,
        {
            "benchmark": "view_pipeline",
            "machine": machine_info(torch.device("cpu")),
            "settings": {
                "batches": batches,
                "source": args.source,
                "view": config.size,
                "threads": args.threads,
                "repeats": repeats,
                "baseline": args.baseline,
                "quick": args.quick,
            },
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
