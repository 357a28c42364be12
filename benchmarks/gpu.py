"""Everything the README leaves to a GPU, in one run that writes one JSON (``bash benchmarks/gpu.sh``).

On one CUDA GPU, within 8 minutes (each stage stops at its time limit: 270, 60 and 150 s;
not yet timed on a GPU), it runs the package's own benchmarks at the paper's size and
gathers their figures:

1. **pretraining step** (``pretrain_step.py``): GLCNet, ResNet-50, 224 px views, batch 64,
   bf16 autocast, channels_last, with ``torch.compile`` off and on: images/s with and without
   the data loader, the fraction of the device's peak bf16 FLOP/s, the views + matching share
   of a step, the step's time split (views, matching, forward, backward, optimizer) and the
   peak memory;
2. **NT-Xent** at N = 4096 (``losses.py``): time and peak memory of the package's loss
   against the naive broadcast form;
3. **against the peer composition** (``vs_peers.py``, when its optional extra ``peers`` is
   installed): the images/s ratio of contrastseg's GLCNet and SimCLR steps to an smp
   DeepLabV3+ with lightly's NT-Xent and per-sample views and matching in DataLoader workers
   (batch 64, 4 workers, fp32 on both sides; the cases measured before its limit are kept).

Each stage runs in its own process with a time limit; a failing stage is recorded with its
error and the others still run. The summary (``--out``, default
``benchmarks/results/gpu.json``) holds the headline figures and each stage's full output.

``--tiny`` runs the same stages at a toy size (ResNet-18, 32 px, batch 2, fp32, no compile)
on any device in about a minute: what the test suite runs on the CPU, and a check that a GPU
machine is set up before spending the budget. It writes ``gpu_tiny.json`` unless ``--out``
is given, never the committed results.

Usage::

    bash benchmarks/gpu.sh                          # one GPU, the paper's size
    bash benchmarks/gpu.sh --tiny --device cpu      # the smoke size, anywhere
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

import _common
from _common import add_device_argument, machine_info, write_json

HERE = Path(__file__).resolve().parent


def default_out(tiny: bool) -> str:
    """Where the summary goes without ``--out``: a tiny run never replaces the committed file."""
    return _common.default_out("gpu", tiny)


def stages(args: argparse.Namespace, tmp: Path) -> dict[str, list[str]]:
    """The command line of each stage (``--out`` into ``tmp``)."""
    device = ["--device", args.device]
    if args.tiny:
        step = ["--archs", "resnet18", "--batch-sizes", "2", "--toggle-batch", "2",
                "--amp", "off", "--channels-last", "on", "--compile", "off",
                "--view-size", "32", "--steps", "2", "--warmup", "1", "--workers", "0",
                "--threads", str(args.threads or 1), "--in-process"]  # fmt: skip
        losses = ["--sizes", "64", "--dims", "32", "--repeats", "2", "--quick"]
        peers = ["--quick"]
    else:
        step = ["--archs", "resnet50", "--batch-sizes", str(args.batch), "--toggle-batch",
                str(args.batch), "--amp", "bf16", "--channels-last", "on", "--compile", "both",
                "--view-size", "224", "--steps", "10", "--warmup", "3",
                "--workers", str(args.workers)]  # fmt: skip
        losses = ["--sizes", "4096", "--dims", "128"]
        # a bounded grid (vs_peers' defaults are 40 cases): 1 thread, 4 loader workers, the
        # peer on smp's network and on contrastseg's, both sizes, both methods (8 cases)
        peers = ["--threads", "1", "--paper-threads", "1", "--workers", "4",
                 "--paper-workers", "4", "--batch", "64", "--paper-batch", "64"]  # fmt: skip
    python = [sys.executable]
    out = {
        "pretrain_step": [*python, str(HERE / "pretrain_step.py"), *device, *step],
        "nt_xent": [*python, str(HERE / "losses.py"), *device, *losses],
    }
    if (HERE / "vs_peers.py").is_file():
        out["vs_peers"] = [*python, str(HERE / "vs_peers.py"), *device, *peers]
    return {name: [*cmd, "--out", str(tmp / f"{name}.json")] for name, cmd in out.items()}


def peers_installed() -> bool:
    """Whether the optional extra ``peers`` (smp and lightly) is importable."""
    return all(importlib.util.find_spec(m) for m in ("segmentation_models_pytorch", "lightly"))


def run_stage(name: str, cmd: list[str], out: Path, limit: float) -> dict[str, Any]:
    """One stage in its own process: its JSON, or the error and the end of its output."""
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        stopped: dict[str, Any] = {"error": f"over its {limit:.0f} s limit", "output_tail": tail}
        if out.is_file():  # a stage that writes as it goes (vs_peers) keeps what it measured
            stopped["partial_result"] = json.loads(out.read_text())
        return stopped
    seconds = time.perf_counter() - start
    sys.stderr.write(proc.stdout[-4000:])
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"exit code {proc.returncode}", "seconds": seconds, "output_tail": tail}
    return {"seconds": seconds, "result": json.loads(out.read_text())}


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures the README quotes, taken from the stages' outputs."""
    figures: dict[str, Any] = {}
    step = results.get("pretrain_step", {}).get("result")
    if step:
        for case in step["cases"]:
            if "images_per_s" not in case:
                continue
            key = f"{case['arch']}_b{case['batch']}_{case['amp']}_" + (
                "compiled" if case["compile"] else "eager"
            )
            figures[key] = {
                name: case.get(name)
                for name in ("images_per_s", "images_per_s_with_data", "data_wait_fraction",
                             "fraction_of_peak", "views_matching_share", "peak_memory_mib",
                             "compile_step_s", "step_split")
            }  # fmt: skip
    losses = results.get("nt_xent", {}).get("result")
    if losses:
        for case in losses["cases"]:
            ours, naive = case["nt_xent"], case["naive"]
            figures[f"nt_xent_N{case['N']}_D{case['D']}"] = {
                "ms": 1e3 * ours["time_s"] if "time_s" in ours else None,
                "peak_mib": ours["peak_bytes"] / 2**20 if "peak_bytes" in ours else None,
                "naive_over_ours_time": naive["time_s"] / ours["time_s"]
                if "time_s" in naive and "time_s" in ours
                else None,
            }
    peers = results.get("vs_peers", {})
    peers = peers.get("result") or peers.get("partial_result")
    if peers:
        figures["vs_peers"] = peers.get("summary", peers.get("ratios"))
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the stages (``argv`` as on the command line); returns what it writes as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy size, any device (a smoke test)")
    add_device_argument(parser)
    parser.add_argument("--out", default=None, help="default benchmarks/results/gpu.json")
    parser.add_argument("--batch", type=int, default=64, help="images per step (paper size)")
    parser.add_argument("--workers", type=int, default=8, help="loader workers (paper size)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (tiny: 1)")
    parser.add_argument("--stage-limit", type=float, default=None, help="seconds per stage")
    parser.add_argument("--skip", nargs="*", default=[], help="stages to leave out")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.sh: torch.cuda.is_available() is False on this machine; "
            "--tiny --device cpu runs the smoke size here"
        )
    if not args.tiny and args.device == "cpu":
        raise SystemExit("benchmarks/gpu.sh: the paper's size needs --device cuda (or --tiny)")
    out = Path(args.out or default_out(args.tiny))
    # within 8 minutes in all on one GPU: each stage stops at its limit (vs_peers keeps the
    # cases it measured); --stage-limit sets one limit for every stage
    limits = {"pretrain_step": 270, "nt_xent": 60, "vs_peers": 150}
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        for name, cmd in stages(args, Path(tmp)).items():
            if name in args.skip:
                results[name] = {"skipped": "--skip"}
            elif name == "vs_peers" and not peers_installed():
                results[name] = {"skipped": "the extra 'peers' is not installed: "
                                            "pip install -e '.[peers]'"}  # fmt: skip
            else:
                limit = args.stage_limit or (300 if args.tiny else limits[name])
                results[name] = run_stage(name, cmd, Path(tmp) / f"{name}.json", limit)
    report = {
        "benchmark": "gpu",
        "tiny": args.tiny,
        "machine": machine_info(torch.device(args.device)),
        "seconds": time.perf_counter() - started,
        "headline": headline(results),
        "stages": results,
    }
    failed = [n for n, r in results.items() if "error" in r]
    print(json.dumps(report["headline"], indent=1))
    print(f"wrote {write_json(out, report)} in {report['seconds']:.0f} s"
          + (f"; failed stages: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return report


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()["stages"].values()) else 0)
