"""Images/s, peak memory and FLOP/s of one GLCNet pretraining step, as the engine runs it.

Each case builds the run from the real config (``--config``, default our Potsdam recipe
``glcnet_potsdam.yaml``, plus ``--set`` overrides and the case's own: arch, batch size,
``train.amp``, ``train.channels_last``, ``train.compile``) and times the engine's own step:
the ``PretrainTask`` that ``run_pretrain`` builds (``train/pretrain_task.py``: uint8 batch ->
``to_float`` -> ``PairedViews`` -> the method's ``prepare`` (matched regions / points) ->
per-band normalisation -> autocast ``PretrainModel`` forward (losses)) updated by the shared
loop's ``TrainingLoop.step`` (finiteness check -> backward -> optimizer and schedule step),
not a copy of it. ``--set method.name=dense`` (or any method) times that method. Figures per case:

* **img/s (no data)**: the batch is already on the device (one uint8 batch from the loader,
  reused), so the data wait is excluded; **img/s (data)**: every step takes the next batch of
  a real ``build_loader`` over ``UnlabeledDataset`` (``--workers`` processes reading windows
  of generated 4-band TIFFs, or ``--data-root``) and copies it to the device, as training
  does; **wait %** is the share of that time spent waiting for the loader. Both are the mean
  over ``--steps`` steps (stalls count), each step synchronised, after untimed warmup steps
  (``torch.compile`` tracing and compilation happen there; the compiling step's time is
  reported as **compile s**).
* **views %**: to_float + views + matching + normalisation, timed alone on the same batch,
  as a share of the step (issue 3's goal: under 10 % of a ResNet-50 step on a GPU).
* **peak MiB**: CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (model,
  optimizer state, activations, batch). CPU: growth of the case process's resident high-water
  mark (``ru_maxrss``) from after the imports to the end (model, optimizer state,
  activations, allocator caches; loader workers are other processes and not counted); each
  case runs in a fresh subprocess for that (``--in-process`` skips it).
* **TFLOP/s** and **% peak**: convolution/matmul FLOPs of one step (forward + backward)
  counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model, over the step
  time. The peak comes from :data:`PEAK_TFLOPS` (NVIDIA data sheets, dense): bf16/fp16 for
  AMP cases, TF32 for fp32 cases (cuDNN convolutions use TF32 tensor cores by default).
  Unknown GPUs and CPUs get no fraction.

``--quick`` (CPU): ResNet-18, batches 4 and 8, 96 px views (not 224), eager, fp32 (and bf16
on a CPU with native bf16, where ``train.amp=auto`` uses it), one torch thread.

* **split**: the step's time by phase (views, matching, normalize, forward, checks,
  backward, optimizer), from ``steps`` more steps under ``torch.profiler`` reading the
  engine's own ``contrastseg/<phase>`` ranges (:func:`step_split`; ``--no-split`` skips).
Full: ResNet-18 (batches 32-256) and ResNet-50 (32-128) at 224 px; per arch a batch sweep at
the engine defaults (bf16, channels_last) with compile off and on, and every AMP x
channels_last x compile combination at ``--toggle-batch`` (``--matrix factorial`` runs every
combination at every batch). Out-of-memory cases are reported as OOM.

Usage::

    python benchmarks/pretrain_step.py [--quick] [--device cpu|cuda] [--out benchmarks/results/pretrain_step.json]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))

import _common
from _common import (
    add_device_argument,
    machine_info,
    print_table,
    rss_peak_bytes,
    synchronize,
    time_it,
    write_json,
)

from contrastseg.config import PretrainConfig, load_pretrain_config
from contrastseg.data import UnlabeledDataset, build_loader, set_loader_epoch, write_demo_dataset
from contrastseg.data.config import DEFAULT_PATTERNS
from contrastseg.train.pretrain_task import build_pretrain_step
from contrastseg.train.runtime import (
    STEP_PHASES,
    cpu_has_bf16,
    seed_everything,
    synchronized_phases,
)

#: Dense tensor-core peaks in TFLOP/s (NVIDIA data sheets, SXM unless named): the first
#: entry whose key the device name contains wins, hence the order.
PEAK_TFLOPS: tuple[tuple[str, str, float, float], ...] = (
    # (name contains, label, bf16 / fp16, tf32)
    ("H100 PCIe", "H100 PCIe", 756.0, 378.0),
    ("H100 NVL", "H100 NVL", 835.0, 418.0),
    ("H200 NVL", "H200 NVL", 835.0, 418.0),
    ("H200", "H200 SXM", 989.4, 494.7),
    ("H100", "H100 SXM", 989.4, 494.7),
    ("A100", "A100", 312.0, 156.0),
)
#: The measured columns of the table: header, record key, format, scale.
COLUMNS = (
    ("img/s", "images_per_s", ".1f", 1),
    ("vs fp32 eager", "speedup_vs_fp32_eager", ".2f", 1),
    ("img/s data", "images_per_s_with_data", ".1f", 1),
    ("wait %", "data_wait_fraction", ".0f", 100),
    ("views %", "views_matching_share", ".1f", 100),
    ("peak MiB", "peak_memory_mib", ".0f", 1),
    ("GFLOP/step", "flops_per_step", ".0f", 1e-9),
    ("TFLOP/s", "achieved_tflops", ".3g", 1),
    ("% peak", "fraction_of_peak", ".1f", 100),
    ("compile s", "compile_step_s", ".0f", 1),
)
CASE_KEYS = ("arch", "batch", "amp", "channels_last", "compile")
FULL_BATCHES = {"resnet18": (32, 64, 128, 256), "resnet50": (32, 64, 128)}


def device_peak(name: str, amp: str) -> dict[str, Any] | None:
    """The peak FLOP/s of GPU ``name`` for precision ``amp`` (``bf16``/``fp16``/``off``), or None."""
    for key, label, half, tf32 in PEAK_TFLOPS:
        if key.lower() in name.lower():
            precision = "tf32" if amp == "off" else "bf16/fp16"
            tflops = tf32 if amp == "off" else half
            return {"gpu": label, "precision": precision, "tflops": tflops}
    return None


def case_config(case: dict[str, Any], s: dict[str, Any]) -> PretrainConfig:
    """The engine config of one case: ``--config`` + ``--set`` + the case's settings."""
    patches = (s["steps"] + 2 * s["workers"] + 3) * case["batch"]
    overrides = [
        # enough random windows that one epoch feeds every step of the case
        *_data_overrides(s, math.ceil(patches * s["patch"] ** 2 / s["data_area"])),
        *s["overrides"],  # after the data defaults (so --set data.bands=... wins), before the case
        f"model.arch={case['arch']}",
        f"train.batch_size={case['batch']}",
        f"train.amp={json.dumps(case['amp'])}",  # quoted: YAML reads a bare off as False
        f"train.channels_last={str(case['channels_last']).lower()}",
        f"train.compile={str(case['compile']).lower()}",
        f"train.device={s['device']}",
        f"train.num_workers={s['workers']}",
    ]
    return load_pretrain_config(s["config"], overrides)


def _data_overrides(s: dict[str, Any], coverage: float) -> list[str]:
    return [
        f"views.size={s['view']}",
        f"method.region_size={s['region']}",
        f"data.patch_size={s['patch']}",
        f"data.roots={json.dumps([s['data_root']])}",
        f"data.patterns={json.dumps(DEFAULT_PATTERNS)}",
        "data.exclude=[]",
        "data.sampling=random",
        f"data.coverage={coverage}",
    ]


def data_area(s: dict[str, Any]) -> int:
    """Pixels in the images of ``s["data_root"]`` that the config's data section uses."""
    config = load_pretrain_config(s["config"], [*_data_overrides(s, 1.0), *s["overrides"]])
    return sum(src.height * src.width for src in UnlabeledDataset(config.data).sources)


def run_case(case: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this process; see the module docstring for what each figure is."""
    rss_before = rss_peak_bytes()
    torch.set_num_threads(s["threads"])
    config = case_config(case, s)
    device = torch.device(s["device"])
    seed_everything(config.train.seed, False, device)
    dataset = UnlabeledDataset(config.data)
    bands = dataset.num_bands
    loader = build_loader(dataset, case["batch"], config.train.num_workers, seed=config.train.seed)
    set_loader_epoch(loader, 0)
    # Normalisation costs the same whatever the values; the recipe's stats file is not here.
    mean = config.normalize.mean or [0.5] * bands
    std = config.normalize.std or [0.25] * bands

    # The engine's own step: the task run_pretrain builds, updated by the shared loop.
    engine = build_pretrain_step(config, bands, device, dataset.nodata, (mean, std))
    amp_dtype = engine.task.amp_dtype

    def prepare(batch: Tensor) -> None:
        engine.prepare(batch)  # views + the method's inputs + normalisation

    def step(batch: Tensor, eager: bool = False) -> None:
        engine.step(batch, eager)  # forward, finite check (a sync), backward, update

    batches = iter(loader)
    fixed = next(batches).to(device)
    # Untimed warmup. The first step pays lazy initialisation (and cuDNN autotuning); it runs
    # eager under the FLOP counter, which is also right for compiled cases: same math.
    with FlopCounterMode(display=False) as counter:
        step(fixed, eager=True)
    flops = counter.get_total_flops()
    compile_s = None
    if config.train.compile:
        synchronize(device)
        start = time.perf_counter()
        step(fixed)  # tracing and compilation
        synchronize(device)
        compile_s = time.perf_counter() - start
    # torch.compile may recompile on the next calls (guards on new values): keep them out too.
    for _ in range(max(s["warmup"] - 1, 2 if config.train.compile else 0)):
        step(fixed)

    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_it(lambda: step(fixed), device, repeats=s["steps"], warmup=0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    prep_times = time_it(lambda: prepare(fixed), device, repeats=s["steps"], warmup=1)

    split = step_split(lambda: step(fixed), device, s["steps"]) if s.get("split", True) else None

    result: dict[str, Any] = {
        "step_split": split,
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "compile_step_s": compile_s,
        "step_times_s": times,
        "step_s": statistics.mean(times),
        "images_per_s": case["batch"] / statistics.mean(times),
        "images_per_s_median": case["batch"] / statistics.median(times),
        "views_matching_s": statistics.mean(prep_times),
        "views_matching_share": statistics.mean(prep_times) / statistics.mean(times),
        "flops_per_step": flops,
        "achieved_tflops": flops / statistics.mean(times) / 1e12,
    }
    if s["data_included"]:
        wait = 0.0

        def step_with_data() -> None:
            nonlocal wait
            t0 = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t0
            step(batch)

        # Drain the batches the workers prefetched while the loader sat idle, so that the
        # timed steps see the steady state.
        for _ in range(2 * config.train.num_workers + 1):
            step_with_data()
        wait = 0.0
        data_times = time_it(step_with_data, device, repeats=s["steps"], warmup=0)
        result |= {
            "data_step_times_s": data_times,
            "images_per_s_with_data": case["batch"] / statistics.mean(data_times),
            "data_wait_fraction": wait / sum(data_times),
        }
    if device.type == "cuda":
        result["peak_memory_mib"] = peak / 2**20
        gpu = device_peak(torch.cuda.get_device_name(device), result["amp_dtype"])
        if gpu is not None:
            result["device_peak"] = gpu
            result["fraction_of_peak"] = result["achieved_tflops"] / gpu["tflops"]
    elif s["isolated"]:
        result["peak_memory_mib"] = (rss_peak_bytes() - rss_before) / 2**20
    return result


def step_split(step: Callable[[], None], device: torch.device, steps: int) -> dict[str, float]:
    """Share of a step's time per labelled phase (:data:`~contrastseg.train.runtime.STEP_PHASES`).

    ``steps`` steps run under ``torch.profiler``; each ``contrastseg/<phase>`` range of the
    engine's step gives its time (on CUDA each range waits for its kernels:
    :func:`~contrastseg.train.runtime.synchronized_phases`, so the split adds syncs that the
    timed steps do not have). The
    engine's ``forward`` range holds the task's whole ``train_step``, so the input phases
    (views, matching, normalize) are taken out of it: ``forward`` here is the network and the
    losses. ``other`` is what no range covers (zero_grad, Python between the phases). The
    profiler's own overhead inflates short phases slightly; the shares are what to read.
    """
    # CPU-side ranges only (a CUDA run also lists each range's GPU-side annotation): with
    # synchronized_phases each range waits for its kernels, so its CPU time is its time
    synchronize(device)
    start = time.perf_counter()
    with (
        synchronized_phases(device),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        for _ in range(steps):
            step()
            synchronize(device)
    wall = time.perf_counter() - start
    seconds = dict.fromkeys(STEP_PHASES, 0.0)
    cpu = torch.autograd.DeviceType.CPU
    for event in prof.key_averages():
        name = event.key.removeprefix("contrastseg/")
        if event.key.startswith("contrastseg/") and name in seconds:
            if getattr(event, "device_type", cpu) == cpu:
                seconds[name] += event.cpu_time_total / 1e6
    seconds["forward"] -= seconds["views"] + seconds["matching"] + seconds["normalize"]
    seconds["other"] = max(wall - sum(seconds.values()), 0.0)
    return {name: value / wall for name, value in seconds.items()}


def _guarded(case: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """``run_case`` with out-of-memory and other failures reported as data, not raised."""
    try:
        return run_case(case, s)
    except Exception as err:
        text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
        return {"error": "OOM" if "out of memory" in str(err).lower() else text[:300]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if case["compile"]:
            torch._dynamo.reset()  # no compiled graphs or caches carried into the next case


def _in_subprocess(case: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps([case, s])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["child process failed"])[-1]}
    return json.loads(lines[-1])


def plan_cases(
    archs: list[str],
    batches: dict[str, list[int]],
    toggle_batch: int,
    default_amp: str,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """The cases to run: a batch sweep at the engine defaults plus the on/off toggles.

    ``args.amp``, ``args.channels_last`` and ``args.compile`` name the settings to try; the
    sweep uses ``default_amp`` (if tried) and the first channels_last setting.
    """
    on_off = {"on": [True], "off": [False], "both": [True, False]}
    compiles, formats = on_off[args.compile][::-1], on_off[args.channels_last]
    amp = default_amp if default_amp in args.amp else args.amp[0]
    cases: list[dict[str, Any]] = []
    for arch in archs:
        if args.matrix == "factorial":
            grid = itertools.product(batches[arch], args.amp, formats, compiles)
        else:
            sweep = [(b, amp, formats[0], c) for b in batches[arch] for c in compiles]
            toggles = itertools.product([toggle_batch], args.amp, formats, compiles)
            grid = [*sweep, *toggles]
        for batch, amp_setting, channels_last, compiled in grid:
            case = dict(
                zip(CASE_KEYS, (arch, batch, amp_setting, channels_last, compiled), strict=True)
            )
            if case not in cases:
                cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv`` as on the command line); returns what it writes as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized: R18, small batches/views")
    add_device_argument(parser)
    parser.add_argument(
        "--out", default=None, help="default results/pretrain_step.json (--quick: temporary folder)"
    )
    parser.add_argument("--config", default="glcnet_potsdam.yaml", help="pretraining config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--archs", nargs="+", default=None, help="default R18 (+ R50 full)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--toggle-batch", type=int, default=None, help="batch of the toggles")
    parser.add_argument(
        "--amp",
        nargs="+",
        default=None,
        choices=["bf16", "fp16", "off"],
        help="bf16 off (CPU: off)",
    )
    parser.add_argument("--channels-last", choices=["on", "off", "both"], default="both")
    parser.add_argument("--compile", choices=["off", "on", "both"], default=None)
    parser.add_argument("--matrix", choices=["plan", "factorial"], default="plan")
    parser.add_argument("--view-size", type=int, default=None, help="224, or 96 with --quick")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (1 quick, 3)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (quick: 1)")
    parser.add_argument("--data-root", default=None, help="image folder; default generated TIFFs")
    parser.add_argument("--no-data", action="store_true", help="skip the data-included variant")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per case")
    parser.add_argument(
        "--no-split", action="store_true", help="skip the profiled time split of the step"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one case in a fresh process; the result as the last stdout line
        case, settings = json.loads(args.child)
        print(json.dumps(_guarded(case, settings)))
        return {}

    args.out = args.out or _common.default_out("pretrain_step", args.quick)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    archs = args.archs or (["resnet18"] if args.quick else ["resnet18", "resnet50"])
    batches = {
        a: args.batch_sizes or ([4, 8] if args.quick else list(FULL_BATCHES.get(a, (32, 64))))
        for a in archs
    }
    toggle_batch = args.toggle_batch or (8 if args.quick else 64)
    view = args.view_size or (96 if args.quick else 224)
    patch, region = round(view * 256 / 224), max(1, round(48 * view / 224))  # recipe ratios
    compile_mode = args.compile or ("both" if on_gpu else "off")
    args.compile = compile_mode
    # bf16 on a CPU only where it computes bf16 natively (what train.amp=auto does there)
    bf16 = on_gpu or cpu_has_bf16()
    args.amp = args.amp or (["bf16", "off"] if bf16 else ["off"])
    cases = plan_cases(archs, batches, toggle_batch, "bf16" if bf16 else "off", args)

    with tempfile.TemporaryDirectory(prefix="pretrain_step_") as tmp:
        scene, n_scenes = max(128, 2 * patch), 8 if args.quick else 16
        data_root = args.data_root or str(
            write_demo_dataset(tmp, n_scenes, scene, bands=4) / "images"
        )
        # On a shared machine a second intra-op thread waits for a free core on every op
        # (2 threads made add_ on 4.7 MB 80x slower here), hence one thread in --quick.
        threads = args.threads or (1 if args.quick else torch.get_num_threads())
        torch.set_num_threads(threads)
        settings = {
            "config": args.config,
            "threads": threads,
            "overrides": args.overrides,
            "device": args.device,
            "view": view,
            "patch": patch,
            "region": region,
            "warmup": args.warmup or (1 if args.quick else 3),
            "steps": args.steps or (6 if args.quick else 10),
            "workers": args.workers if args.workers is not None else (1 if args.quick else 8),
            "data_root": data_root,
            "data_included": not args.no_data,
            "isolated": not args.in_process,
            "split": not args.no_split,
        }
        settings["data_area"] = data_area(settings)
        records = []
        for n, case in enumerate(cases, 1):
            result = _guarded(case, settings) if args.in_process else _in_subprocess(case, settings)
            records.append({**case, **result})
            status = result.get("error") or f"{result['images_per_s']:.1f} img/s"
            print(f"[{n}/{len(cases)}] {case}: {status}", file=sys.stderr, flush=True)

    report = _report(records, settings, device, args, compile_mode)
    path = write_json(args.out, report)
    print(f"wrote {path}")
    return report


def _report(
    records: list[dict[str, Any]],
    settings: dict[str, Any],
    device: torch.device,
    args: argparse.Namespace,
    compile_mode: str,
) -> dict[str, Any]:
    """Print the table and the notes; return the JSON payload."""

    eager_fp32 = {  # img/s of the fp32, contiguous, eager case of each arch and batch
        (r["arch"], r["batch"]): r["images_per_s"]
        for r in records
        if (r["amp"], r["channels_last"], r["compile"]) == ("off", False, False)
        and "images_per_s" in r
    }
    for r in records:
        base = eager_fp32.get((r["arch"], r["batch"]))
        if base and "images_per_s" in r:
            r["speedup_vs_fp32_eager"] = r["images_per_s"] / base
    on_off = lambda flag: "on" if flag else "off"  # noqa: E731
    rows = [
        [r["arch"], r["batch"], r["amp"], on_off(r["channels_last"]), on_off(r["compile"])]
        + [
            "-" if r.get(key) is None else format(scale * r[key], spec)
            for _, key, spec, scale in COLUMNS
        ]
        + [r.get("error", "")]
        for r in records
    ]
    s = settings
    print(
        f"\nGLCNet pretraining step on {device} ({machine_info(device).get('gpu', 'CPU')}), "
        f"views {s['view']} px from {s['patch']} px patches, regions {s['region']} px; "
        f"mean of {s['steps']} synchronised steps after {s['warmup']} warmup "
        "(compile: +1 compiling, >= 2); "
        f"{s['threads']} torch thread(s), {s['workers']} loader worker(s); load average {os.getloadavg()[0]:.2f}"
    )
    headers = ["arch", "batch", "amp", "CL", "compile", *(c[0] for c in COLUMNS), "note"]
    print_table(headers, rows)
    memory = (
        "torch.cuda.max_memory_allocated over the timed steps (model, optimizer state, "
        "activations, batch)"
        if device.type == "cuda"
        else "not measured (--in-process)"
        if args.in_process
        else "growth of ru_maxrss (resident high-water mark) of a fresh subprocess per case, "
        "from after imports to the end (model, optimizer, activations, allocator caches; "
        "loader workers not counted)"
    )
    peaks = ", ".join(f"{label} {half:g}/{tf32:g}" for _, label, half, tf32 in PEAK_TFLOPS)
    notes = {
        "peak_memory": memory,
        "flops": "FlopCounterMode (conv/matmul) of one eager forward+backward; TFLOP/s = "
        "that / mean step time",
        "device_peak": f"dense TFLOP/s bf16/tf32 by GPU name: {peaks}; fp32 cases against "
        f"tf32 (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}); unknown GPU or CPU: none",
        "views_share": "to_float + PairedViews + match_regions + normalisation, timed alone, "
        "over the step time without data wait (goal: < 10 % of a ResNet-50 step on a GPU)",
        "compile": {
            "off": "off (skipped on CPU by default: compiling the ResNet-18 GLCNet step took "
            "44-99 s on the shared 2-core machine and the compiled step ran at 0.98-1.0x the "
            "eager one, benchmarks/cpu_step.py; --compile on to try)"
            if device.type == "cpu"
            else "off",
            "on": "on",
            "both": "on and off",
        }[compile_mode],
    }
    if device.type == "cpu" and "bf16" not in args.amp:
        notes["amp"] = (
            "bf16 skipped on CPU by default: this CPU has no native bf16 (AVX512-BF16 or "
            "AMX), where bf16 is emulated (on an earlier AVX2 machine one ResNet-18 batch-8 "
            "step took > 30 s against about 2 s in fp32); --amp bf16 off to try"
        )
    if args.quick:
        notes["quick"] = f"reduced sizes: {s['view']} px views instead of 224, small batches"
    for key, text in notes.items():
        print(f"{key}: {text}")
    split_rows = [
        [r["arch"], r["batch"], r["amp"], on_off(r["channels_last"]), on_off(r["compile"])]
        + [f"{100 * r['step_split'][name]:.1f}" for name in (*STEP_PHASES, "other")]
        for r in records
        if r.get("step_split")
    ]
    if split_rows:
        print("\nstep time split, % of a profiled step (views/matching/normalize: the input work)")
        print_table(["arch", "batch", "amp", "CL", "compile", *STEP_PHASES, "other"], split_rows)
    r50 = [r for r in records if r["arch"] == "resnet50" and "views_matching_share" in r]
    if r50 and device.type == "cuda":
        best = max(r50, key=lambda r: r["images_per_s"])
        share = 100 * best["views_matching_share"]
        print(
            f"issue 3 goal: views+matching = {share:.1f} % of the fastest ResNet-50 step "
            f"(batch {best['batch']}) -> {'met' if share < 10 else 'NOT met'} (< 10 %)"
        )
    return {
        "benchmark": "pretrain_step",
        "machine": machine_info(device),
        "load_average": os.getloadavg(),
        "settings": {**s, "quick": args.quick, "matrix": args.matrix, "compile": compile_mode},
        "notes": notes,
        "cases": records,
    }


if __name__ == "__main__":
    main()
