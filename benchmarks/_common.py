"""Shared bits of the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Machine, versions and device, for the JSON a benchmark writes."""
    import contrastseg

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "contrastseg": contrastseg.__version__,
    }
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        pass
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(
    fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


#: The committed results; a ``--quick`` run writes into its ``quick/`` folder instead (ignored by git).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_device_argument(parser: Any) -> None:
    """``--device cpu | cuda`` on an ``argparse`` parser, CUDA where there is one."""
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )


def default_out(name: str, quick: bool) -> str:
    """Where a benchmark writes without ``--out``: the committed ``benchmarks/results/<name>.json``,
    or for a ``--quick`` (or ``--tiny``) run a file in the temporary folder, never the
    committed one."""
    if quick:
        return str(Path(tempfile.gettempdir()) / "contrastseg-benchmarks" / f"{name}.json")
    return f"benchmarks/results/{name}.json"


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating parent folders; returns the path.

    A ``--quick`` run never replaces a committed result: a path in ``benchmarks/results/`` goes
    to ``benchmarks/results/quick/`` instead.
    """
    path = Path(path)
    if "--quick" in sys.argv and path.resolve().parent == RESULTS_DIR:
        path = RESULTS_DIR / "quick" / path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def rss_peak_bytes() -> int:
    """This process's resident-set high-water mark (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory_bytes(step: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """Run ``step`` once; returns its result and the peak memory it added.

    CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before. CPU: the growth
    of the resident high-water mark, meaningful in a fresh process (run each case in one).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = step()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    before = rss_peak_bytes()
    result = step()
    return result, rss_peak_bytes() - before
