"""Time and peak memory of ``nt_xent`` against a naive broadcast cosine-similarity NT-Xent.

The naive form (as in the official GLCNet code) builds the ``(2N, 2N)`` similarity matrix
by broadcasting ``(2N, 1, D)`` against ``(1, 2N, D)`` in ``F.cosine_similarity``, which
materialises a ``(2N, 2N, D)`` tensor; ``nt_xent`` normalises first and takes one matmul,
so its largest intermediate is ``(2N, 2N)``. Each case times one forward + backward pass
with respect to the embeddings.

Peak memory, honestly measured:

* ``--device cuda``: ``torch.cuda.max_memory_allocated`` during one forward + backward,
  minus what was allocated before it (the inputs), in this process.
* ``--device cpu``: every case runs in a fresh subprocess; the peak is the growth of the
  process's resident-set high-water mark (``getrusage().ru_maxrss``) over one forward +
  backward, so it counts what the allocator really touched (plus a few MiB of one-off
  runtime initialisation that both forms pay).

Naive cases whose estimated peak, ``NAIVE_PEAK_FACTOR`` times the ``(2N, 2N, D)`` float32
tensor (measured on CPU: about 3x at N = 256, 6x at N = 1024), would pass the memory
budget (``--naive-budget-gib``; by default 2 GiB with ``--quick``, else a third of the
available memory on CPU, twice the GPU memory on CUDA, where an out-of-memory error is
caught and reported) are skipped, marked so in the table.

Usage::

    python benchmarks/losses.py [--quick] [--device cpu|cuda] [--out benchmarks/results/losses.json]
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
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))

import _common
from _common import (
    add_device_argument,
    machine_info,
    peak_memory_bytes,
    print_table,
    time_it,
    write_json,
)

from contrastseg.losses.ntxent import nt_xent

SIZES = (256, 1024, 4096)
DIMS = (64, 128)
TEMPERATURE = 0.5
NAIVE_PEAK_FACTOR = 6


def naive_nt_xent(z1: Tensor, z2: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """NT-Xent through a broadcast cosine similarity: materialises ``(2N, 2N, D)``."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    sim = F.cosine_similarity(z[:, None, :], z[None, :, :], dim=-1) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


IMPLS = {
    "nt_xent": lambda z1, z2: nt_xent(z1, z2, TEMPERATURE, gather=False),
    "naive": naive_nt_xent,
}


def run_case(impl: str, n: int, d: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """Peak extra memory of one forward + backward, then its median time over ``repeats``."""
    gen = torch.Generator().manual_seed(n + d)
    z1 = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    z2 = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    fn = IMPLS[impl]

    def step() -> Tensor:
        z1.grad = z2.grad = None
        loss = fn(z1, z2)
        loss.backward()
        return loss

    loss, peak = peak_memory_bytes(step, device)
    times = time_it(step, device, repeats=repeats, warmup=0)
    return {
        "loss": loss.item(),
        "peak_bytes": int(peak),
        "time_s": statistics.median(times),
        "times_s": times,
    }


def _run_in_subprocess(impl: str, n: int, d: int, repeats: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"{impl},{n},{d}",
        "--repeats",
        str(repeats),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller naive budget")
    add_device_argument(parser)
    parser.add_argument(
        "--out", default=None, help="default results/losses.json (--quick: the temporary folder)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case")
    parser.add_argument(
        "--naive-budget-gib", type=float, default=None, help="skip naive cases above this"
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="batch sizes N")
    parser.add_argument("--dims", nargs="+", type=int, default=list(DIMS), help="embedding sizes D")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or _common.default_out("losses", args.quick)
    device = torch.device(args.device)
    repeats = args.repeats or (5 if args.quick else 10)

    if args.child:  # one CPU case in a fresh process, result as a JSON line
        impl, n, d = args.child.split(",")
        print(json.dumps(run_case(impl, int(n), int(d), device, repeats)))
        return

    if args.naive_budget_gib is not None:
        budget = args.naive_budget_gib * 2**30
    elif device.type == "cuda":
        # On a GPU, trying and catching an out-of-memory error is cheap: attempt up to 2x.
        budget = torch.cuda.get_device_properties(device).total_memory * (
            0.125 if args.quick else 2
        )
    else:
        budget = 2 * 2**30 if args.quick else _available_bytes() / 3

    rows, records = [], []
    for n in args.sizes:
        for d in args.dims:
            naive_tensor = (2 * n) ** 2 * d * 4
            result: dict[str, dict[str, Any]] = {}
            for impl in IMPLS:
                if impl == "naive" and NAIVE_PEAK_FACTOR * naive_tensor > budget:
                    result[impl] = {
                        "skipped": "naive skipped: needs "
                        f"~{NAIVE_PEAK_FACTOR * naive_tensor / 2**30:.0f} GiB"
                        f" > budget {budget / 2**30:.1f} GiB"
                    }
                    continue
                try:
                    if device.type == "cuda":
                        result[impl] = run_case(impl, n, d, device, repeats)
                    else:
                        result[impl] = _run_in_subprocess(impl, n, d, repeats)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    result[impl] = {"error": "out of memory"}
            ours, naive = result["nt_xent"], result["naive"]
            ok = "time_s" in ours and "time_s" in naive
            note = naive.get("skipped") or naive.get("error") or ours.get("error") or ""
            rows.append(
                [
                    n,
                    d,
                    1e3 * ours["time_s"] if "time_s" in ours else "-",
                    1e3 * naive["time_s"] if "time_s" in naive else "-",
                    naive["time_s"] / ours["time_s"] if ok else "-",
                    ours["peak_bytes"] / 2**20 if "peak_bytes" in ours else "-",
                    naive["peak_bytes"] / 2**20 if "peak_bytes" in naive else "-",
                    naive["peak_bytes"] / max(ours["peak_bytes"], 1) if ok else "-",
                    abs(ours["loss"] - naive["loss"]) if ok else "-",
                    note,
                ]
            )
            records.append(
                {
                    "N": n,
                    "D": d,
                    "largest_intermediate_bytes": {
                        "nt_xent": (2 * n) ** 2 * 4,
                        "naive": naive_tensor,
                    },
                    "nt_xent": ours,
                    "naive": naive,
                }
            )
            print(f"done N={n} D={d}", file=sys.stderr, flush=True)

    print(f"\nNT-Xent forward+backward, device {device}, median of {repeats} calls")
    print_table(
        [
            "N",
            "D",
            "nt_xent ms",
            "naive ms",
            "time naive/ours",
            "nt_xent MiB",
            "naive MiB",
            "mem naive/ours",
            "|loss diff|",
            "note",
        ],
        rows,
    )
    memory = (
        "torch.cuda.max_memory_allocated over one forward+backward minus allocated before"
        if device.type == "cuda"
        else "growth of ru_maxrss (resident high-water mark) over one forward+backward, "
        "fresh subprocess per case"
    )
    print(f"peak memory: {memory}")
    path = write_json(
        args.out,
        {
            "benchmark": "losses",
            "machine": machine_info(device),
            "device": str(device),
            "quick": args.quick,
            "repeats": repeats,
            "temperature": TEMPERATURE,
            "naive_budget_bytes": int(budget),
            "peak_memory_method": memory,
            "cases": records,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
