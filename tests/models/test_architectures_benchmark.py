"""benchmarks/architectures.py on a tiny image: its parameter counts are the networks'."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from contrastseg.models import build_model, model_config

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "architectures.py"


def test_architectures_benchmark_counts_and_times_each_network(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_architectures", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    threads = torch.get_num_threads()
    out = tmp_path / "a.json"
    cpu = min(affinity) if affinity else 0
    try:
        module.main(["--names", "fcn", "parsenet", "--size", "64", "--repeats", "1",
                     "--cpu", str(cpu), "--out", str(out)])  # fmt: skip
    finally:  # the benchmark pins the process: give the test session its CPUs back
        if affinity:
            os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    net = build_model(model_config("parsenet", arch="resnet50"), 4, 6)
    assert rows["parsenet"]["params"] == sum(p.numel() for p in net.parameters())
    # ParseNet adds two scales per channel of layer4 and the 1x1 classifier on 2 x 2048
    assert rows["parsenet"]["decoder_params"] == 2 * 2048 + (2 * 2048 * 6 + 6)
    assert rows["fcn"]["decoder_stride"] == 8 and rows["parsenet"]["decoder_channels"] == 4096
    assert all(r["images_per_s"] > 0 for r in rows.values())
