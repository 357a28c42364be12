"""The shared training loop on a toy task: divergence, checkpoints, resumption, early stop."""

from pathlib import Path

import pytest
import torch
from torch import nn

from contrastseg.data.loader import build_loader
from contrastseg.train.checkpoint import list_checkpoints, read_torch_file
from contrastseg.train.loop import (
    LoopSettings,
    TrainingDiverged,
    TrainingLoop,
    TrainingTask,
    TrainState,
)
from contrastseg.train.monitor import RunMonitor


class Regression(TrainingTask):
    """Least squares of a linear model on a fixed dataset, with random noise from the generator."""

    def __init__(self, model, generator, nan_at=None, stop_at=None):
        self.model, self.generator, self.nan_at, self.stop_at = model, generator, nan_at, stop_at
        self.calls, self.epochs_started, self.epochs_ended = 0, [], []

    def train_step(self, batch):
        x, y = batch
        self.calls += 1
        noise = torch.randn(y.shape, generator=self.generator) * 0.01
        loss = ((self.model(x).squeeze(1) - y - noise) ** 2).mean()
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"total": loss, "fit/mean_abs_y": y.abs().mean()}

    def on_epoch_start(self, epoch):
        self.epochs_started.append(epoch)

    def on_epoch_end(self, epoch, step):
        self.epochs_ended.append((epoch, step))
        return self.stop_at is not None and step >= self.stop_at

    def checkpoint_content(self):
        return {"format": "toy", "model": self.model.state_dict()}


def make(tmp_path: Path, total=10, every=4, seed=0, **task_args):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(seed)
    state = TrainState(model, optimizer, scheduler, scaler, generator)
    settings = LoopSettings(total, 2, every, 10, tmp_path / "checkpoints", images_per_step=4)
    monitor = RunMonitor(tmp_path, True, total, 0, progress=False)
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]))
    loader = build_loader(data, 4, 0, shuffle=True, drop_last=True, seed=2)  # as the engines
    task = Regression(model, generator, **task_args)
    return TrainingLoop(state, settings, monitor), task, loader


def test_loop_trains_logs_and_checkpoints_on_its_cadence(tmp_path):
    loop, task, loader = make(tmp_path, total=10, every=4)
    result = loop.run(task, loader)
    loop.monitor.close()
    assert result.step == 10 and not result.stopped_early
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000004.pt", "step_00000008.pt", "step_00000010.pt"]
    # 3 steps per epoch: epochs 0..3, the last one cut at step 10
    assert task.epochs_started == [0, 1, 2, 3] and task.epochs_ended[-1] == (3, 10)
    assert [r["step"] for r in result.history] == [2, 4, 6, 8, 10]
    assert {"loss/total", "fit/mean_abs_y", "lr", "throughput/images_per_s"} <= set(
        result.history[0]
    )
    assert result.history[-1]["loss/total"] < result.history[0]["loss/total"]
    payload = read_torch_file(result.checkpoint)
    assert payload["format"] == "toy" and payload["step"] == 10 and len(payload["rng"]) == 1


def test_resumed_mid_epoch_equals_uninterrupted(tmp_path):
    whole, task, loader = make(tmp_path / "a", total=10, every=5)
    whole.run(task, loader)
    whole.monitor.close()
    first, task, loader = make(tmp_path / "b", total=5, every=5)
    first.run(task, loader)  # stops inside epoch 1 (3 steps per epoch)
    first.monitor.close()
    second, task, loader = make(tmp_path / "b", total=10, every=5, seed=7)  # other init
    payload = read_torch_file(tmp_path / "b" / "checkpoints" / "step_00000005.pt")
    task.model.load_state_dict(payload["model"])
    second.restore(payload, tmp_path / "b" / "checkpoints" / "step_00000005.pt")
    second.run(task, loader)
    second.monitor.close()
    assert task.epochs_started == [1, 2, 3]  # re-enters the interrupted epoch
    for key, value in whole.state.model.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_non_finite_loss_stops_before_the_update_naming_step_parts_and_checkpoint(tmp_path):
    loop, task, loader = make(tmp_path, total=10, every=2, nan_at=5)
    with pytest.raises(
        TrainingDiverged,
        match=r"step 5: the loss is not finite \(\{'total': nan, 'fit/mean_abs_y': .*\}\).*"
        r"step_00000004\.pt is intact\. Lower optim\.lr",
    ):
        loop.run(task, loader)
    loop.monitor.close()
    assert loop.state.step == 4
    saved = read_torch_file(tmp_path / "checkpoints" / "step_00000004.pt")["model"]
    for key, value in loop.state.model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)  # not updated


def test_a_hook_stops_the_run_and_the_stop_is_checkpointed(tmp_path):
    loop, task, loader = make(tmp_path, total=30, every=100, stop_at=6)
    result = loop.run(task, loader)
    loop.monitor.close()
    assert result.stopped_early and result.step == 6
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000006.pt"]
