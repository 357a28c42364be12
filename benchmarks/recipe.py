"""Our default GLCNet recipe against the official code's, pretrained and fine-tuned alike.

Both recipes pretrain GLCNet on the same unlabeled data, patches, batch and number of steps
(one pretraining per recipe and pretraining seed), then fine-tune from each checkpoint on
the same labeled patches and seeds, and score the test split once (Dubai: Tile 8) with the
weights selected on validation. Prints kappa / mIoU / OA as mean ± std over the runs and
the per-seed paired kappa difference (official - default). Writes JSON after every run, so
an interrupted run leaves what it finished.

The recipes differ in exactly the settings of configs/glcnet_official.yaml and
configs/finetune_official.yaml (docs/recipe.md); both use the fine-tuning ``--lr`` given
here (1e-4 in both full recipes, too small for a few dozen steps).

    python benchmarks/recipe.py --root ../shared/data/dubai-aerial --pretrain-steps 100 \\
        --finetune-steps 30 --seeds 0 1 2 --out benchmarks/results/recipe_dubai.json
    python benchmarks/recipe.py --quick          # demo scenes, a CPU minute (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json
from downstream import config_file, data_settings, model_overrides, pretrain, split_start

from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config

#: pretraining settings of the official recipe (configs/glcnet_official.yaml)
OFFICIAL_PRETRAIN = [
    "views.preset=glcnet_official",
    "method.head_batch_norm=false",
    "method.local_head_layout=official",
    "method.decoupled=true",
    "method.gather=false",
    "method.region_overlap=false",
    "optim.betas=[0.9,0.99]",
    "optim.weight_decay=1e-5",
    "optim.decay_norm_and_bias=true",
    "optim.scale_lr_with_world_size=true",
    "optim.schedule_unit=epoch",
    "optim.min_lr=4e-8",
    "model.bn_momentum=0.9",
    "model.dilation_convention=official",
]
#: fine-tuning settings of the official recipe (configs/finetune_official.yaml)
OFFICIAL_FINETUNE = [
    "optim.betas=[0.9,0.99]",
    "optim.weight_decay=1e-5",
    "optim.decay_norm_and_bias=true",
    "optim.schedule=exponential",
    "optim.gamma=0.98",
    "optim.schedule_unit=epoch",
    "train.augment_recipe=official",
    "model.decoder_dropout=[0.5,0.1]",
    "model.bn_momentum=0.9",
]
RECIPES = {"default": ([], []), "official": (OFFICIAL_PRETRAIN, OFFICIAL_FINETUNE)}
METRICS = ("kappa", "miou", "overall_accuracy")


# The recipe comparison keeps the fixed-step fine-tune it was measured with (one lr, no
# early stopping, test scored at the end of each run); benchmarks/downstream.py has the
# converging protocol.
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
    overrides = [
        f"run.root={work}", f"run.name=ft-{method}-{features}-{fraction}-{seed}", "run.progress=false",
        "run.log_every=50", *fine_data, f"data.label_fraction={fraction}", f"data.seed={seed}",
        f"train.seed={seed}", f"train.max_steps={args.finetune_steps}",
        f"train.batch_size={args.batch}", f"train.num_workers={args.workers}",
        f"train.device={args.device}", f"optim.lr={args.lr}", "mode=finetune",
        f"eval.window={args.window}", f"eval.stride={args.window}", "eval.overlays=0",
        "eval.every=1000000", *model_overrides(args),
    ]  # fmt: skip
    if checkpoint is not None:
        overrides.append(f"pretrained.path={checkpoint}")
    start = time.perf_counter()
    result = run_finetune(load_finetune_config(config_file(args), [*overrides, *extra]))
    selected = torch.load(result.best_checkpoint, weights_only=True)
    return {
        "method": spec, "fraction": fraction, "seed": seed, "seconds": time.perf_counter() - start,
        **{k: result.test_metrics[k] for k in METRICS}, "best_epoch": result.best_epoch,
        "steps": result.step, "val_miou": result.val_metrics["miou"],
        "features": selected["model_config"]["classifier_features"],
    }  # fmt: skip


def _mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def summarise(runs: list[dict], recipes: list[str]) -> list[list]:
    """One row per recipe (mean ± std over runs) and the paired kappa difference."""
    rows = []
    by_seed = {(r["recipe"], r["seed"]): r for r in runs}
    for recipe in recipes:
        chosen = [r for r in runs if r["recipe"] == recipe]
        if not chosen:
            continue
        cells = [_spread([100 * (r[k] or 0.0) for r in chosen]) for k in METRICS]
        diffs = [
            100
            * (by_seed[("official", r["seed"])]["kappa"] - by_seed[("default", r["seed"])]["kappa"])
            for r in chosen
            if ("official", r["seed"]) in by_seed and ("default", r["seed"]) in by_seed
        ]
        paired = _spread(diffs) if recipe == "official" and diffs else "-"
        rows.append([recipe, *cells, paired, len(chosen)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo scenes, tiny budgets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/recipe.json")
    parser.add_argument("--data", choices=["demo", "dubai"], default="dubai")
    parser.add_argument("--root", default="../shared/data/dubai-aerial")
    parser.add_argument("--recipes", nargs="+", default=["default", "official"])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--pretrain-seeds",
        type=int,
        default=1,
        help="pretrain once per recipe and each of the first N seeds",
    )
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--finetune-steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr of both recipes")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64, help="ASPP and decoder channels")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--val", default="Tile 2/*")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="RECIPE=PATH: skip that pretraining"
    )
    parser.add_argument(
        "--cross",
        action="store_true",
        help="fine-tune each recipe's checkpoint with the other recipe's fine-tuning "
        "(runs labelled 'pretrain X + fine-tune Y'), to tell the two stages apart",
    )
    args = parser.parse_args()
    if args.quick:
        args.data, args.seeds, args.val = "demo", args.seeds[:2], ""
        args.pretrain_steps, args.finetune_steps = 6, 6
        args.patch, args.window, args.width = 32, 128, 16
    args.scene_size = 192  # downstream.data_settings reads it (demo scenes)
    runs: list[dict] = []
    pretrain_seconds: dict[str, float] = {}

    def labels() -> list[str]:
        return list(dict.fromkeys(r["recipe"] for r in runs)) or list(args.recipes)

    def save() -> Path:
        headers = [
            "recipe",
            "kappa %",
            "mIoU %",
            "OA %",
            "kappa official - default (paired)",
            "runs",
        ]
        return write_json(
            args.out,
            {
                "benchmark": "recipe",
                "machine": machine_info(torch.device(args.device)),
                "settings": vars(args),
                "pretrain_seconds": pretrain_seconds,
                "table": {"headers": headers, "rows": summarise(runs, labels())},
                "runs": runs,
            },
        )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        starts: dict[tuple[str, int], Path] = {}
        pre_seeds = args.seeds[: max(1, args.pretrain_seeds)]
        given = dict(item.split("=", 1) for item in args.checkpoint)
        for pseed in pre_seeds:
            for recipe in args.recipes:
                if recipe in given:
                    starts[(recipe, pseed)] = Path(given[recipe])
                    continue
                extra = [
                    *RECIPES[recipe][0],
                    f"run.name=pretrain-{recipe}-{pseed}",
                    f"train.seed={pseed}",
                ]
                print(
                    f"pretraining {recipe} (seed {pseed}), {args.pretrain_steps} steps ...",
                    flush=True,
                )
                starts[(recipe, pseed)], seconds = pretrain("glcnet", args, work, extra)
                pretrain_seconds[f"{recipe}-{pseed}"] = seconds
                save()
        for i, seed in enumerate(args.seeds):
            pseed = pre_seeds[i % len(pre_seeds)] if len(pre_seeds) > 1 else pre_seeds[0]
            for recipe in args.recipes:
                tuned = recipe
                if args.cross:
                    tuned = "official" if recipe == "default" else "default"
                label = recipe if tuned == recipe else f"pretrain {recipe} + fine-tune {tuned}"
                extra = [*RECIPES[tuned][1], f"run.name=ft-{recipe}-{tuned}-{seed}"]
                run = finetune(
                    "glcnet", starts[(recipe, pseed)], args.fraction, seed, args, work, extra
                )
                run.update(recipe=label, pretrain_seed=pseed)
                runs.append(run)
                print(
                    f"{label:>8} seed {seed}: kappa {100 * run['kappa']:.2f} mIoU "
                    f"{100 * run['miou']:.2f} ({run['seconds']:.0f} s)",
                    flush=True,
                )
                save()
    print()
    print_table(
        ["recipe", "kappa %", "mIoU %", "OA %", "kappa official - default (paired)", "runs"],
        summarise(runs, labels()),
    )
    print(f"\nwrote {save()}")


if __name__ == "__main__":
    main()
