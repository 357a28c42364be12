"""The documentation's figures, drawn from the committed benchmark results.

Every figure is a function of one ``benchmarks/results/*.json`` (or, for the view pair, of the
package itself), so re-running a benchmark and then this script re-draws its figure::

    python benchmarks/figures.py                    # every figure into docs/figures/
    python benchmarks/figures.py --only downstream  # one of them

Figures:

- ``downstream``: test kappa against the label fraction per start, fine-tuned and probed,
  mean and spread (standard deviation) over seeds (``downstream_dubai.json``);
- ``recipe``: the default against the official GLCNet recipe, each seed a point
  (``recipe_dubai.json``);
- ``budget``: kappa gain over random against pretraining minutes and the online probe curve
  (``budget_dubai.json``, drawn by ``benchmarks/budget.py``'s own figure);
- ``views``: a view pair of two demo scenes with the matched regions outlined
  (``contrastseg views`` on the quickstart config);
- ``prediction``: a short fine-tune on the demo scenes and its sliding-window prediction
  beside the label (``contrastseg finetune`` + ``predict`` on the demo preset, about a
  minute on one core).

Needs matplotlib (the ``docs`` and ``dev`` extras).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_OUT = HERE.parent / "docs" / "figures"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def series_by_start(runs: list[dict], mode: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per start, ``(fraction, mean kappa %, std kappa %)`` over seeds for one ``mode``,
    sorted by fraction (runs without a test kappa are left out)."""
    groups: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        if run["mode"] == mode and run.get("kappa") is not None:
            groups.setdefault(run["start"], {}).setdefault(run["fraction"], []).append(
                100 * run["kappa"]
            )
    return {
        start: [(f, *mean_spread(v)) for f, v in sorted(by_fraction.items())]
        for start, by_fraction in sorted(groups.items())
    }


def downstream_figure(report: dict, path: Path) -> Path:
    """Test kappa against label fraction, one line per start, fine-tune and probe side by side."""
    plt = _pyplot()
    modes = [m for m in ("finetune", "linear") if any(r["mode"] == m for r in report["runs"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for start, points in series_by_start(report["runs"], mode).items():
            x, y, err = zip(*points, strict=True)
            ax.errorbar([100 * f for f in x], y, yerr=err, marker="o", capsize=3, label=start)
        ax.set_xscale("log")
        ticks = sorted({100 * r["fraction"] for r in report["runs"]})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("labeled fraction (%)")
        ax.set_ylabel("test kappa (%)")
        ax.set_title({"finetune": "fine-tuned", "linear": "linear probe"}[mode])
        ax.legend(fontsize=8)
    fig.suptitle("Dubai tiles: mean and std over seeds", fontsize=10)
    return _save(fig, path)


def recipe_figure(report: dict, path: Path) -> Path:
    """Test kappa of each recipe: every seed a point, the mean a bar."""
    plt = _pyplot()
    recipes = report["settings"]["recipes"]
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for i, recipe in enumerate(recipes):
        kappas = [100 * r["kappa"] for r in report["runs"] if r["recipe"] == recipe]
        mean, std = mean_spread(kappas)
        ax.bar(i, mean, yerr=std, capsize=4, alpha=0.5, label=f"{recipe}: {mean:.1f} ± {std:.1f}")
        ax.scatter([i] * len(kappas), kappas, color="black", zorder=3, s=14)
    ax.set_xticks(range(len(recipes)), recipes)
    ax.set_ylabel("test kappa (%)")
    settings = report["settings"]
    ax.set_title(
        f"GLCNet recipe, {settings['pretrain_steps']} pretraining steps, "
        f"{100 * settings['fraction']:g} % labels",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(HERE))
    return module


def budget_figure(report: dict, path: Path) -> Path:
    return _load_benchmark("budget").figure(report, path)


def _cli(*args: str, cwd: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "contrastseg.cli", *args], check=True, cwd=cwd, env=env)


def views_figure(path: Path) -> Path:
    """Two demo scenes, their views and matched regions (``contrastseg views``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _cli("views", "--config", "quickstart", "--count", "2", "--seed", "0", "--out", str(path))
    return path


def prediction_figure(path: Path) -> Path:
    """Fine-tune a random start on the demo scenes briefly, predict a held-out demo scene
    (``contrastseg finetune`` + ``predict``), and draw its RGB bands, label and prediction."""
    import numpy as np
    import tifffile
    from matplotlib.colors import ListedColormap
    from PIL import Image

    from contrastseg.data.demo import DEMO_CLASSES, DEMO_PALETTE, make_scene

    plt = _pyplot()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _cli("finetune", "--config", "finetune_demo", "--set", f"run.root={tmp}", "--set",
             "run.name=figure", "--set", "train.epochs=60", "--set", "run.progress=false")  # fmt: skip
        image, label = make_scene(size=256, bands=4, seed=4242)
        tifffile.imwrite(
            tmp / "scene.tif", image, photometric="minisblack", planarconfig="separate"
        )
        _cli("predict", "--checkpoint", str(tmp / "figure" / "best.pt"), str(tmp / "scene.tif"),
             "--out", str(tmp / "pred"), "--format", "png", "--no-preview")  # fmt: skip
        prediction = np.asarray(Image.open(next((tmp / "pred").glob("*.png"))))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    shown = (image[:3].transpose(1, 2, 0), label, prediction)
    for ax, picture, title in zip(axes, shown, ("demo scene (RGB)", "label", "prediction"),
                                  strict=True):  # fmt: skip
        if picture.ndim == 3:
            ax.imshow(picture)
        else:
            ax.imshow(picture, cmap=ListedColormap(DEMO_PALETTE), vmin=0,
                      vmax=len(DEMO_PALETTE) - 1, interpolation="nearest")  # fmt: skip
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(
        "classes: "
        + ", ".join(f"{n} ({c})" for n, c in zip(DEMO_CLASSES, DEMO_PALETTE, strict=True)),
        fontsize=8,
    )
    return _save(fig, path)


#: figure name -> (source JSON or None, drawing function of (report, path) or of (path))
FIGURES: dict[str, tuple[str | None, Callable]] = {
    "downstream": ("downstream_dubai.json", downstream_figure),
    "recipe": ("recipe_dubai.json", recipe_figure),
    "budget": ("budget_dubai.json", budget_figure),
    "views": (None, views_figure),
    "prediction": (None, prediction_figure),
}


def draw(name: str, out_dir: Path, results: Path = RESULTS) -> Path:
    """Draw figure ``name`` into ``out_dir/name.png`` from the results in ``results``."""
    source, function = FIGURES[name]
    path = out_dir / f"{name}.png"
    if source is None:
        return function(path)
    return function(json.loads((results / source).read_text()), path)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=sorted(FIGURES))
    args = parser.parse_args(argv)
    written = []
    for name in args.only:
        written.append(draw(name, args.out_dir, args.results))
        print(f"wrote {written[-1]}")
    return written


if __name__ == "__main__":
    main()
