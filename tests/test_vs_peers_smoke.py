"""benchmarks/vs_peers.py on its smallest case, and the peer's per-sample matching (needs the ``peers`` extra)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightly")
pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("torchvision")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def vs_peers():
    spec = importlib.util.spec_from_file_location("bench_vs_peers", BENCHMARKS / "vs_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_peer_regions_cover_the_same_source_pixel(vs_peers):
    """Every valid pair's box centres name the same source pixel in both index maps."""
    from torchvision import tv_tensors

    from contrastseg.augment.config import ViewsConfig

    torch.manual_seed(0)
    views = ViewsConfig(size=48)
    t1, t2 = vs_peers.peer_pipeline(views.t1, views), vs_peers.peer_pipeline(views.t2, views)
    image = tv_tensors.Image(torch.rand(3, 56, 56))
    index = tv_tensors.Mask(torch.arange(1, 56 * 56 + 1).reshape(1, 56, 56))
    size, half = 12, 6
    for _ in range(20):
        (_, index1), (_, index2) = t1(image, index), t2(image, index)
        i1, i2 = index1[0].as_subclass(torch.Tensor), index2[0].as_subclass(torch.Tensor)
        boxes1, boxes2, valid = vs_peers.match_regions_per_sample(i1, i2, 4, size, 56 * 56)
        assert boxes1.shape == boxes2.shape == (4, 4) and valid.shape == (4,)
        for b1, b2 in zip(boxes1[valid].long(), boxes2[valid].long(), strict=True):
            assert (b1[2:] - b1[:2]).tolist() == [size, size] and b1.min() >= 0
            assert b1.max() <= 48 and b2.min() >= 0 and b2.max() <= 48
            centre1 = i1[b1[1] + half, b1[0] + half]
            assert centre1 > 0 and centre1 == i2[b2[1] + half, b2[0] + half]


def test_vs_peers_smallest_case(vs_peers, tmp_path):
    out = tmp_path / "vs_peers.json"
    report = vs_peers.main(
        ["--quick", "--methods", "glcnet", "--threads", "1", "--workers", "0", "--batch", "2",
         "--steps", "1", "--repeats", "1", "--peer-nets", "smp", "--out", str(out)]
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert written["benchmark"] == "vs_peers" and report["cases"] == written["cases"]
    (check,) = written["loss_checks"]
    assert check["passed"] and check["ntxent"]["abs_diff"] <= check["tolerance"]
    assert check["encoder_equal_under"] == ["official"]  # smp dilates like the official code
    (case,) = written["cases"]
    assert (case["method"], case["arch"], case["batch"], case["peer_net"]) == (
        "glcnet", "resnet18", 2, "smp",
    )  # fmt: skip
    assert case["images_per_s"]["contrastseg"] > 0 and case["images_per_s"]["peer"] > 0
    assert case["ratio"] == pytest.approx(
        case["images_per_s"]["contrastseg"] / case["images_per_s"]["peer"]
    )
