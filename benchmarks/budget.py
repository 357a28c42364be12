"""How much pretraining pays: fine-tuned and probed kappa gain over random against the budget.

For one labeled dataset, pretrain GLCNet for several budgets (``--budgets``, steps of
``--pretrain-batch`` patches; each budget is its own run with its own cosine schedule) and
SimCLR / dense at one middle budget (``--middle-methods``), then measure every checkpoint and a
random start with the protocol of ``benchmarks/downstream.py`` (same labeled patches and
seeds for every start; fine-tuning protocol and lr selected per start on val among
``--protocols`` x ``--lr-grid``; the converged linear probe on the decoder and on the encoder
features; the test split scored once per selected run) at each label fraction with its own
number of seeds (``--fraction-seeds 0.01=5 0.1=3``). The report gives, per start and budget,
the paired kappa difference to the random start with its 95 % t interval over seeds, in
fine-tuning and in the probe, and the gap between the two; the figure plots the gain against
pretraining minutes (``--step-seconds``: seconds per pretraining step measured on an idle
core, so that the minutes do not depend on what else shared the machine) with the seed
spread, beside the online probe's curve over the longest pretraining (its checkpoints every
``--curve-every`` steps, probed afterwards with ``contrastseg probe``'s solver).

Stages, each resumable and each one process, so that the work splits over cores:

    python benchmarks/budget.py --stage pretrain --budgets 100 1000 3000 ...   # one per budget
    python benchmarks/budget.py --stage downstream --fractions 0.01 --modes finetune ...
    python benchmarks/budget.py --stage curve ...
    python benchmarks/budget.py --stage report --out benchmarks/results/budget_dubai.json
    python benchmarks/budget.py --render benchmarks/results/budget_dubai.json [--figure PNG]

``--quick`` runs every stage on the demo scenes in CPU minutes and writes under
``benchmarks/results/quick/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import downstream
from _common import machine_info, write_json

from contrastseg.config import load_pretrain_config
from contrastseg.train.checkpoint import checkpoint_path, list_checkpoints
from contrastseg.train.online_probe import probe_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["pretrain", "downstream", "curve", "report", "all"])
    parser.add_argument("--render", metavar="JSON", help="print a written report and stop")
    parser.add_argument("--figure", metavar="PNG", help="with --render or report: draw it here")
    parser.add_argument(
        "--merge", metavar="JSON", help="report: also the runs of an earlier report (same test "
        "split and downstream settings) for the (mode, fraction, start) groups not in --work-dir",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="demo scenes, tiny budgets")
    parser.add_argument("--data", choices=["demo", "dubai"], default="dubai")
    parser.add_argument("--root", default="../shared/data/dubai-aerial")
    parser.add_argument("--val", default="Tile 2/*")
    parser.add_argument(
        "--test-subset", nargs="+", default=None, help="score only these keys of the test split"
    )  # fmt: skip
    parser.add_argument("--work-dir", default="runs/budget")
    parser.add_argument("--out", default=str(RESULTS / "budget_dubai.json"))
    parser.add_argument("--budgets", nargs="+", type=int, default=[100, 1000, 3000])
    parser.add_argument("--method", default="glcnet", help="the method pretrained at every budget")
    parser.add_argument("--middle-methods", nargs="*", default=["simclr", "dense"])
    parser.add_argument(
        "--middle-budget", type=int, help="the budget of --middle-methods (default: the median)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="pretrain stage: only these START names "
        "(e.g. glcnet-3000 simclr-1000)"
    )  # fmt: skip
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--curve-every", type=int, default=250)
    parser.add_argument("--fractions", nargs="+", type=float, default=None)
    parser.add_argument(
        "--fraction-seeds", nargs="+", default=["0.01=5", "0.1=3"],
        help="FRACTION=N: seeds 0..N-1 at that label fraction",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="downstream stage: only these seeds "
        "(to split the seeds of --fraction-seeds over processes; a later call with every seed "
        "reuses their runs, selects and scores the test split)"
    )  # fmt: skip
    parser.add_argument("--modes", nargs="+", default=["finetune", "linear"])
    parser.add_argument(
        "--starts", nargs="*", default=None, help="downstream stage: only these starts "
        "(default: every budget, the middle methods and random)"
    )  # fmt: skip
    parser.add_argument("--protocols", nargs="+", default=["ft", "lpft+all"])
    parser.add_argument("--lr-grid", nargs="+", type=float, default=[1e-3])
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--step-seconds", type=float, default=None, help="seconds per pretraining step on an "
        "idle core (the figure's minutes); default: measured by the pretrain stage"
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.budgets, args.middle_methods = "demo", [4, 12], []
        args.fraction_seeds, args.finetune_steps, args.eval_steps = ["0.5=2"], 8, 4
        args.patch, args.width, args.window, args.patience = 32, 16, 128, 2
        args.curve_every, args.protocols = 4, ["ft", "lpft+all"]
        args.work_dir = str(RESULTS / "quick" / "budget-runs")
        if args.out == str(RESULTS / "budget_dubai.json"):
            args.out = str(RESULTS / "quick" / "budget.json")
    args.seeds_by_fraction = {
        float(f): int(n) for f, n in (item.split("=", 1) for item in args.fraction_seeds)
    }
    args.fractions = args.fractions or sorted(args.seeds_by_fraction)
    return args


def _downstream_args(args: argparse.Namespace, extra: list[str] = ()) -> argparse.Namespace:
    return downstream.parse_args(_argv(args, list(extra)))


def pretrained_starts(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """``(start name, method, steps)`` of every pretraining: the method at every budget, the
    middle methods at the middle budget."""
    budgets = sorted(args.budgets)
    starts = [(f"{args.method}-{b}", args.method, b) for b in budgets]
    middle = args.middle_budget or budgets[len(budgets) // 2]
    starts += [(f"{m}-{middle}", m, middle) for m in args.middle_methods]
    return starts


def run_dir(args: argparse.Namespace, name: str) -> Path:
    return Path(args.work_dir).resolve() / f"pretrain-{name}"


def stage_pretrain(args: argparse.Namespace) -> dict:
    """Pretrain every start not already there (the longest keeps a checkpoint every
    ``--curve-every`` steps for the probe curve); returns the seconds each took here."""
    longest = max(args.budgets)
    seconds = {}
    for name, method, steps in pretrained_starts(args):
        if args.only and name not in args.only:
            continue
        extra = [f"run.name=pretrain-{name}"]
        if method == args.method and steps == longest:
            extra += [f"run.checkpoint_every={args.curve_every}", "run.keep_last=1000"]
        settings = _downstream_args(args, ["--pretrain-steps", str(steps)])
        print(f"pretraining {name} ({steps} steps) ...", flush=True)
        _, seconds[name] = downstream.pretrain(
            method, settings, Path(args.work_dir).resolve(), extra
        )
    return seconds


def checkpoints(args: argparse.Namespace) -> dict[str, Path]:
    """The finished pretraining of every start."""
    found = {}
    for name, _, steps in pretrained_starts(args):
        path = checkpoint_path(run_dir(args, name) / "checkpoints", steps)
        if path.is_file():
            found[name] = path
    return found


def stage_downstream(args: argparse.Namespace) -> None:
    """The downstream protocol for every fraction (its seeds), start and mode asked for."""
    found = checkpoints(args)
    names = args.starts if args.starts is not None else [*found, "random"]
    bare = {n.partition(":")[0] for n in names}  # NAME:FEATURES probes NAME on FEATURES
    missing = sorted(n for n in bare if n != "random" and n not in found)
    if missing:
        raise SystemExit(f"not pretrained yet: {', '.join(missing)} (run --stage pretrain)")
    given = [f"{n}={found[n]}" for n in sorted(bare) if n != "random"]
    for fraction in args.fractions:
        seeds = [str(s) for s in args.seeds or range(args.seeds_by_fraction[fraction])]
        for mode in args.modes:
            label = "_".join(n.replace(":", "-") for n in names)
            if args.seeds:
                label += "-seeds" + "_".join(seeds)
            out = Path(args.work_dir) / f"downstream-{mode}-{fraction:g}-{label}.json"
            extra = [
                "--methods", *names, *[x for g in given for x in ("--checkpoint", g)],
                "--modes", mode, "--fractions", str(fraction), "--seeds", *seeds,
                "--protocols", *args.protocols, "--lr-grid", *map(str, args.lr_grid),
                "--finetune-steps", str(args.finetune_steps), "--eval-steps",
                str(args.eval_steps), "--patience", str(args.patience), "--warmup",
                str(args.warmup), "--out", str(out),
            ]  # fmt: skip
            downstream.main(_argv(args, extra))


def _argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The argv of :func:`downstream.main` for this benchmark's settings plus ``extra``."""
    settings = [
        "--data", args.data, "--root", args.root, "--val", args.val,
        "--pretrain-batch", str(args.pretrain_batch), "--batch", str(args.batch),
        "--patch", str(args.patch), "--width", str(args.width), "--arch", args.arch,
        "--window", str(args.window), "--threads", str(args.threads), "--device", args.device,
        "--work-dir", args.work_dir, "--scene-size", "96" if args.quick else "256", *extra,
    ]  # fmt: skip
    if args.test_subset:
        settings += ["--test-subset", *args.test_subset]
    return [*settings, "--verbose"] if args.verbose else settings


def probe_config(args: argparse.Namespace):
    """The online probe's settings for the curve: the downstream data and splits (the probe
    fits on the train split and scores val; the test split, Tile 8, stays unread)."""
    _, fine = downstream.data_settings(_downstream_args(args))
    probe = [f"probe.{item}" for item in fine]
    probe += [f"probe.window={args.window}", "probe.max_patches=32", "probe.every=1"]
    return load_pretrain_config(None, probe)


def stage_curve(args: argparse.Namespace) -> list[dict]:
    """The probe (decoder and encoder features) of every kept checkpoint of the longest run."""
    name = f"{args.method}-{max(args.budgets)}"
    folder = run_dir(args, name) / "checkpoints"
    config = probe_config(args)
    out = Path(args.work_dir) / "curve.json"
    curve = json.loads(out.read_text()) if out.is_file() else []
    done = {point["step"] for point in curve}
    for path in list_checkpoints(folder):
        step = int(torch.load(path, weights_only=True, map_location="cpu")["step"])
        if step in done:
            continue
        result = probe_checkpoint(path, config, "auto", args.device)
        point = {"step": step, "seconds": result.seconds, "l2": result.l2,
                 result.features: {k: result.metrics[k] for k in downstream.METRICS},
                 **{kind: {k: m[k] for k in downstream.METRICS}
                    for kind, m in result.others.items()}}  # fmt: skip
        curve.append(point)
        curve.sort(key=lambda p: p["step"])
        out.write_text(json.dumps(curve, indent=1) + "\n")
        print(f"probe of {name} at step {step}: {result.summary()}", flush=True)
    return curve


def measure_step_seconds(args: argparse.Namespace, steps: int = 20) -> float:
    """Seconds per pretraining step of the budget's method on this process's threads."""
    import time

    settings = _downstream_args(args, ["--pretrain-steps", str(steps)])
    work = Path(args.work_dir).resolve()
    name = "step-timing"
    import shutil

    shutil.rmtree(work / name, ignore_errors=True)
    start = time.perf_counter()
    downstream.pretrain(args.method, settings, work, [f"run.name={name}"])
    return (time.perf_counter() - start) / steps


def collect_runs(work: Path, test: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """The selected, test-scored runs of every start in ``work``, read from the runs themselves.

    Per mode, fraction and start, the setting (protocol, lr) with the best val mIoU averaged
    over the seeds that ran every setting is selected (as :func:`downstream.select_setting`),
    and its runs whose test split was scored (``test_record.json`` beside their ``best.pt``)
    are returned; so the report does not depend on which process ran which seed, and a run
    whose test score is missing is simply left out (its row shows fewer seeds).
    """
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(work.glob("*/record.json")):
        record = json.loads(path.read_text())
        if record.get("mode") in ("finetune", "linear", "decoder"):
            key = (record["mode"], record["fraction"], record["start"])
            groups.setdefault(key, []).append(record)
    runs, selection = [], []
    for (mode, fraction, start), group in sorted(groups.items()):
        settings = {(r.get("protocol", "ft"), r["lr"]) for r in group}
        done = {(r["seed"], r.get("protocol", "ft"), r["lr"]) for r in group}
        seeds = sorted({r["seed"] for r in group if all((r["seed"], *k) in done for k in settings)})
        complete = [r for r in group if r["seed"] in seeds]
        (protocol, lr), by_setting = downstream.select_setting(complete)
        selection.append({"mode": mode, "fraction": fraction, "start": start, "lr": lr,
                          "protocol": protocol, "seeds": seeds,
                          "val_miou_by_setting": by_setting})  # fmt: skip
        for record in complete:
            if (record.get("protocol", "ft"), record["lr"]) != (protocol, lr):
                continue
            scored = Path(record["best_checkpoint"]).parent / "test_record.json"
            if scored.is_file() and (
                test is None or json.loads(scored.read_text())["test_overrides"] == test
            ):
                scores = json.loads(scored.read_text())["scores"]
                runs.append({**{k: v for k, v in record.items() if k != "overrides"}, **scores})
    return runs, selection


#: what every run of one mode must share for runs of two reports to sit in one table
SAME_PROTOCOL = ("eval_every_steps", "steps_per_epoch", "decoder")


def merge_report(
    runs: list[dict], selection: list[dict], earlier: dict, test: list[str]
) -> tuple[list[dict], list[dict]]:
    """``runs`` and ``selection`` plus those of an ``earlier`` report for every (mode, fraction,
    start) group the work folder lacks: so a new budget joins a table whose random start and
    other budgets ran in an earlier session. Refused unless the earlier report was scored on
    the same test split and its runs of each mode and fraction share the new runs' validation
    cadence, batches per epoch and decoder (:data:`SAME_PROTOCOL`)."""
    if earlier.get("test_split") != test:
        raise SystemExit(
            f"--merge: the earlier report was scored on {earlier.get('test_split')}, "
            f"this one on {test}: their rows are not comparable"
        )
    have = {(s["mode"], s["fraction"], s["start"]) for s in selection}
    added = [r for r in earlier["runs"] if (r["mode"], r["fraction"], r["start"]) not in have]
    for new in runs:
        for old in added:
            if (old["mode"], old["fraction"]) != (new["mode"], new["fraction"]):
                continue
            differ = [k for k in SAME_PROTOCOL if old.get(k) != new.get(k)]
            if differ:
                raise SystemExit(
                    f"--merge: {old['start']} (earlier) and {new['start']} ({new['mode']}) differ "
                    + ", ".join(f"in {k}: {old.get(k)!r} vs {new.get(k)!r}" for k in differ)
                )
    selection = selection + [
        s for s in earlier["selection"] if (s["mode"], s["fraction"], s["start"]) not in have
    ]
    return runs + added, selection


def combine(args: argparse.Namespace) -> dict:
    """One report from every run and the curve in the work folder."""
    test = downstream.Splits(_downstream_args(args)).restore  # the split every row is scored on
    runs, selection = collect_runs(Path(args.work_dir), test)
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        runs, selection = merge_report(runs, selection, earlier, test)
    steps = {name: s for name, _, s in pretrained_starts(args)}
    step_seconds = args.step_seconds
    rows = budget_rows(runs, steps, step_seconds)
    curve_path = Path(args.work_dir) / "curve.json"
    return {
        "benchmark": "budget",
        "machine": machine_info(torch.device(args.device)),
        "settings": {k: v for k, v in vars(args).items() if k not in ("seeds_by_fraction",)},
        "step_seconds": step_seconds,
        "test_split": test,
        "rows": rows,
        "curve": json.loads(curve_path.read_text()) if curve_path.is_file() else [],
        "selection": selection,
        "runs": runs,
    }


def budget_rows(runs: list[dict], steps: dict[str, int], step_seconds: float | None) -> list[dict]:
    """Per mode, fraction, start and features: test kappa over seeds and the paired gain over
    the random start (same seed, patches and features) with its 95 % t interval."""
    rows = []
    keys = sorted({(r["mode"], r["fraction"], r["name"], r["features"]) for r in runs})
    for mode, fraction, name, features in keys:
        chosen = [
            r for r in runs
            if (r["mode"], r["fraction"], r["name"], r["features"]) == (mode, fraction, name, features)
        ]  # fmt: skip
        random = {
            r["seed"]: r for r in runs
            if (r["mode"], r["fraction"], r["name"], r["features"]) == (mode, fraction, "random", features)
        }  # fmt: skip
        kappas = [100 * (r["kappa"] or 0.0) for r in chosen]
        gains = [
            100 * ((r["kappa"] or 0.0) - (random[r["seed"]]["kappa"] or 0.0))
            for r in chosen
            if r["seed"] in random and name != "random"
        ]
        interval = downstream.t_interval(gains)
        budget = steps.get(name, 0)
        rows.append({
            "mode": mode, "fraction": fraction, "start": name, "features": features,
            "pretrain_steps": budget,
            "pretrain_minutes": None if step_seconds is None else budget * step_seconds / 60,
            "protocol": chosen[0].get("protocol"), "lr": chosen[0].get("lr"),
            "seeds": len(chosen), "kappa_mean": statistics.mean(kappas),
            "kappa_std": statistics.stdev(kappas) if len(kappas) > 1 else 0.0,
            "gain_mean": statistics.mean(gains) if gains else None,
            "gain_low": interval[1] if interval else None,
            "gain_high": interval[2] if interval else None,
            "gain_std": statistics.stdev(gains) if len(gains) > 1 else None,
            "seeds_above": sum(g > 0 for g in gains) if gains else None,
        })  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    """The report's rows as a Markdown table, and the budget verdict at the lowest fraction."""
    head = ["mode", "labels", "start", "features", "steps", "CPU min", "protocol", "kappa %",
            "kappa - random", "95 % interval", "seeds above"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        minutes = row["pretrain_minutes"]
        gain = "-" if row["gain_mean"] is None else f"{row['gain_mean']:+.2f}"
        interval = (
            "-" if row["gain_low"] is None else f"[{row['gain_low']:+.2f}, {row['gain_high']:+.2f}]"
        )
        above = "-" if row["seeds_above"] is None else f"{row['seeds_above']}/{row['seeds']}"
        lines.append("| " + " | ".join([
            row["mode"], f"{100 * row['fraction']:g} %", row["start"], row["features"],
            str(row["pretrain_steps"]), "-" if minutes is None else f"{minutes:.1f}",
            str(row["protocol"] if row["mode"] == "finetune" else "probe"),
            f"{row['kappa_mean']:.2f} ± {row['kappa_std']:.2f}", gain, interval, above,
        ]) + " |")  # fmt: skip
    lines += ["", verdict(report)]
    return "\n".join(lines)


def verdict(report: dict, target: float = 5.0) -> str:
    """The smallest budget whose fine-tuned gain at the lowest fraction averages at least
    ``target`` kappa points with its 95 % interval above 0, or what the trend says."""
    rows = [r for r in report["rows"] if r["mode"] == "finetune" and r["gain_mean"] is not None]
    if not rows:
        return "no fine-tuned pretrained start yet"
    low = min(r["fraction"] for r in rows)
    rows = sorted((r for r in rows if r["fraction"] == low), key=lambda r: r["pretrain_steps"])
    for row in rows:
        if row["gain_mean"] >= target and row["gain_low"] is not None and row["gain_low"] > 0:
            return (
                f"at {100 * low:g} % labels, {row['start']} ({row['pretrain_steps']} steps) "
                f"fine-tunes {row['gain_mean']:+.2f} kappa above random, 95 % interval "
                f"[{row['gain_low']:+.2f}, {row['gain_high']:+.2f}]: the goal of +{target:g} is met"
            )
    trend = ", ".join(f"{r['start']} {r['gain_mean']:+.2f}" for r in rows)
    return (
        f"at {100 * low:g} % labels no budget fine-tunes +{target:g} kappa above random with "
        f"its 95 % interval above 0; fine-tuned gains by budget: {trend}"
    )


def figure(report: dict, path: str | Path) -> Path:
    """Kappa gain over random against pretraining minutes (mean and 95 % interval over seeds)
    per mode and fraction, beside the online probe's kappa over the longest pretraining."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = report.get("curve") or []
    fig, axes = plt.subplots(
        1, 2 if curve else 1, figsize=(11 if curve else 6.5, 4.2), squeeze=False
    )
    left = axes[0][0]
    minutes = report["step_seconds"] is not None
    series: dict[tuple, list[dict]] = {}
    for row in report["rows"]:
        if row["gain_mean"] is not None and row["start"].startswith(report["settings"]["method"]):
            key = (row["mode"], row["features"], row["fraction"])
            series.setdefault(key, []).append(row)
    for (mode, features, fraction), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["pretrain_steps"])
        x = [r["pretrain_minutes"] if minutes else r["pretrain_steps"] for r in rows]
        y = [r["gain_mean"] for r in rows]
        low = [
            r["gain_mean"] - (r["gain_low"] if r["gain_low"] is not None else r["gain_mean"])
            for r in rows
        ]
        high = [
            (r["gain_high"] if r["gain_high"] is not None else r["gain_mean"]) - r["gain_mean"]
            for r in rows
        ]
        label = (
            f"{'fine-tune' if mode == 'finetune' else 'probe'} ({features}), {100 * fraction:g} %"
        )
        left.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=label)
    others = [r for r in report["rows"] if r["gain_mean"] is not None
              and not r["start"].startswith(report["settings"]["method"])]  # fmt: skip
    for row in others:
        x = row["pretrain_minutes"] if minutes else row["pretrain_steps"]
        left.scatter([x], [row["gain_mean"]], marker="x", color="black")
        left.annotate(f"{row['start']} {row['mode'][:2]} {100 * row['fraction']:g}%",
                      (x, row["gain_mean"]), fontsize=7)  # fmt: skip
    left.axhline(0, color="grey", lw=0.8)
    left.axhline(5, color="grey", lw=0.8, ls="--")
    left.set_xscale("log")
    left.set_xlabel("pretraining, CPU minutes (1 core)" if minutes else "pretraining steps")
    left.set_ylabel("test kappa - random start (points)")
    left.set_title("gain over random (mean, 95 % interval over seeds)")
    left.legend(fontsize=7)
    if curve:  # the probe of every kept checkpoint of the longest pretraining
        right = axes[0][1]
        for kind in ("decoder", "encoder"):
            points = [(p["step"], 100 * p[kind]["kappa"]) for p in curve if kind in p]
            if points:
                right.plot(*zip(*points, strict=True), marker=".", label=f"{kind} features")
        right.set_xlabel("pretraining step")
        right.set_ylabel("online probe kappa % (val)")
        right.set_title("online probe over the longest pretraining")
        right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        print(markdown(report))
        if args.figure:
            print(f"wrote {figure(report, args.figure)}")
        return report
    torch.set_num_threads(args.threads)
    stages = ["pretrain", "downstream", "curve", "report"] if args.stage == "all" else [args.stage]
    if args.stage is None:
        raise SystemExit("give --stage (pretrain, downstream, curve, report, all) or --render")
    report = None
    for stage in stages:
        if stage == "pretrain":
            stage_pretrain(args)
            if args.step_seconds is None and args.quick:
                args.step_seconds = measure_step_seconds(args, 2)
        elif stage == "downstream":
            stage_downstream(args)
        elif stage == "curve":
            stage_curve(args)
        else:
            report = combine(args)
            path = write_json(args.out, report)
            print(markdown(report))
            print(f"\nwrote {path}")
            png = args.figure or str(Path(args.out).with_suffix(".png"))
            print(f"wrote {figure(report, png)}")
    return report


if __name__ == "__main__":
    main()
