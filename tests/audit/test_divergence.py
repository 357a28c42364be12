"""Audit: a divergence is found at the step it happens, BatchNorm statistics included."""

from __future__ import annotations

import pytest
import torch
from test_loop import Regression, make  # tests/train, on the path through conftest.py

from contrastseg.train.checkpoint import list_checkpoints
from contrastseg.train.loop import TrainingDiverged


class OverflowingStatistics(Regression):
    """Its running statistics overflow at one call while the loss stays finite (a huge lr)."""

    def __init__(self, *args, inf_at=3, **kwargs):
        super().__init__(*args, **kwargs)
        self.inf_at = inf_at
        self.model.register_buffer("running_var", torch.ones(2))

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.calls == self.inf_at:
            self.model.running_var[1] = float("inf")
        return out


def test_a_non_finite_batchnorm_buffer_stops_the_run_at_its_step(tmp_path):
    loop, task, loader = make(tmp_path, total=10, every=1)
    task = OverflowingStatistics(task.model, task.generator, inf_at=3)
    with pytest.raises(
        TrainingDiverged,
        match=r"step 3: the BatchNorm statistics running_var are not finite .*"
        r"step_00000002\.pt is intact",
    ):
        loop.run(task, loader)
    loop.monitor.close()
    assert loop.state.step == 2
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step_00000002.pt"
