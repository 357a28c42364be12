"""Which step settings pay on a CPU: channels_last, bf16 autocast and torch.compile, measured.

``train.channels_last``, ``train.amp`` and ``train.compile`` take ``auto``; this benchmark is
what ``auto`` chooses from on a CPU. For a pretraining step (GLCNet, the engine's own
:class:`~contrastseg.train.pretrain_task.PretrainStep`: views, matching, forward, backward,
update) and a fine-tuning step (the engine's own ``FinetuneTask`` step in the shared
``TrainingLoop``: flips and rotations, the segmenter's forward, cross-entropy, backward, the
engine's fused Adam), it times four variants of the same step on the same batch:

* ``fp32``: contiguous tensors, full precision, eager (the baseline);
* ``channels_last``: model and inputs in channels_last;
* ``bf16``: bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``), and with channels_last;
* ``compile``: ``torch.compile`` of the model (inductor), its compiling call timed apart.

The variants run **interleaved**: each round times ``--steps`` steps of every variant in a
rotated order, so a load from other processes during the run falls on all of them alike; the
figure per variant is the median step time over all rounds, and the ratio is the baseline's
median over the variant's (> 1: faster than fp32). One torch thread by default (on a shared
2-core machine a second thread waits for a free core on every operation).

Usage::

    python benchmarks/cpu_step.py [--quick] [--threads 1] [--out benchmarks/results/cpu_step.json]

``--quick`` (a smoke size, seconds) writes ``cpu_step_quick.json`` unless ``--out`` is given,
never the committed results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

import _common
from _common import machine_info, print_table, write_json

from contrastseg.config import load_pretrain_config
from contrastseg.losses.segmentation import build_loss
from contrastseg.models import build_model
from contrastseg.train.finetune import FinetuneTask
from contrastseg.train.finetune_config import load_finetune_config, loss_spec
from contrastseg.train.loop import ENDLESS, TrainingLoop, TrainState
from contrastseg.train.optim import build_optimizer, build_scheduler
from contrastseg.train.pretrain_task import build_pretrain_step
from contrastseg.train.runtime import resolve_amp_dtype, resolve_memory_format, seed_everything

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+channels_last", "compile")


def _settings(variant: str) -> tuple[str, bool, bool]:
    """``(amp, channels_last, compile)`` of a variant (``+`` joins settings)."""
    parts = variant.split("+")
    return ("bf16" if "bf16" in parts else "off", "channels_last" in parts, "compile" in parts)


def _overrides(variant: str, s: dict[str, Any]) -> list[str]:
    """The ``--set`` strings of a variant's step settings, shared by both steps."""
    amp, channels_last, compiled = _settings(variant)
    return [
        f"model.arch={s['arch']}",
        f"train.batch_size={s['batch']}",
        f'train.amp="{amp}"',
        f"train.channels_last={str(channels_last).lower()}",
        f"train.compile={str(compiled).lower()}",
        "train.device=cpu",
    ]


def pretrain_case(variant: str, s: dict[str, Any]) -> Callable[[], None]:
    """One GLCNet pretraining step of ``variant``: the engine's own, on one fixed batch."""
    config = load_pretrain_config(
        None,
        [
            "method.name=glcnet",
            f"views.size={s['view']}",
            f"data.patch_size={s['patch']}",
            f"method.region_size={max(1, s['view'] // 6)}",
            *_overrides(variant, s),
        ],
    )
    seed_everything(0, False, torch.device("cpu"))
    step = build_pretrain_step(
        config, s["bands"], torch.device("cpu"), None, ([0.5] * s["bands"], [0.25] * s["bands"])
    )
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(
        0, 256, (s["batch"], s["bands"], s["patch"], s["patch"]), generator=generator
    ).to(torch.uint8)
    return lambda: step.step(batch)


def finetune_case(variant: str, s: dict[str, Any]) -> Callable[[], None]:
    """One fine-tuning step of ``variant``: the engine's own (``FinetuneTask.train_step`` in the
    shared ``TrainingLoop``: uint patches to float, the flips and rotations, the segmenter's
    forward, cross-entropy, the finite check, backward, the engine's optimizer), on one fixed
    batch; ``finetune_demo.yaml``'s settings, DeepLabV3+ with a fresh 6-class classifier."""
    config = load_finetune_config(None, _overrides(variant, s))
    seed_everything(0, False, torch.device("cpu"))
    device, classes, ignore = torch.device("cpu"), 6, 255
    model_config = {"name": "deeplabv3plus", "arch": s["arch"]}
    model = build_model(model_config, s["bands"], num_classes=classes, backbone_weights=False)
    memory_format = resolve_memory_format(config.train.channels_last, device)
    model = model.to(device, memory_format=memory_format).train()
    forward = torch.compile(model) if config.train.compile else model
    criterion = build_loss(loss_spec(config.loss, config.loss_args), classes, ignore, None)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, ENDLESS, config.optim, ENDLESS)
    amp_dtype = resolve_amp_dtype(config.train.amp, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    mean, std = [0.5] * s["bands"], [0.25] * s["bands"]
    task = FinetuneTask(
        config, model, forward, criterion, generator, [], None,
        SimpleNamespace(ignore_index=ignore), mean, std, memory_format, amp_dtype, device,
        None, ENDLESS, ENDLESS, Path("best.pt"),
    )  # fmt: skip  # no validation here: segmenter, val set and checkpoint are not used
    state = TrainState(model, optimizer, scheduler, scaler, generator)
    loop = TrainingLoop.standalone(state, forward, config.optim.grad_clip, s["batch"])
    size = (s["batch"], s["bands"], s["patch"], s["patch"])
    images = torch.randint(0, 256, size, generator=generator).to(torch.uint8)
    labels = torch.randint(0, classes, size[:1] + size[2:], generator=generator)
    return lambda: loop.step(task, (images, labels))


def measure(
    cases: dict[str, Callable[[], None]], rounds: int, steps: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Interleaved step times of every case; its first call (compilation) timed apart."""
    first: dict[str, float] = {}
    for name, step in cases.items():
        start = time.perf_counter()
        step()  # lazy initialisation, and for compile: tracing and compilation
        first[name] = time.perf_counter() - start
        step()  # a compiled step may recompile once more on the second call
        log(f"  {name}: first step {first[name]:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for _ in range(steps):
                start = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - start)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {statistics.median(times[n]):.3f} s" for n in names
        ))  # fmt: skip
    base = statistics.median(times["fp32"])
    return {
        name: {
            "first_step_s": first[name],
            "step_times_s": times[name],
            "median_step_s": statistics.median(times[name]),
            "speedup_vs_fp32": base / statistics.median(times[name]),
        }
        for name in names
    }


def default_out(quick: bool) -> str:
    """Where results go without ``--out``: a quick run never replaces the committed file."""
    return _common.default_out("cpu_step", quick)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv`` as on the command line); returns what it writes as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (seconds)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/cpu_step.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--view", type=int, default=None, help="view / patch side (96; quick 32)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (8; quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (8; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (2; quick 1)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps-of", nargs="+", choices=["pretrain", "finetune"],
                        default=["pretrain", "finetune"])  # fmt: skip
    args = parser.parse_args(argv)
    if "fp32" not in args.variants:
        parser.error("--variants must include fp32 (the baseline of the ratios)")
    out = args.out or default_out(args.quick)
    torch.set_num_threads(args.threads)
    view = args.view or (32 if args.quick else 96)
    s = {
        "arch": args.arch,
        "view": view,
        "patch": view + view // 8,
        "bands": 4,
        "batch": args.batch or (2 if args.quick else 8),
        "rounds": args.rounds or (1 if args.quick else 8),
        "steps": args.steps or (1 if args.quick else 2),
        "threads": args.threads,
        "variants": args.variants,
    }
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    builders = {"pretrain": pretrain_case, "finetune": finetune_case}
    results: dict[str, Any] = {}
    for kind in args.steps_of:
        log(f"{kind} step, {args.arch}, {view} px, batch {s['batch']}, {args.threads} thread(s)")
        cases = {v: builders[kind](v, s) for v in args.variants}
        results[kind] = measure(cases, s["rounds"], s["steps"], log)
    rows = [
        [kind, name, f"{r['median_step_s']:.3f}", f"{r['speedup_vs_fp32']:.2f}",
         f"{r['first_step_s']:.1f}"]
        for kind, variants in results.items()
        for name, r in variants.items()
    ]  # fmt: skip
    print(
        f"\nCPU step settings ({machine_info(torch.device('cpu')).get('cpu', 'CPU')}): "
        f"{args.arch}, {view} px, batch {s['batch']}, {args.threads} torch thread(s); median "
        f"of {s['rounds']} interleaved rounds x {s['steps']} steps; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print_table(["step", "variant", "median s", "vs fp32", "first step s"], rows)
    winners = {
        kind: max(variants, key=lambda n: variants[n]["speedup_vs_fp32"])
        for kind, variants in results.items()
    }
    print("fastest: " + ", ".join(f"{k}: {v}" for k, v in winners.items()))
    report = {
        "benchmark": "cpu_step",
        "machine": machine_info(torch.device("cpu")),
        "load_average": os.getloadavg(),
        "settings": {**s, "quick": args.quick},
        "fastest": winners,
        "results": results,
    }
    print(f"wrote {write_json(out, report)}")
    return report


if __name__ == "__main__":
    main()
