"""What the online segmentation probe costs: its share of a pretraining run's time.

Runs ``configs/quickstart.yaml`` (GLCNet on the demo scenes, 56 steps) with ``probe.every``
set (default 28: a probe at the middle and at the end, on the demo preset's labeled scenes)
and reports the probes' wall time as a share of the run's, as the run itself logs it
(``probe/share_of_run_time``), with the probe mIoU.

    python benchmarks/probe_cost.py [--quick] [--every 28] [--out benchmarks/results/probe_cost.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json

from contrastseg.config import load_pretrain_config
from contrastseg.train.pretrain import run_pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 steps, a probe every 6")
    parser.add_argument("--every", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/probe_cost.json")
    args = parser.parse_args()
    # torch is imported above, so OMP_NUM_THREADS would come too late: pin its pool directly
    torch.set_num_threads(args.threads)
    every = 6 if args.quick else args.every
    with tempfile.TemporaryDirectory() as work:
        overrides = [f"run.root={work}", "run.name=q", "run.progress=false", "run.image_every=0",
                     f"probe.every={every}", "train.num_workers=0"]  # fmt: skip
        if args.quick:
            overrides.append("train.max_steps=12")
        start = time.perf_counter()
        run_pretrain(load_pretrain_config(None, overrides))
        seconds = time.perf_counter() - start
        lines = (Path(work) / "q" / "scalars.jsonl").read_text().splitlines()
        probes = [r for r in map(json.loads, lines) if "probe/miou" in r]
    rows = [
        [r["step"], f"{100 * r['probe/miou']:.1f}", f"{r['probe/seconds']:.1f}",
         f"{100 * r['probe/share_of_run_time']:.1f}"]
        for r in probes
    ]  # fmt: skip
    print_table(["step", "probe mIoU %", "probe s", "probes' share of the run so far %"], rows)
    path = write_json(
        args.out,
        {
            "benchmark": "probe_cost",
            "machine": machine_info(torch.device("cpu")),
            "settings": {
                "config": "quickstart.yaml",
                "every": every,
                "threads": args.threads,
                "quick": args.quick,
            },
            "run_seconds": seconds,
            "probes": probes,
        },
    )
    print(f"run {seconds:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
