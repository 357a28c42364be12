"""What train.amp=auto and train.channels_last=auto choose, and that a bf16 CPU run trains."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from contrastseg.config import ConfigError, load_pretrain_config
from contrastseg.train import runtime
from contrastseg.train.pretrain import run_pretrain
from contrastseg.train.runtime import cpu_has_bf16, resolve_amp_dtype, resolve_memory_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_runs import TINY_PRETRAIN

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    assert resolve_amp_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert resolve_amp_dtype("off", CPU) is None
    assert resolve_amp_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_amp_dtype("auto", torch.device("mps")) is None
    # inference (validation, evaluate, predict) stays fp32 on a CPU unless asked for bf16
    assert resolve_amp_dtype("auto", CPU, inference=True) is None
    assert resolve_amp_dtype("bf16", CPU, inference=True) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_amp_dtype("fp16", CPU)


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's CPU flags")
def test_native_bf16_agrees_with_the_cpu_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert cpu_has_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_auto_memory_format():
    assert resolve_memory_format("auto", CPU) == torch.channels_last
    assert resolve_memory_format("auto", torch.device("cuda")) == torch.channels_last
    assert resolve_memory_format("auto", torch.device("mps")) == torch.contiguous_format
    assert resolve_memory_format(False, CPU) == torch.contiguous_format
    assert resolve_memory_format(True, torch.device("mps")) == torch.channels_last


def test_channels_last_takes_auto_or_a_bool():
    for value, expected in (("auto", "auto"), ("true", True), ("off", False)):
        config = load_pretrain_config(None, [f"train.channels_last={value}"])
        assert config.train.channels_last == expected
    with pytest.raises(ConfigError, match=r"train\.channels_last"):
        load_pretrain_config(None, ["train.channels_last=maybe"])


def test_a_bf16_run_on_the_cpu_trains_in_channels_last(tmp_path):
    """bf16 autocast on any CPU (emulated where not native: slow, but the same results)."""
    overrides = [f"run.root={tmp_path}", *TINY_PRETRAIN, "train.amp=bf16", "train.max_steps=3",
                 "run.log_every=1", "train.channels_last=auto"]  # fmt: skip
    result = run_pretrain(load_pretrain_config(None, overrides))
    assert result.step == 3
    assert all(math.isfinite(r["loss/total"]) for r in result.history)
    # the weights are kept in fp32 (autocast), in the memory format auto chose
    weights = torch.load(result.checkpoint, weights_only=True)["model"]
    conv = weights["backbone.conv1.weight"]
    assert conv.dtype == torch.float32
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_a_log_window_without_valid_pairs_is_reported_without_a_sync_per_step(tmp_path):
    """The engine's local loss skips the per-step host check; the log record reports it."""
    from contrastseg.train.pretrain_task import build_pretrain_step

    config = load_pretrain_config(None, [f"run.root={tmp_path}", *TINY_PRETRAIN])
    step = build_pretrain_step(config, 4, CPU, normalization=([0.5] * 4, [0.25] * 4))
    assert step.task.model.method.local_loss.check_empty is False

    class Monitor:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, text: str) -> None:
            self.lines.append(text)

    monitor = step.task.monitor = Monitor()
    step.task.on_log(4, {"regions/valid_fraction": 0.5, "loss/total": 3.0})
    assert monitor.lines == []
    step.task.on_log(8, {"regions/valid_fraction": 0.0, "loss/total": 3.0})
    (line,) = monitor.lines
    assert line.startswith("step 8: no valid pair") and "method.region_size" in line
