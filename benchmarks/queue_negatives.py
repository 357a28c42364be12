"""What a queue of negatives (``method.queue_size``) buys: the online probe with and without it.

Runs ``configs/quickstart.yaml`` (GLCNet on the demo scenes, batch 16) twice per seed, one run
after the other, identical but for ``method.queue_size`` (0, then ``--queue-size``), with the
online probe every ``--every`` steps (the demo preset's labeled scenes), and reports each
run's probe mIoU / kappa curve and its seconds per step (the run's wall time less its probes',
divided by its steps, and the median over the log windows without a probe, after the first).
The runs live in a temporary folder under /tmp.

(Not named ``queue.py``: every benchmark script runs with this folder first on ``sys.path``, where
a ``queue.py`` would shadow the standard library's ``queue`` that torch imports.)

    python benchmarks/queue_negatives.py [--quick] [--steps 56] [--every 14] [--queue-size 1024]
        [--seeds 0] [--threads 1] [--out benchmarks/results/queue.json]

The defaults are the committed result's settings: the quickstart's own 56 steps (4 epochs), a
probe per epoch, one seed (what a 2-core CPU shared with other jobs allowed); longer runs and
more seeds: ``--steps 300 --every 50 --seeds 0 1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json

from contrastseg.config import load_pretrain_config
from contrastseg.train.pretrain import run_pretrain

PROBE_KEYS = ("miou", "kappa", "overall_accuracy", "seconds")


def one_run(work: str, name: str, steps: int, every: int, seed: int, queue: int) -> dict:
    """One quickstart pretraining run; its probe curve, losses and timing."""
    overrides = [
        f"run.root={work}", f"run.name={name}", "run.progress=false", "run.image_every=0",
        f"run.checkpoint_every={steps}", f"probe.every={every}", "train.num_workers=0",
        f"train.max_steps={steps}", f"train.seed={seed}", f"method.queue_size={queue}",
    ]  # fmt: skip
    config = load_pretrain_config(None, overrides)
    start = time.perf_counter()
    run_pretrain(config)
    seconds = time.perf_counter() - start
    lines = (Path(work) / name / "scalars.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    probes = [
        {"step": r["step"], **{k: r[f"probe/{k}"] for k in PROBE_KEYS}}
        for r in records
        if "probe/miou" in r
    ]
    losses = [
        {"step": r["step"], **{k[5:]: r[k] for k in r if k.startswith("loss/")}}
        for r in records
        if "loss/total" in r
    ]
    probe_seconds = sum(p["seconds"] for p in probes)
    # the training steps alone: the log windows without a probe, after the first (warm-up)
    windows = [
        config.train.batch_size / r["throughput/images_per_s"]
        for r in records[1:]
        if "throughput/images_per_s" in r and "probe/miou" not in r
    ]
    return {
        "seed": seed,
        "queue_size": queue,
        "steps": steps,
        "run_seconds": seconds,
        "probe_seconds": probe_seconds,
        "seconds_per_step": statistics.median(windows) if windows else None,
        "seconds_per_step_overall": (seconds - probe_seconds) / steps,
        "probes": probes,
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 steps, a probe every 6, seed 0")
    parser.add_argument("--steps", type=int, default=56)
    parser.add_argument("--every", type=int, default=14)
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/queue.json")
    args = parser.parse_args()
    # torch is imported above, so OMP_NUM_THREADS would come too late: pin its pool directly
    torch.set_num_threads(args.threads)
    steps, every, seeds = args.steps, args.every, args.seeds
    if args.quick:
        steps, every, seeds = 12, 6, [0]
    machine = machine_info(torch.device("cpu"))
    settings = {
        "config": "quickstart.yaml",
        "method": "glcnet",
        "steps": steps,
        "probe_every": every,
        "queue_sizes": [0, args.queue_size],
        "seeds": seeds,
        "threads": args.threads,
        "quick": args.quick,
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as work:
        for seed in seeds:
            for queue in (0, args.queue_size):  # one after the other, never in parallel
                run = one_run(work, f"seed{seed}-q{queue}", steps, every, seed, queue)
                runs.append(run)
                final = run["probes"][-1]
                print(
                    f"seed {seed}, queue {queue}: probe mIoU {100 * final['miou']:.2f} at step "
                    f"{final['step']}, {run['seconds_per_step'] or 0:.3f} s/step",
                    flush=True,
                )
                # after every run, so that an interrupted benchmark keeps the runs it finished
                write_json(args.out, {"benchmark": "queue", "machine": machine,
                                      "settings": settings, "runs": runs, "complete": False})  # fmt: skip
    rows = []
    for run in runs:
        for probe in run["probes"]:
            rows.append([
                run["seed"], run["queue_size"], probe["step"], f"{100 * probe['miou']:.2f}",
                f"{100 * probe['kappa']:.2f}", f"{run['seconds_per_step'] or 0:.3f}",
            ])  # fmt: skip
    print_table(["seed", "queue", "step", "probe mIoU %", "kappa %", "s/step"], rows)
    summary = {}
    for queue in (0, args.queue_size):
        mine = [r for r in runs if r["queue_size"] == queue]
        if not mine:
            continue
        summary[str(queue)] = {
            "final_miou_mean": statistics.mean(r["probes"][-1]["miou"] for r in mine),
            "final_kappa_mean": statistics.mean(r["probes"][-1]["kappa"] for r in mine),
            "best_miou_mean": statistics.mean(max(p["miou"] for p in r["probes"]) for r in mine),
            "seconds_per_step_mean": statistics.mean(r["seconds_per_step"] or 0 for r in mine),
            "seconds_per_step_overall_mean": statistics.mean(
                r["seconds_per_step_overall"] for r in mine
            ),
        }
    for queue, values in summary.items():
        print(
            f"queue {queue}: final mIoU {100 * values['final_miou_mean']:.2f} %, kappa "
            f"{100 * values['final_kappa_mean']:.2f} %, {values['seconds_per_step_mean']:.3f} "
            f"s/step (mean over seeds {seeds})"
        )
    path = write_json(
        args.out,
        {
            "benchmark": "queue",
            "machine": machine,
            "settings": settings,
            "summary": summary,
            "runs": runs,
            "complete": True,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
