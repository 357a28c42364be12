"""train.num_threads and the message when a run's throughput collapses (busy CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_runs import TINY_PRETRAIN

from contrastseg.config import load_pretrain_config
from contrastseg.train.pretrain import run_pretrain
from contrastseg.train.runtime import (
    SlowdownWatch,
    apply_num_threads,
    process_settings_kept,
    seed_everything,
)


@pytest.fixture
def threads_kept():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_message_comes_once_after_patience_slow_log_steps_with_low_data_wait():
    watch = SlowdownWatch(factor=5, patience=3, max_wait=0.2, warmup=3)
    said = [watch.update(rate, 0.05) for rate in (10, 12, 11, 1.9, 1.9)]
    assert said == [None] * 5  # median 11 after warmup; two slow steps are not yet three
    message = watch.update(2.1, 0.05)  # under 11 / 5 = 2.2 a third time
    assert message is not None and "train.num_threads" in message and "median 11.0" in message
    assert watch.update(1.0, 0.05) is None  # once per run


def test_a_slow_step_waiting_for_data_or_a_recovery_does_not_count():
    watch = SlowdownWatch(factor=5, patience=2, max_wait=0.2, warmup=2)
    assert [watch.update(r, w) for r, w in ((10, 0), (10, 0), (1, 0.9), (1, 0.9))] == [None] * 4
    assert watch.update(1, 0.0) is None  # the first slow step with little data wait
    assert watch.update(10, 0.0) is None  # recovered: the count starts again
    assert watch.update(1, 0.0) is None
    assert watch.update(1, 0.0) is not None


def test_num_threads_sets_torch_and_names_the_cores(threads_kept):
    line = apply_num_threads(1)
    assert torch.get_num_threads() == 1
    assert line == f"torch threads: 1 of {os.cpu_count()} cores (train.num_threads: 1)"
    assert apply_num_threads(None).endswith("(train.num_threads: auto)")
    assert torch.get_num_threads() == 1  # auto leaves torch's setting as it is
    with pytest.raises(
        ValueError, match=r"train\.num_threads must be >= 1 or null \(auto\), got 0"
    ):
        load_pretrain_config(None, ["train.num_threads=0"])


def test_a_run_sets_its_threads_and_logs_them_and_leaves_the_process_as_it_was(
    tmp_path, threads_kept
):
    torch.set_num_threads(2)
    config = load_pretrain_config(
        None,
        [f"run.root={tmp_path}", *TINY_PRETRAIN, "train.num_threads=1", "train.deterministic=true"],
    )
    seen = {}
    original = SlowdownWatch.update

    def spy(self, *args):
        seen["threads"] = torch.get_num_threads()
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        return original(self, *args)

    SlowdownWatch.update = spy
    try:
        with process_settings_kept():  # should the run not restore them, later tests stay clean
            run_pretrain(config)
            # after it: a later run (or a notebook's next cell) finds torch's settings as they were
            assert torch.get_num_threads() == 2
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        SlowdownWatch.update = original
    assert seen == {"threads": 1, "deterministic": True}  # during the run
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert f"torch threads: 1 of {os.cpu_count()} cores (train.num_threads: 1)" in log


def test_deterministic_on_cuda_sets_the_cublas_workspace_and_warns_for_missing_kernels(
    monkeypatch,
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with process_settings_kept():
        seed_everything(0, True, torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # restored: it was not set
    with process_settings_kept():  # on a CPU an operation without a deterministic kernel raises
        seed_everything(0, True, torch.device("cpu"))
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own stays
    with process_settings_kept():
        seed_everything(0, True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
