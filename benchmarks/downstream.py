"""What pretraining is worth downstream: fine-tune from SimCLR, GLCNet, dense and random init on few labels.

For one labeled dataset and a compute budget: pretrain with each method (or take
given checkpoints), then fine-tune each start point and a random initialisation at label
fractions 1 % and 10 % — the same labeled patches (the draw depends only on fraction and
seed) and the same seeds for every method — and score the test split once with the weights
selected on validation. Prints kappa, mIoU, OA and mean F1 per method and fraction as
mean ± standard deviation over seeds, and the mIoU ratio to random init.

    python benchmarks/downstream.py --quick                        # demo scenes, CPU minutes
    python benchmarks/downstream.py --data dubai --root ../shared/data/dubai-aerial \
        --pretrain-steps 300 --finetune-steps 150 --seeds 0 1 2    # tens of CPU minutes
    python benchmarks/downstream.py --data dubai --root ... --checkpoint glcnet=runs/x/step.pt
    python benchmarks/downstream.py --quick --decoder unet          # fine-tune as a U-Net
    python benchmarks/downstream.py --data dubai --root ... --mode linear --eval-every 5 \
        --patience 5 --methods glcnet simclr random random:encoder   # the linear probe

In ``--mode linear`` each start is probed on the features its checkpoint trained (GLCNet:
decoder, SimCLR: encoder); ``random:encoder`` probes a random start on encoder features so
that each pretrained start has a random baseline on the same features.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

# Dubai JPEGs cannot be read by window: keep the decoded training images in memory.
os.environ.setdefault("CONTRASTSEG_DECODE_CACHE_MB", "1024")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json

from contrastseg.config import load_pretrain_config
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.pretrain import run_pretrain

METRICS = ("kappa", "miou", "overall_accuracy", "mean_f1")


def model_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"model.arch={args.arch}",
        f"model.aspp_channels={args.width}",
        f"model.decoder_channels={args.width}",
        f"model.unet_channels=[{args.width}, {args.width}]",
        f"model.fpn_channels={args.width}",
    ]


def data_settings(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(pretraining overrides, fine-tuning overrides) for the chosen dataset."""
    if args.data == "demo":
        scenes = ["data.demo.n_scenes=16", f"data.demo.size={args.scene_size}"]
        pre = [*scenes, f"data.patch_size={args.patch}", "data.coverage=4.0"]
        fine = ["data.preset=demo", *scenes, f"data.patch_size={args.patch}"]
        return pre, fine
    root = str(Path(args.root).resolve())
    # the test tile is left out of pretraining as well; masks are not images
    pre = [
        f"data.roots=['{root}']",
        "data.exclude=['*/masks/*', 'Tile 8/*']",
        f"data.patch_size={args.patch}",
        "data.coverage=1.0",
    ]
    fine = ["data.preset=dubai", f"data.root={root}", f"data.patch_size={args.patch}"]
    if args.val:
        fine.append(f"data.val=['{args.val}']")
    return pre, fine


def pretrain(
    method: str, args: argparse.Namespace, work: Path, extra: Sequence[str] = ()
) -> tuple[Path, float]:
    pre_data, _ = data_settings(args)
    views = max(32, args.patch * 3 // 4)
    overrides = [
        f"run.root={work}", f"run.name=pretrain-{method}", "run.progress=false",
        "run.image_every=0", "run.log_every=50", f"method.name={method}",
        f"views.size={views}",
        f"train.max_steps={args.pretrain_steps}", f"train.batch_size={args.pretrain_batch}",
        f"train.num_workers={args.workers}", f"train.device={args.device}",
        "optim.warmup_steps=0", *pre_data, *model_overrides(args),
    ]  # fmt: skip
    if method in ("local", "glcnet"):
        overrides.append(f"method.region_size={max(8, views // 4)}")
    start = time.perf_counter()
    result = run_pretrain(load_pretrain_config(None, [*overrides, *extra]))
    return result.checkpoint, time.perf_counter() - start


def split_start(spec: str) -> tuple[str, str]:
    """``"random:encoder"`` -> ``("random", "encoder")``; no ``:FEATURES`` means ``auto``."""
    method, _, features = spec.partition(":")
    return method, features or "auto"


def finetune(
    spec: str,
    checkpoint: Path | None,
    fraction: float,
    seed: int,
    args,
    work: Path,
    extra: Sequence[str] = (),
) -> dict:
    method, features = split_start(spec)
    _, fine_data = data_settings(args)
    config_file = "finetune_dubai.yaml" if args.data == "dubai" else "finetune_demo.yaml"
    overrides = [
        f"run.root={work}", f"run.name=ft-{method}-{features}-{fraction}-{seed}", "run.progress=false",
        "run.log_every=50", *fine_data, f"data.label_fraction={fraction}", f"data.seed={seed}",
        f"train.seed={seed}", f"train.max_steps={args.finetune_steps}",
        f"train.batch_size={args.batch}", f"train.num_workers={args.workers}",
        f"train.device={args.device}", f"optim.lr={args.lr}", f"mode={args.mode}",
        f"eval.window={args.window}", f"eval.stride={args.window}", "eval.overlays=0",
        f"eval.every={args.eval_every or 1000000}", *model_overrides(args),
        f"model.name={args.decoder}",  # pretrained as DeepLabV3+: another keeps its backbone
    ]  # fmt: skip
    if args.mode == "linear":  # the linear probe: its own lr, patience and features
        overrides += [f"linear.features={features}", f"linear.patience={args.patience}"]
        if args.linear_lr is not None:
            overrides.append(f"linear.lr={args.linear_lr}")
    else:
        overrides.append(f"train.patience={args.patience}")
    if checkpoint is not None:
        overrides.append(f"pretrained.path={checkpoint}")
    start = time.perf_counter()
    result = run_finetune(load_finetune_config(config_file, [*overrides, *extra]))
    selected = torch.load(result.best_checkpoint, weights_only=True)
    return {
        "method": spec, "fraction": fraction, "seed": seed, "seconds": time.perf_counter() - start,
        **{k: result.test_metrics[k] for k in METRICS}, "best_epoch": result.best_epoch,
        "steps": result.step, "val_miou": result.val_metrics["miou"],
        "features": selected["model_config"]["classifier_features"], "decoder": args.decoder,
    }  # fmt: skip


def _mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def summarise(runs: list[dict], methods: list[str], fractions: list[float]) -> list[list]:
    """One row per fraction and start: mean ± std over seeds, and the paired kappa gain.

    The gain is the per-seed difference to the random start probed on the same features (same
    labeled patches, same seed), as mean ± std over seeds.
    """
    rows = []
    for fraction in fractions:
        for method in methods:
            chosen = [r for r in runs if r["method"] == method and r["fraction"] == fraction]
            if not chosen:
                continue
            cells = [_mean_spread([100 * (r[key] or 0.0) for r in chosen]) for key in METRICS]
            baseline = {
                (r["seed"], r["features"]): r
                for r in runs
                if split_start(r["method"])[0] == "random" and r["fraction"] == fraction
            }
            gains = [
                100 * ((r["kappa"] or 0.0) - (baseline[key]["kappa"] or 0.0))
                for r in chosen
                if (key := (r["seed"], r["features"])) in baseline
            ]
            paired = "-" if split_start(method)[0] == "random" or not gains else _mean_spread(gains)
            features = "/".join(sorted({r["features"] for r in chosen}))
            rows.append([f"{100 * fraction:g} %", method, features, *cells, paired, len(chosen)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo scenes, tiny budgets")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--out", default="benchmarks/results/downstream.json")
    parser.add_argument("--data", choices=["demo", "dubai"], default="demo")
    parser.add_argument("--root", default="../shared/data/dubai-aerial")
    parser.add_argument("--checkpoint", action="append", default=[], help="METHOD=PATH")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["simclr", "glcnet", "dense", "random"],
        help="start points: any registered method, random; NAME:FEATURES in --mode linear",
    )
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--mode",
        choices=["linear", "decoder", "finetune"],
        default="finetune",
        help="linear: the linear probe (frozen network; a start 'NAME:FEATURES' in --methods "
        "picks decoder, encoder or backbone features, default: what the checkpoint trained)",
    )
    parser.add_argument("--linear-lr", type=float, default=None, help="default: linear.lr")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="validate every N epochs (0: at the end only)"
    )
    parser.add_argument(
        "--patience", type=int, default=0, help="stop after N validations without a better val mIoU"
    )
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument(
        "--decoder",
        choices=["deeplabv3plus", "unet", "fpn"],
        default="deeplabv3plus",
        help="the network fine-tuned (pretraining uses DeepLabV3+; unet / fpn load its backbone "
        "and train a fresh decoder)",
    )
    parser.add_argument("--width", type=int, default=64, help="ASPP and decoder channels")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--val", default="", help="dubai: key pattern of the validation split")
    parser.add_argument("--work-dir", default=None, help="keep runs here (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds = "demo", args.seeds[:2]
        args.pretrain_steps, args.finetune_steps = 20, 30
        args.patch, args.window, args.width, args.scene_size = 32, 128, 32, 192
    given = dict(item.split("=", 1) for item in args.checkpoint)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        starts: dict[str, Path | None] = {}
        pretrain_seconds: dict[str, float] = {}
        for spec in args.methods:
            method, _ = split_start(spec)
            if method == "random":
                starts[spec] = None
            elif method in given:
                starts[spec] = Path(given[method])
            elif method in pretrain_seconds:  # the same method probed on other features
                starts[spec] = next(starts[s] for s in starts if split_start(s)[0] == method)
            else:
                print(f"pretraining {method} for {args.pretrain_steps} steps ...", flush=True)
                starts[spec], pretrain_seconds[method] = pretrain(method, args, work)
        runs = []
        for fraction in args.fractions:
            for seed in args.seeds:
                for method in args.methods:
                    run = finetune(method, starts[method], fraction, seed, args, work)
                    print(
                        f"{method:>7} {100 * fraction:g} % seed {seed}: mIoU {100 * run['miou']:.2f} "
                        f"({run['seconds']:.0f} s)",
                        flush=True,
                    )
                    runs.append(run)

    print()
    headers = [
        "labels",
        "start",
        "features",
        "kappa %",
        "mIoU %",
        "OA %",
        "mean F1 %",
        "kappa - random (paired)",
        "seeds",
    ]
    rows = summarise(runs, args.methods, args.fractions)
    print_table(headers, rows)
    settings = {k: v for k, v in vars(args).items() if k != "checkpoint"}
    settings["checkpoints"] = {k: (str(v) if v else None) for k, v in starts.items()}
    if not pretrain_seconds:  # every start point was given: nothing was pretrained here
        settings["pretrain_steps"] = settings["pretrain_batch"] = None
    path = write_json(
        args.out,
        {
            "benchmark": "downstream",
            "machine": machine_info(device),
            "settings": settings,
            "pretrain_seconds": pretrain_seconds,
            "table": {"headers": headers, "rows": rows},
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
