"""The benchmark scripts run end to end on a tiny setting (no timing is checked)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrain_step():
    return _load("pretrain_step")


@pytest.mark.parametrize(
    ("name", "amp", "expected"),
    [
        # NVIDIA data sheets, dense: H100 SXM bf16 989.4 / tf32 494.7, PCIe 756 / 378, A100 312 / 156
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 80GB HBM3", "off", 494.7),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
        ("NVIDIA A100-PCIE-40GB", "off", 156.0),
    ],
)
def test_device_peak_known_gpus(pretrain_step, name, amp, expected):
    assert pretrain_step.device_peak(name, amp)["tflops"] == expected


def test_device_peak_unknown_gpu_has_none(pretrain_step):
    assert pretrain_step.device_peak("NVIDIA GeForce GTX 1080", "bf16") is None


def test_plan_sweep_plus_toggles(pretrain_step):
    args = argparse.Namespace(
        amp=["bf16", "off"], channels_last="both", compile="both", matrix="plan"
    )
    cases = pretrain_step.plan_cases(["resnet18"], {"resnet18": [32, 64]}, 64, "bf16", args)
    # sweep: 2 batches x compile off/on at bf16 + channels_last; toggles at 64: 2 x 2 x 2,
    # two of which repeat sweep cases.
    assert len(cases) == 2 * 2 + 8 - 2
    assert len({json.dumps(c, sort_keys=True) for c in cases}) == len(cases)
    factorial = argparse.Namespace(**{**vars(args), "matrix": "factorial"})
    assert (
        len(pretrain_step.plan_cases(["resnet18"], {"resnet18": [32, 64]}, 64, "bf16", factorial))
        == 16
    )


def test_pretrain_step_quick_runs(pretrain_step, tmp_path):
    out = tmp_path / "pretrain_step.json"
    report = pretrain_step.main(
        [
            "--quick",
            "--in-process",
            "--device",
            "cpu",
            "--batch-sizes",
            "2",
            "--toggle-batch",
            "2",
            "--amp",
            "off",
            "--channels-last",
            "off",
            "--view-size",
            "32",
            "--steps",
            "1",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    written = json.loads(out.read_text())
    assert written["benchmark"] == "pretrain_step"
    (case,) = written["cases"]
    assert "error" not in case, case.get("error")
    assert (case["arch"], case["batch"], case["amp"], case["channels_last"]) == (
        "resnet18",
        2,
        "off",
        False,
    )
    assert case["images_per_s"] > 0 and case["images_per_s_with_data"] > 0
    assert case["flops_per_step"] > 0 and 0 <= case["data_wait_fraction"] <= 1
    assert "fraction_of_peak" not in case  # a CPU has no entry in the peak table
    assert report["cases"][0]["flops_per_step"] == case["flops_per_step"]
    # the profiled split: every labelled phase of the engine's step took time, shares sum to 1
    split = case["step_split"]
    assert set(split) == {"views", "matching", "normalize", "forward", "checks", "backward",
                          "optimizer", "other"}  # fmt: skip
    assert all(split[name] > 0 for name in ("views", "matching", "forward", "backward"))
    assert sum(split.values()) == pytest.approx(1.0, abs=1e-6)
    assert split["forward"] + split["backward"] > split["views"] + split["matching"]


def test_cpu_step_quick_times_every_variant_interleaved(tmp_path):
    cpu_step = _load("cpu_step")
    out = tmp_path / "cpu_step.json"
    report = cpu_step.main(["--quick", "--variants", "fp32", "channels_last", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "cpu_step"
    for kind in ("pretrain", "finetune"):
        variants = report["results"][kind]
        assert set(variants) == {"fp32", "channels_last"}
        assert variants["fp32"]["speedup_vs_fp32"] == 1.0
        assert all(
            len(v["step_times_s"]) == 1 and v["median_step_s"] > 0 for v in variants.values()
        )
        assert report["fastest"][kind] in variants


def test_cpu_step_quick_never_writes_the_committed_results():
    cpu_step = _load("cpu_step")
    assert cpu_step.default_out(False) == "benchmarks/results/cpu_step.json"
    assert cpu_step.default_out(True) != cpu_step.default_out(False)
    with pytest.raises(SystemExit):
        cpu_step.main(["--quick", "--variants", "bf16"])  # no baseline: refused before running


def test_augment_quick_run_leaves_the_committed_results_alone():
    augment = _load("augment")
    assert augment.default_out(False) == "benchmarks/results/augment.json"
    assert "benchmarks" not in Path(augment.default_out(True)).parts


def _value(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_recipe_benchmark_overrides_are_the_official_configs():
    """benchmarks/recipe.py's official overrides give the settings of the official configs."""
    from contrastseg.config import load_pretrain_config
    from contrastseg.train.finetune_config import load_finetune_config
    from contrastseg.utils.configtools import to_dict

    recipe = _load("recipe")
    configs = BENCHMARKS.parent / "configs"
    pairs = (
        (recipe.OFFICIAL_PRETRAIN, load_pretrain_config, "glcnet_official.yaml"),
        (recipe.OFFICIAL_FINETUNE, load_finetune_config, "finetune_official.yaml"),
    )
    for overrides, load, name in pairs:
        ours = to_dict(load(None, overrides))
        official = to_dict(load(configs / name))
        for item in overrides:
            key = item.split("=", 1)[0]
            if key == "views.preset":
                assert ours["views"]["t2"] == official["views"]["t2"]
                assert ours["views"]["engine"] == official["views"]["engine"]
                continue
            assert _value(ours, key) == _value(official, key), key
    runs = [
        {"recipe": r, "seed": s, "kappa": k, "miou": k, "overall_accuracy": k}
        for r, s, k in [
            ("default", 0, 0.5),
            ("official", 0, 0.4),
            ("default", 1, 0.6),
            ("official", 1, 0.6),
        ]
    ]
    rows = recipe.summarise(runs, ["default", "official"])
    assert rows[1][4] == "-5.00 ± 7.07" and rows[0][4] == "-"


def test_downstream_protocol_selects_on_val_and_tests_once(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    import torch

    downstream = _load("downstream")
    # a torchvision-keys ResNet-18 for the 4-band demo scenes (an ImageNet file has 3 bands)
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(4, 64, 7, 2, 3, bias=False)
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(net.state_dict(), weights)
    out, work = tmp_path / "downstream.json", tmp_path / "work"
    argv = [
        "--methods", "random", "--weights", f"tv={weights}", "--modes", "finetune", "linear",
        "--fractions", "1.0", "--seeds", "0", "1", "--lr-grid", "1e-4", "1e-3",
        "--protocols", "ft", "lpft+all@3e-4",
        "--finetune-steps", "4", "--eval-steps", "2", "--patience", "1", "--batch", "4",
        "--patch", "32", "--scene-size", "64", "--window", "64", "--width", "16",
        "--out", str(out), "--work-dir", str(work),
    ]  # fmt: skip
    report = downstream.main(argv)
    assert json.loads(out.read_text())["benchmark"] == "downstream"
    starts = {(s["mode"], s["start"]) for s in report["selection"]}
    # the probe reads the backbone of the torchvision file, and random gets the same features
    assert starts == {
        ("finetune", "random"), ("finetune", "tv"),
        ("linear", "random:decoder"), ("linear", "tv:backbone"), ("linear", "random:backbone"),
    }  # fmt: skip
    for chosen in report["selection"]:
        # a random start has no pretrained decoder to load: its lpft is plain lpft
        lpft = "lpft+all@0.0003" if chosen["start"] == "tv" else "lpft@0.0003"
        grid = ["ft@0.0001", "ft@0.001", lpft] if chosen["mode"] == "finetune" else ["-"]
        assert sorted(chosen["val_miou_by_setting"]) == grid
        best = max(chosen["val_miou_by_setting"].values())
        name = downstream._setting_name((chosen["protocol"], chosen["lr"]))
        assert chosen["val_miou_by_setting"][name] == best
    # every grid run trained without a test split; only the selected ones were scored on test
    assert len(report["grid_runs"]) == 2 * (2 * 3 + 3)
    assert all("kappa" not in r for r in report["grid_runs"])
    assert len(report["runs"]) == 2 * 5
    tested = sorted(p.parent.parent.name for p in work.glob("*/test/metrics.json"))
    assert tested == sorted(Path(r["best_checkpoint"]).parent.name for r in report["runs"])
    headers = report["table"]["headers"]
    rows = {
        (row[0], row[2]): dict(zip(headers, row, strict=True)) for row in report["table"]["rows"]
    }
    assert rows[("linear", "tv:backbone")]["features"] == "backbone"
    assert rows[("linear", "tv:backbone")]["protocol"] == "-"
    # how many runs stopped on patience before the 4-step cap, from the runs' own step counts
    for (mode, start), row in rows.items():
        chosen = [r for r in report["runs"] if (r["mode"], r["start"]) == (mode, start)]
        early = sum(mode != "linear" and r["steps"] < 4 for r in chosen)
        assert row["stopped early"] == f"{early}/2"
    paired = rows[("linear", "tv:backbone")]  # paired with random:backbone, two seeds
    gains = []
    for seed in (0, 1):
        (tv,) = [r for r in report["runs"] if r["start"] == "tv:backbone" and r["seed"] == seed]
        (rnd,) = [
            r for r in report["runs"] if r["start"] == "random:backbone" and r["seed"] == seed
        ]
        gains.append(100 * (tv["kappa"] - rnd["kappa"]))
    mean = sum(gains) / 2
    half = 12.706 * abs(gains[0] - gains[1]) / 2**0.5 / 2**0.5  # t(0.975, 1) * sd / sqrt(2)
    assert paired["95 % interval"] == f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
    assert paired["seeds above random"] == f"{sum(g > 0 for g in gains)}/2"
    assert rows[("linear", "random:backbone")]["95 % interval"] == "-"
    # a second call reuses the finished runs of the work dir, and their test scores
    scored = {p: p.stat().st_mtime_ns for p in work.glob("*/test/metrics.json")}
    again = downstream.main(argv)
    assert all(r.get("reused") for r in again["grid_runs"])
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/test/metrics.json")} == scored
    assert again["table"]["rows"] == report["table"]["rows"]
    # the table of docs/benchmarks.md is rendered from the written report
    text = downstream.markdown(json.loads(out.read_text()))
    assert text.splitlines()[0].startswith("| mode | labels | start |")
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 5


def test_protocols_map_to_their_settings():
    downstream = _load("downstream")
    name, overrides = downstream.protocol_overrides("lpft+all+fbn+ld0.7+plr0.5", True)
    assert name == "lpft+all+fbn+ld0.7+plr0.5"
    assert overrides == [
        "mode=lp-ft", "pretrained.parts=all", "pretrained.freeze_bn=true",
        "optim.layer_decay=0.7", "pretrained_lr_scale=0.5",
    ]  # fmt: skip
    # for a random start only the layer decay means anything
    assert downstream.protocol_overrides("ft+all+fbn+ld0.7", False) == (
        "ft+ld0.7",
        ["mode=finetune", "optim.layer_decay=0.7"],
    )
    with pytest.raises(SystemExit, match="unknown modifier"):
        downstream.protocol_overrides("ft+xyz", True)
    with pytest.raises(SystemExit, match="starts with ft or lpft"):
        downstream.protocol_overrides("sgd", True)
    assert downstream.protocol_grid(["ft", "lpft@3e-4"], [1e-3, 1e-2]) == [
        ("ft", 1e-3),
        ("ft", 1e-2),
        ("lpft", 3e-4),
    ]


def test_t_interval_matches_the_t_distribution():
    stats = pytest.importorskip("scipy.stats")
    downstream = _load("downstream")
    values = [3.0, -1.0, 4.5, 2.0, 0.5]
    mean, low, high = downstream.t_interval(values)
    expected = stats.t.interval(0.95, 4, loc=mean, scale=stats.sem(values))
    assert (low, high) == pytest.approx(expected, abs=1e-3)
    assert downstream.t_interval([1.0]) is None


def test_downstream_fraction_check_names_a_start_where_more_labels_do_not_help():
    downstream = _load("downstream")
    runs = [
        {"mode": "finetune", "start": start, "fraction": fraction, "kappa": kappa}
        for start, fraction, kappa in [
            ("random", 0.01, 0.30), ("random", 0.01, 0.34), ("random", 0.1, 0.40),
            ("glcnet", 0.01, 0.50), ("glcnet", 0.1, 0.45), ("glcnet", 0.1, 0.53),
        ]
    ]  # fmt: skip
    assert downstream.fraction_order({"runs": runs}) == [
        "finetune glcnet: 10 % (49.0) does not beat 1 % (50.0)"
    ]
    assert downstream.fraction_order({"runs": runs[:3]}) == []


def _budget_runs():
    """Synthetic downstream records: random and two budgets, 3 seeds, finetune and linear."""
    runs = []
    gains = {"glcnet-100": [1.0, 3.0, -1.0], "glcnet-1000": [6.0, 8.0, 7.0]}
    for seed in range(3):
        base = 0.40 + 0.01 * seed
        runs.append(
            {
                "mode": "finetune",
                "fraction": 0.01,
                "name": "random",
                "features": "decoder",
                "seed": seed,
                "kappa": base,
                "protocol": "ft",
                "lr": 1e-3,
            }
        )
        for name, gain in gains.items():
            runs.append({"mode": "finetune", "fraction": 0.01, "name": name, "features":
                         "decoder", "seed": seed, "kappa": base + gain[seed] / 100,
                         "protocol": "lpft+all", "lr": 3e-4})  # fmt: skip
    return runs, gains


def test_budget_rows_pair_each_seed_with_random_and_state_the_verdict(tmp_path):
    pytest.importorskip("matplotlib")
    budget = _load("budget")
    downstream = _load("downstream")
    runs, gains = _budget_runs()
    rows = budget.budget_rows(runs, {"glcnet-100": 100, "glcnet-1000": 1000}, 0.6)
    by_start = {r["start"]: r for r in rows}
    for name, values in gains.items():
        row = by_start[name]
        mean, low, high = downstream.t_interval(values)
        assert row["gain_mean"] == pytest.approx(mean)
        assert (row["gain_low"], row["gain_high"]) == pytest.approx((low, high))
        assert row["seeds_above"] == sum(v > 0 for v in values)
    assert by_start["glcnet-1000"]["pretrain_minutes"] == pytest.approx(10.0)
    assert by_start["random"]["gain_mean"] is None
    report = {"rows": rows, "settings": {"method": "glcnet"}, "step_seconds": 0.6, "curve": [
        {"step": 100, "decoder": {"kappa": 0.3}, "encoder": {"kappa": 0.2}},
        {"step": 200, "decoder": {"kappa": 0.35}, "encoder": {"kappa": 0.22}},
    ]}  # fmt: skip
    # +7 [+4.5, +9.5]: the 1000-step budget meets the goal; the 100-step one does not
    assert budget.verdict(report).startswith("at 1 % labels, glcnet-1000 (1000 steps)")
    assert "goal of +5 is met" in budget.verdict(report)
    weak = {**report, "rows": [r for r in rows if r["start"] != "glcnet-1000"]}
    assert "no budget fine-tunes +5 kappa" in budget.verdict(weak)
    assert "glcnet-100 +1.00" in budget.verdict(weak)
    text = budget.markdown(report)
    assert text.splitlines()[0].startswith("| mode | labels | start |")
    png = budget.figure(report, tmp_path / "budget.png")
    assert png.stat().st_size > 10_000


def test_budget_report_selects_on_val_over_complete_seeds_and_reads_the_test_scores(tmp_path):
    budget = _load("budget")
    test = ['data.test=["Tile 8/*"]']

    def run(name, seed, protocol, val, kappa=None, other_test=False):
        folder = tmp_path / f"{name}-{seed}-{protocol}"
        folder.mkdir()
        record = {"mode": "finetune", "fraction": 0.01, "start": name, "name": name,
                  "features": "decoder", "seed": seed, "protocol": protocol, "lr": 1e-3,
                  "val_miou": val, "best_checkpoint": str(folder / "best.pt")}  # fmt: skip
        (folder / "record.json").write_text(json.dumps(record))
        if kappa is not None:
            split = ['data.test=["elsewhere"]'] if other_test else test
            scores = {"kappa": kappa, "miou": kappa, "overall_accuracy": kappa, "mean_f1": kappa}
            (folder / "test_record.json").write_text(
                json.dumps({"test_overrides": split, "scores": scores})
            )

    run("g", 0, "ft", 0.30, 0.40)
    run("g", 0, "lpft+all", 0.40, 0.50)
    run("g", 1, "ft", 0.30, 0.41)
    run("g", 1, "lpft+all", 0.36, 0.52)
    run("g", 2, "lpft+all", 0.10, 0.90)  # seed 2 lacks ft: left out of selection and table
    run("r", 0, "ft", 0.35, 0.45, other_test=True)  # scored on another split: left out
    runs, selection = budget.collect_runs(tmp_path, test)
    chosen = {s["start"]: s for s in selection}
    assert chosen["g"]["protocol"] == "lpft+all" and chosen["g"]["seeds"] == [0, 1]
    assert sorted((r["start"], r["seed"], r["kappa"]) for r in runs) == [
        ("g", 0, 0.50),
        ("g", 1, 0.52),
    ]


def test_budget_merge_adds_the_earlier_reports_missing_starts_and_refuses_other_protocols():
    budget = _load("budget")
    test = ['data.test=["Tile 8/*"]']

    def record(start, seed, kappa, every=20):
        return {"mode": "finetune", "fraction": 0.01, "start": start, "name": start,
                "features": "decoder", "seed": seed, "protocol": "ft", "lr": 1e-3,
                "kappa": kappa, "eval_every_steps": every, "steps_per_epoch": 5,
                "decoder": "deeplabv3plus"}  # fmt: skip

    def chosen(start):
        return {"mode": "finetune", "fraction": 0.01, "start": start, "protocol": "ft"}

    new = [record("g-1000", s, 0.5) for s in range(3)]
    earlier = {
        "test_split": test,
        "runs": [record("random", s, 0.4) for s in range(3)] + [record("g-1000", 0, 0.9)],
        "selection": [chosen("random"), chosen("g-1000")],
    }
    runs, selection = budget.merge_report(new, [chosen("g-1000")], earlier, test)
    # the work folder's g-1000 wins over the earlier one; random comes from the earlier report
    assert (
        sorted((r["start"], r["kappa"]) for r in runs)
        == [("g-1000", 0.5)] * 3 + [("random", 0.4)] * 3
    )
    assert [s["start"] for s in selection] == ["g-1000", "random"]
    with pytest.raises(SystemExit, match="scored on"):
        budget.merge_report(new, [chosen("g-1000")], {**earlier, "test_split": ["x"]}, test)
    other = {**earlier, "runs": [record("random", s, 0.4, every=25) for s in range(3)]}
    with pytest.raises(SystemExit, match="eval_every_steps: 25 vs 20"):
        budget.merge_report(new, [chosen("g-1000")], other, test)


def test_figures_are_drawn_from_the_committed_results(tmp_path):
    pytest.importorskip("matplotlib")
    figures = _load("figures")
    report = json.loads((BENCHMARKS / "results" / "downstream_dubai.json").read_text())
    series = figures.series_by_start(report["runs"], "finetune")
    # the series is the mean and spread of the runs' own kappas (a second, plain computation)
    kappas = [100 * r["kappa"] for r in report["runs"]
              if (r["mode"], r["start"], r["fraction"]) == ("finetune", "glcnet", 0.01)]  # fmt: skip
    fraction, mean, std = series["glcnet"][0]
    assert fraction == 0.01 and mean == pytest.approx(np.mean(kappas))
    assert std == pytest.approx(np.std(kappas, ddof=1))
    for name in ("downstream", "recipe", "budget"):
        path = figures.draw(name, tmp_path)
        assert path == tmp_path / f"{name}.png" and path.stat().st_size > 10_000
    # the downstream benchmark's --render draws the same figure
    source = str(BENCHMARKS / "results" / "downstream_dubai.json")
    _load("downstream").main(["--render", source, "--figure", str(tmp_path / "render.png")])
    assert (tmp_path / "render.png").stat().st_size > 10_000


def test_budget_curve_probe_fits_on_train_scores_val_and_never_reads_the_test_tile():
    budget = _load("budget")
    config = budget.probe_config(budget.parse_args(["--stage", "curve"]))
    data = config.probe.data
    assert data.val == ["Tile 2/*"] and data.test == ["Tile 8/*"] and data.train == []
    assert config.probe.every == 1 and config.probe.max_patches == 32


def test_gpu_script_runs_every_stage_at_the_tiny_size_on_the_cpu(tmp_path):
    """``bash benchmarks/gpu.sh --tiny --device cpu``: the GPU run's stages, at a toy size."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--tiny", "--device", "cpu",
         "--skip", "vs_peers", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tiny"] and not [n for n, r in report["stages"].items() if "error" in r]
    step = report["headline"]["resnet18_b2_off_eager"]
    assert step["images_per_s"] > 0 and 0 < step["views_matching_share"] < 1
    assert sum(step["step_split"].values()) == pytest.approx(1.0, abs=1e-6)
    assert report["headline"]["nt_xent_N64_D32"]["ms"] > 0
    gpu = _load("gpu")  # the default output of a tiny run is not the committed file
    assert gpu.default_out(True) != gpu.default_out(False) == "benchmarks/results/gpu.json"
