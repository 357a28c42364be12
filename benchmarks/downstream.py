"""What pretraining is worth downstream: fine-tune and probe SimCLR, GLCNet, dense and random starts.

For one labeled dataset and a compute budget: pretrain with each method (or take given
checkpoints, or any torchvision-keys ResNet weights file with ``--weights``), then train each
start point at label fractions 1 %, 10 % and 100 % — the same labeled patches (the draw
depends only on fraction and seed) and the same seeds for every start — in each mode of
``--modes``: ``finetune`` (the whole network) and ``linear`` (the frozen-encoder probe on the
features the checkpoint trained). The protocol is the same for every start:

- **converged**: a run trains until its validation mIoU has not improved for ``--patience``
  validations (one every ``--eval-steps`` optimizer steps), at most ``--finetune-steps``
  steps; the weights of its best validation are kept.
- **tuned**: each start gets the fine-tuning protocol and learning rate of one grid shared by
  all starts (``--protocols`` x ``--lr-grid``: plain fine-tuning, LP-FT, the pretrained
  decoder loaded or not, frozen BatchNorm statistics, layer-wise lr decay) that maximises its
  validation mIoU, averaged over the seeds, separately for each mode and fraction; the linear
  probe is solved to convergence and chooses its L2 strength on val inside each run. The grid
  runs see no test split.
- **tested once**: only the selected runs are scored on the test split (their ``best.pt``).

Prints kappa, mIoU, OA and mean F1 per mode, fraction and start as mean ± standard
deviation over seeds, the selected protocol and learning rate, and the paired comparison: the
per-seed kappa difference to the random start on the same features (same patches, same
seed), as mean ± standard deviation over seeds and its 95 % t interval.

    python benchmarks/downstream.py --quick                        # demo scenes, CPU minutes
    python benchmarks/downstream.py --data dubai --root ../shared/data/dubai-aerial \
        --val 'Tile 2/*' --seeds 0 1 2                              # CPU days: use a GPU
    python benchmarks/downstream.py --data dubai --root ... --checkpoint glcnet=runs/x/step.pt \
        --weights imagenet=resnet18-f37072fd.pth --modes finetune linear
    python benchmarks/downstream.py --render benchmarks/results/downstream_dubai.json

``--render`` prints a written report's table as Markdown (the table of docs/benchmarks.md) with the
check that more labels score higher for every start; the run itself prints that check too.

In ``linear`` mode each start is probed on the features its checkpoint trained (GLCNet:
decoder, SimCLR: encoder, a ``--weights`` file: backbone) and, beside a decoder, on the
encoder features a default fine-tune transfers; a random start is probed on each of those
features, so that every probe has a random baseline on the same features
(``NAME:FEATURES`` in ``--methods`` asks for other features). ``--work-dir`` keeps the runs:
a run whose ``record.json`` is there (same settings) is not trained again, nor is a finished
pretraining, nor the test score of a reused run, so a stopped benchmark continues where it
was. The same folder splits a long benchmark over several processes or machines: pretrain
once (``--pretrain-only``, one method per process if you like), run disjoint ``--modes`` /
``--fractions`` in parallel, then call once with everything: that call trains nothing and
writes the whole table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
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
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.presets import apply_preset
from contrastseg.models import MODELS
from contrastseg.models.pretrained import read_state_dict
from contrastseg.train.checkpoint import checkpoint_path
from contrastseg.train.evaluate import run_evaluate
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.pretrain import run_pretrain
from contrastseg.train.probe import default_features, trained_parts

METRICS = ("kappa", "miou", "overall_accuracy", "mean_f1")
#: ``data.test`` of the grid runs: matches no key, so no grid run ever sees the test split.
NO_TEST = "__downstream_grid_has_no_test_split__"


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


def config_file(args: argparse.Namespace) -> str:
    return "finetune_dubai.yaml" if args.data == "dubai" else "finetune_demo.yaml"


def _escape(key: str) -> str:
    """An fnmatch pattern that matches ``key`` only."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in key)


class Splits:
    """The data overrides that hide the test split from the grid runs, and those that restore it.

    Grid runs get ``data.test`` = a pattern matching nothing. When the config leaves
    ``data.train`` empty (train = every key not in val or test, as in the Dubai preset), the
    test keys would then join the training split, so the grid runs get the explicit list of
    the training keys instead: the same training images, hence the same label-fraction draw.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        _, fine = data_settings(args)
        config = load_finetune_config(config_file(args), fine)
        data = apply_preset(config.data)
        if not data.test:
            raise SystemExit("the fine-tuning data has no test split (data.test): nothing to score")
        self.test = list(data.test)
        self.grid = [f"data.test={json.dumps([NO_TEST])}"]
        if not data.train:
            keys = sorted({item.key for item in LabeledDataset(config.data, "train").items})
            self.grid.append(f"data.train={json.dumps([_escape(k) for k in keys])}")
        # the split scored: the test split, or the subset of it that --test-subset names
        self.restore = [f"data.test={json.dumps(args.test_subset or self.test)}"]
        self._steps: dict[float, int] = {}

    def steps_per_epoch(self, fraction: float, args: argparse.Namespace) -> int:
        """Optimizer steps per epoch at ``fraction`` (the loader drops the last partial batch)."""
        if fraction not in self._steps:
            _, fine = data_settings(args)
            overrides = [*fine, *self.grid, f"data.label_fraction={fraction}"]
            config = load_finetune_config(config_file(args), overrides)
            n = len(LabeledDataset(config.data, "train"))
            self._steps[fraction] = max(1, n // max(1, min(args.batch, n)))
        return self._steps[fraction]


def pretrain(
    method: str, args: argparse.Namespace, work: Path, extra: Sequence[str] = ()
) -> tuple[Path, float | None]:
    """Pretrain ``method`` (plus ``extra`` overrides) once; a finished run in ``work`` is reused."""
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
    name = next(
        (e.split("=", 1)[1] for e in extra if e.startswith("run.name=")), f"pretrain-{method}"
    )
    done = checkpoint_path(work / name / "checkpoints", args.pretrain_steps)
    if done.is_file():  # a finished pretraining of an earlier call with this --work-dir
        print(f"reusing {done}", flush=True)
        return done, None
    start = time.perf_counter()
    with _quiet(args):
        result = run_pretrain(load_pretrain_config(None, [*overrides, *extra]))
    return result.checkpoint, time.perf_counter() - start


def split_start(spec: str) -> tuple[str, str]:
    """``"random:encoder"`` -> ``("random", "encoder")``; no ``:FEATURES`` means ``auto``."""
    method, _, features = spec.partition(":")
    return method, features or "auto"


def checkpoint_features(checkpoint: Path | None) -> str:
    """The features a linear probe of this start reads by default (what its file trained)."""
    if checkpoint is None:
        return default_features(None)
    state, payload = read_state_dict(checkpoint)
    return default_features(trained_parts(state, payload))


def plan_starts(args, starts: dict[str, Path | None]) -> dict[str, list[tuple[str, str]]]:
    """Per mode, the ``(name, features)`` of the starts it trains (``name`` keys ``starts``).

    Fine-tuning trains each start once (the classifier reads the decoder); the probe reads
    the features each ``NAME:FEATURES`` asks for (``auto``: what the checkpoint trained), and
    a random start is added on every feature kind a pretrained start is probed on.
    """
    specs = [*args.methods, *args.weight_names]
    plan: dict[str, list[tuple[str, str]]] = {}
    for mode in args.modes:
        chosen: list[tuple[str, str]] = []
        for spec in specs:
            name, features = split_start(spec)
            if mode != "linear":
                features = "decoder"
            elif features == "auto":
                features = checkpoint_features(starts[name])
                beside = (name, "encoder")  # what a default fine-tune transfers, probed beside
                if features == "decoder" and args.encoder_probe and starts[name] is not None:
                    chosen += [] if beside in chosen else [beside]
            if (name, features) not in chosen:
                chosen.append((name, features))
        if mode == "linear" and "random" in starts:
            for features in {f for n, f in chosen if n != "random"}:
                if ("random", features) not in chosen:
                    chosen.append(("random", features))
        plan[mode] = chosen
    return plan


@contextlib.contextmanager
def _quiet(args: argparse.Namespace):
    """The engine's console reports go to nowhere unless ``--verbose`` (train.log keeps them)."""
    if getattr(args, "verbose", True):  # benchmarks without the flag (recipe.py) print
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def start_label(name: str, features: str, mode: str) -> str:
    return f"{name}:{features}" if mode == "linear" else name


#: ``--protocols`` tokens: the fine-tuning mode, and the modifiers joined to it with ``+``.
PROTOCOL_HELP = (
    "ft (finetune) or lpft (mode: lp-ft: the converged linear probe's head, then fine-tuning), "
    "each optionally followed by +all (pretrained.parts=all: the pretrained decoder too), "
    "+fbn (pretrained.freeze_bn), +ldX (optim.layer_decay=X), +plrX (pretrained_lr_scale=X), "
    "and @LR for its own lr instead of the --lr-grid; e.g. ft lpft+all lpft+all+ld0.7@3e-4"
)


def protocol_overrides(protocol: str, pretrained: bool) -> tuple[str, list[str]]:
    """``(canonical name, overrides)`` of a fine-tuning protocol of ``--protocols``.

    For a random start (``pretrained`` false) the modifiers about loaded parts (``all``,
    ``fbn``, ``plr``) change nothing and are dropped from the name, so a grid holding ``ft``
    and ``ft+all`` trains the random start once.
    """
    base, *mods = protocol.split("+")
    modes = {"ft": "finetune", "lpft": "lp-ft"}
    if base not in modes:
        raise SystemExit(f"--protocols {protocol!r}: starts with ft or lpft ({PROTOCOL_HELP})")
    overrides, kept = [f"mode={modes[base]}"], [base]
    for mod in mods:
        if mod == "all":
            setting = ["pretrained.parts=all"]
        elif mod == "fbn":
            setting = ["pretrained.freeze_bn=true"]
        elif mod.startswith("ld") and _is_number(mod[2:]):
            setting = [f"optim.layer_decay={float(mod[2:])}"]
        elif mod.startswith("plr") and _is_number(mod[3:]):
            setting = [f"pretrained_lr_scale={float(mod[3:])}"]
        else:
            raise SystemExit(
                f"--protocols {protocol!r}: unknown modifier {mod!r} ({PROTOCOL_HELP})"
            )
        if pretrained or mod.startswith("ld"):
            overrides += setting
            kept.append(mod)
    return "+".join(kept), overrides


def protocol_grid(protocols: Sequence[str], lrs: Sequence[float]) -> list[tuple[str, float]]:
    """``(protocol, lr)`` pairs: every ``--lr-grid`` value for a protocol, only its own for a
    ``PROTOCOL@LR``."""
    grid = []
    for protocol in protocols:
        name, at, lr = protocol.partition("@")
        if at and not _is_number(lr):
            raise SystemExit(f"--protocols {protocol!r}: the lr after @ is not a number")
        grid += [(name, float(lr))] if at else [(name, value) for value in lrs]
    return grid


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def grid_run(
    mode: str, name: str, features: str, checkpoint: Path | None, fraction: float, seed: int,
    lr: float | None, args, work: Path, splits: Splits, protocol: str = "ft",
) -> dict:  # fmt: skip
    """One training run of the grid: no test split; returns its record (val metrics only).

    ``mode`` is ``finetune`` (trained as ``protocol`` says, at ``lr``), ``decoder`` or
    ``linear`` (the converged probe: no lr, its L2 strength chosen on val inside the run).
    """
    _, fine_data = data_settings(args)
    per_epoch = splits.steps_per_epoch(fraction, args)
    if args.eval_every is not None:  # every N epochs
        every, cadence = args.eval_every or 1000000, f"eval.every={args.eval_every or 1000000}"
    else:  # every N steps, whatever the length of an epoch at this fraction
        every, cadence = None, f"eval.every_steps={args.eval_steps}"
    if mode == "finetune":
        protocol, trained = protocol_overrides(protocol, checkpoint is not None)
    else:
        protocol, trained = "-", [f"mode={mode}"]
    tag = f"-{protocol}-lr{lr:g}" if mode == "finetune" else ""
    run_name = f"{mode}-{name}-{features}-{fraction:g}-s{seed}{tag}".replace(":", "_")
    overrides = [
        f"run.root={work}", f"run.name={run_name}", "run.progress=false", "run.log_every=50",
        *fine_data, *splits.grid, f"data.label_fraction={fraction}", f"data.seed={seed}",
        f"train.seed={seed}", f"train.max_steps={args.finetune_steps}",
        f"train.batch_size={args.batch}", f"train.num_workers={args.workers}",
        f"train.device={args.device}", *trained,
        f"eval.window={args.window}", f"eval.stride={args.window}", "eval.overlays=0",
        cadence, *model_overrides(args),
        f"model.name={args.decoder}",  # pretrained as DeepLabV3+: another keeps its backbone
    ]  # fmt: skip
    if mode == "linear":  # the probe: the features it reads; its L2 grid is chosen on val
        overrides.append(f"linear.features={features}")
    else:
        overrides += [f"optim.lr={lr}", f"train.patience={args.patience}"]
        if args.warmup:
            overrides.append(f"optim.warmup_steps={args.warmup}")
    if checkpoint is not None:
        overrides.append(f"pretrained.path={Path(checkpoint).resolve()}")
    run_dir = work / run_name
    record_path = run_dir / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("overrides") == overrides:
            record["reused"] = True
            return record
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    with _quiet(args):
        result = run_finetune(load_finetune_config(config_file(args), overrides))
    assert result.test_metrics is None, "a grid run saw the test split"
    selected = torch.load(result.best_checkpoint, weights_only=True)
    record = {
        "mode": mode, "start": start_label(name, features, mode), "name": name,
        "features": selected["model_config"]["classifier_features"], "fraction": fraction,
        "seed": seed, "lr": lr, "protocol": protocol,
        "val_miou": result.val_metrics["miou"] or 0.0,
        "val_kappa": result.val_metrics["kappa"], "best_epoch": result.best_epoch,
        "l2": (selected.get("best") or {}).get("l2"),
        "steps": result.step,
        "stopped_early": mode != "linear" and result.step < args.finetune_steps,
        "steps_per_epoch": per_epoch, "eval_every_epochs": every,
        "eval_every_steps": None if every else args.eval_steps,
        "seconds": time.perf_counter() - start, "best_checkpoint": str(result.best_checkpoint),
        "overrides": overrides, "decoder": args.decoder,
    }  # fmt: skip
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # best.pt is all that is used
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def select_setting(records: list[dict]) -> tuple[tuple[str, float | None], dict[str, float]]:
    """The (protocol, lr) with the best val mIoU averaged over seeds (ties: the first of the
    sorted keys, i.e. the simpler protocol name and the smaller lr)."""
    by_key: dict[tuple[str, float | None], list[float]] = {}
    for r in records:
        by_key.setdefault((r.get("protocol", "ft"), r["lr"]), []).append(r["val_miou"])
    means = {key: statistics.mean(values) for key, values in by_key.items()}
    ordered = sorted(means, key=lambda k: (len(k[0]), k[0], k[1] if k[1] is not None else 0.0))
    best = max(ordered, key=lambda k: means[k])
    return best, {_setting_name(k): v for k, v in means.items()}


def _setting_name(key: tuple[str, float | None]) -> str:
    protocol, lr = key
    return protocol if lr is None else f"{protocol}@{lr:g}"


def score_test(record: dict, args, splits: Splits) -> dict:
    """The test metrics of a selected run's ``best.pt`` (the only time test is scored)."""
    checkpoint = Path(record["best_checkpoint"])
    # a reused run keeps its best.pt, so its test score (same test split) is reused as well
    cached = checkpoint.parent / "test_record.json"
    if record.get("reused") and cached.is_file():
        scored = json.loads(cached.read_text())
        if scored.get("test_overrides") == splits.restore:
            return {**{k: v for k, v in record.items() if k != "overrides"}, **scored["scores"]}
    start = time.perf_counter()
    with _quiet(args):
        metrics = run_evaluate(
            checkpoint, checkpoint.parent / "test", splits.restore, split="test", device=args.device
        )
    scores = {**{k: metrics[k] for k in METRICS}, "test_seconds": time.perf_counter() - start}
    cached.write_text(json.dumps({"test_overrides": splits.restore, "scores": scores}) + "\n")
    return {**{k: v for k, v in record.items() if k != "overrides"}, **scores}


def _mean_spread(values: list[float], digits: int = 2) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


#: Two-sided 95 % quantiles of Student's t distribution by degrees of freedom (1..30).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
    2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060,
    2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_interval(values: list[float]) -> tuple[float, float, float] | None:
    """``(mean, low, high)``: the 95 % t interval of the mean of paired differences (None for
    fewer than 2 values)."""
    if len(values) < 2:
        return None
    mean = statistics.mean(values)
    half = T975[min(len(values) - 1, len(T975)) - 1] * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def _interval_text(values: list[float]) -> str:
    interval = t_interval(values)
    if interval is None:
        return "-"
    mean, low, high = interval
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def summarise(runs: list[dict], selection: list[dict]) -> list[list]:
    """One row per mode, fraction and start: mean ± std over seeds, and the paired kappa gain.

    ``steps`` is the mean number of steps trained, ``stopped early`` how many of the seeds'
    runs stopped on patience before the step cap (the others were still improving, or had
    improved within the patience window, when the cap ended them).

    The gain is the per-seed difference to the random start of the same mode on the same
    features (same labeled patches, same seed), each at its own selected lr, as mean ± std
    over seeds, with the number of seeds whose difference is positive (with 3 seeds the
    spread is a rough guide: 3/3 is the strongest a sign count can say).
    """
    rows = []
    for chosen_lr in selection:
        mode, start, fraction = chosen_lr["mode"], chosen_lr["start"], chosen_lr["fraction"]
        chosen = [
            r for r in runs if (r["mode"], r["start"], r["fraction"]) == (mode, start, fraction)
        ]
        if not chosen:
            continue
        cells = [_mean_spread([100 * (r[key] or 0.0) for r in chosen]) for key in METRICS]
        baseline = {
            (r["seed"], r["features"]): r
            for r in runs
            if r["name"] == "random" and r["mode"] == mode and r["fraction"] == fraction
        }
        gains = [
            100 * ((r["kappa"] or 0.0) - (baseline[key]["kappa"] or 0.0))
            for r in chosen
            if (key := (r["seed"], r["features"])) in baseline
        ]
        baseline_row = chosen[0]["name"] == "random" or not gains
        paired = "-" if baseline_row else _mean_spread(gains)
        interval = "-" if baseline_row else _interval_text(gains)
        above = "-" if baseline_row else f"{sum(g > 0 for g in gains)}/{len(gains)}"
        val = _mean_spread([100 * r["val_miou"] for r in chosen])
        steps = f"{statistics.mean(r['steps'] for r in chosen):.0f}"
        early = f"{sum(bool(r['stopped_early']) for r in chosen)}/{len(chosen)}"
        lr = chosen_lr["lr"]
        rows.append(
            [mode, f"{100 * fraction:g} %", start, chosen[0]["features"],
             chosen_lr.get("protocol", "ft"), "-" if lr is None else f"{lr:g}",
             *cells, paired, interval, above, val, steps, early, len(chosen)]
        )  # fmt: skip
    return rows


HEADERS = [
    "mode", "labels", "start", "features", "protocol", "lr", "kappa %", "mIoU %", "OA %",
    "mean F1 %", "kappa - random (paired)", "95 % interval", "seeds above random", "val mIoU %",
    "steps", "stopped early", "seeds",
]  # fmt: skip


def fraction_order(report: dict) -> list[str]:
    """Where more labels do not score a higher test kappa than fewer, per mode and start."""
    kappa: dict[tuple[str, str], dict[float, list[float]]] = {}
    for run in report["runs"]:
        cell = kappa.setdefault((run["mode"], run["start"]), {})
        cell.setdefault(run["fraction"], []).append(run["kappa"] or 0.0)
    problems = []
    for (mode, start), by_fraction in kappa.items():
        means = sorted((f, statistics.mean(v)) for f, v in by_fraction.items())
        for (low, low_kappa), (high, high_kappa) in itertools.pairwise(means):
            if high_kappa <= low_kappa:
                problems.append(
                    f"{mode} {start}: {100 * high:g} % ({100 * high_kappa:.1f}) does not beat "
                    f"{100 * low:g} % ({100 * low_kappa:.1f})"
                )
    return problems


def markdown(report: dict) -> str:
    """The table of a written report as Markdown (what docs/benchmarks.md shows), and the check that
    more labels score higher."""
    keep = ["mode", "labels", "start", "features", "protocol", "lr", "kappa %", "mIoU %",
            "OA %", "mean F1 %", "kappa - random (paired)", "95 % interval",
            "seeds above random", "steps", "stopped early"]  # fmt: skip
    headers = report["table"]["headers"]
    keep = [k for k in keep if k in headers]  # reports written before a column existed
    lines = ["| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
    for row in report["table"]["rows"]:
        cells = dict(zip(headers, row, strict=True))
        lines.append("| " + " | ".join(str(cells[k]) for k in keep) + " |")
    problems = fraction_order(report)
    lines.append("")
    lines.append(
        "more labels score a higher mean test kappa for every mode and start"
        if not problems
        else "more labels do not always score higher: " + "; ".join(problems)
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo scenes, tiny budgets")
    parser.add_argument(
        "--render", metavar="JSON", help="print the Markdown table of a written report and stop"
    )
    parser.add_argument(
        "--figure", metavar="PNG", help="with --render: also draw kappa against label fraction "
        "per start and mode (benchmarks/figures.py, the docs' figure)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--out", default="benchmarks/results/downstream.json")
    parser.add_argument("--data", choices=["demo", "dubai"], default="demo")
    parser.add_argument("--root", default="../shared/data/dubai-aerial")
    parser.add_argument("--checkpoint", action="append", default=[], help="METHOD=PATH")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        help="NAME=FILE: a start from a ResNet weights file with torchvision keys (ImageNet, "
        "another SSL method's backbone); loaded as pretrained.path",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="start points: any registered method, random; NAME:FEATURES picks the probe's "
        "features (default: simclr glcnet dense random; --quick: glcnet random)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["finetune", "linear", "decoder"],
        default=["finetune", "linear"],
        help="finetune: the whole network; linear: the frozen-encoder probe; decoder: frozen "
        "backbone",
    )
    parser.add_argument("--mode", choices=["finetune", "linear", "decoder"], help="= --modes MODE")
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=None,
        help="default 0.01 0.1 1 (--quick: 0.1 1)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument(
        "--finetune-steps", type=int, default=1000, help="step cap of every run (also the "
        "length of its cosine schedule)"
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--lr-grid", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3],
        help="fine-tuning learning rates; each start gets the one with the best val mIoU",
    )  # fmt: skip
    parser.add_argument(
        "--protocols", nargs="+", default=["ft"], help="fine-tuning protocols, selected per "
        "start with the lr on val: " + PROTOCOL_HELP,
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=0, help="optim.warmup_steps of the fine-tuning runs"
    )  # fmt: skip
    parser.add_argument(
        "--no-encoder-probe", dest="encoder_probe", action="store_false",
        help="linear mode: do not probe the encoder features beside a checkpoint's decoder",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=None, help="= --lr-grid LR")
    parser.add_argument(
        "--eval-steps", type=int, default=50,
        help="validate every N optimizer steps (eval.every_steps), the same for every fraction",
    )  # fmt: skip
    parser.add_argument(
        "--eval-every", type=int, default=None, help="validate every N epochs instead of "
        "--eval-steps (0: at the end only)"
    )  # fmt: skip
    parser.add_argument(
        "--patience", type=int, default=5, help="stop after N validations without a better val "
        "mIoU (0: train to --finetune-steps)"
    )  # fmt: skip
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument(
        "--decoder",
        choices=list(MODELS),
        default="deeplabv3plus",
        help="the network fine-tuned, any model.name (pretraining uses DeepLabV3+; another "
        "loads its backbone and trains a fresh decoder; segnet needs a VGG16-BN backbone)",
    )
    parser.add_argument("--width", type=int, default=64, help="ASPP and decoder channels")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's; pin to 1 per process on a shared CPU)",
    )  # fmt: skip
    parser.add_argument("--val", default="", help="dubai: key pattern of the validation split")
    parser.add_argument(
        "--test-subset", nargs="+", default=None, metavar="PATTERN",
        help="score only these keys of the test split (e.g. 'Tile 8/*_00[159]': 3 of its 9 "
        "images); the test images stay out of every training split all the same",
    )  # fmt: skip
    parser.add_argument("--work-dir", default=None, help="keep runs here (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="print the engine's reports")
    parser.add_argument(
        "--pretrain-only", action="store_true",
        help="pretrain the --methods into --work-dir and stop (later calls reuse them)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.mode:
        args.modes = [args.mode]
    if args.lr is not None:
        args.lr_grid = [args.lr]
    if args.quick:
        args.data, args.seeds = "demo", args.seeds[:2]
        args.pretrain_steps, args.finetune_steps = 20, 40
        args.eval_steps, args.eval_every, args.patience = 10, None, 2
        args.patch, args.window, args.width, args.scene_size = 32, 128, 32, 192
        args.lr_grid = sorted({args.lr_grid[0], args.lr_grid[-1]})
        args.methods = args.methods or ["glcnet", "random"]
        args.fractions = args.fractions or [0.1, 1.0]
    args.methods = args.methods or ["simclr", "glcnet", "dense", "random"]
    args.fractions = args.fractions or [0.01, 0.1, 1.0]
    args.weight_names = [item.split("=", 1)[0] for item in args.weights]
    if args.pretrain_only and not args.work_dir:
        parser.error("--pretrain-only needs --work-dir (where the later calls find the runs)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        print(markdown(report))
        if args.figure:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from figures import downstream_figure

            print(f"wrote {downstream_figure(report, Path(args.figure))}")
        return report
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(item.split("=", 1) for item in args.checkpoint)
    weights = dict(item.split("=", 1) for item in args.weights)
    device = torch.device(args.device)
    splits = Splits(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp).resolve()
        starts: dict[str, Path | None] = {}
        pretrain_seconds: dict[str, float | None] = {}
        for spec in args.methods:
            method, _ = split_start(spec)
            if method in starts:  # the same start probed on other features
                continue
            if method == "random":
                starts[method] = None
            elif method in given:
                starts[method] = Path(given[method])
            else:
                print(f"pretraining {method} for {args.pretrain_steps} steps ...", flush=True)
                starts[method], pretrain_seconds[method] = pretrain(method, args, work)
        if args.pretrain_only:
            print("pretrained: " + ", ".join(f"{k}={v}" for k, v in starts.items() if v))
            return {"checkpoints": {k: str(v) for k, v in starts.items() if v}}
        for name, path in weights.items():
            starts[name] = Path(path)
        plan = plan_starts(args, starts)

        grid_runs, runs, selection = [], [], []
        for mode in args.modes:
            settings: list[tuple[str, float | None]] = (
                protocol_grid(args.protocols, args.lr_grid)
                if mode == "finetune"
                else [("-", None)]
                if mode == "linear"
                else [("ft", lr) for lr in args.lr_grid]
            )
            for fraction in args.fractions:
                # seed by seed, every start and setting: a run stopped early has paired seeds
                records: dict[tuple[str, str], list[dict]] = {key: [] for key in plan[mode]}
                for seed in args.seeds:
                    for protocol, lr in settings:
                        for name, features in plan[mode]:
                            record = grid_run(
                                mode, name, features, starts[name], fraction, seed, lr, args,
                                work, splits, protocol,
                            )  # fmt: skip
                            if any(r["overrides"] == record["overrides"]
                                   for r in records[name, features]):  # fmt: skip
                                continue  # a random start's protocols that are the same run
                            records[name, features].append(record)
                            print(
                                f"{mode} {record['start']} {100 * fraction:g} % seed {seed} "
                                f"{_setting_name((record['protocol'], lr))}: val mIoU "
                                f"{100 * record['val_miou']:.2f} after {record['steps']} steps "
                                f"({record['seconds']:.0f} s"
                                + (", reused)" if record.get("reused") else ")"),
                                flush=True,
                            )
                for (name, features), chosen in records.items():
                    label = start_label(name, features, mode)
                    (protocol, lr), by_setting = select_setting(chosen)
                    selection.append(
                        {"mode": mode, "start": label, "fraction": fraction, "lr": lr,
                         "protocol": protocol, "val_miou_by_setting": by_setting}
                    )  # fmt: skip
                    for record in chosen:
                        if (record["protocol"], record["lr"]) == (protocol, lr):
                            runs.append(score_test(record, args, splits))
                    print(
                        f"  -> {label}: {_setting_name((protocol, lr))} selected on val; test "
                        "scored", flush=True,
                    )  # fmt: skip
                    grid_runs += [{k: v for k, v in r.items() if k != "overrides"} for r in chosen]

    print()
    rows = summarise(runs, selection)
    print_table(HEADERS, rows)
    for problem in fraction_order({"runs": runs}):
        print(f"note: {problem}")
    settings = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "weights")}
    settings["checkpoints"] = {k: (str(v) if v else None) for k, v in starts.items()}
    settings["test_patterns"] = splits.test
    if not pretrain_seconds:  # every start point was given: nothing was pretrained here
        settings["pretrain_steps"] = settings["pretrain_batch"] = None
    report = {
        "benchmark": "downstream",
        "protocol": "early stopping on val mIoU (patience, step cap); lr per mode, start and "
        "fraction = argmax over the grid of the val mIoU averaged over seeds; test scored "
        "once, for the selected lr only",
        "machine": machine_info(device),
        "settings": settings,
        "pretrain_seconds": pretrain_seconds,
        "table": {"headers": HEADERS, "rows": rows},
        "selection": selection,
        "runs": runs,
        "grid_runs": grid_runs,
    }
    path = write_json(args.out, report)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
