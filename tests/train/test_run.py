"""The run skeleton (``TrainingRun``) and the pretraining step seam (``build_pretrain_step``)."""

import socket

import pytest
import torch
import yaml
from tiny_runs import TINY_PRETRAIN

from contrastseg.config import load_pretrain_config
from contrastseg.data import UnlabeledDataset, build_loader
from contrastseg.train.checkpoint import LOCK_NAME, RunFolderLocked
from contrastseg.train.loop import TrainingLoop, TrainingTask, TrainState
from contrastseg.train.pretrain_task import build_pretrain_step, build_pretrain_task
from contrastseg.train.run import TrainingRun
from contrastseg.train.runtime import optimizer_step
from contrastseg.utils.configtools import to_dict
from contrastseg.utils.weights import read_torch_file


def config(tmp_path, *overrides):
    return load_pretrain_config(None, [f"run.root={tmp_path}", *TINY_PRETRAIN, *overrides])


class _Task(TrainingTask):
    def __init__(self, cfg):
        self.cfg = cfg

    def checkpoint_content(self):
        return {"format": "test", "config": to_dict(self.cfg)}


def _state(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainState(model, optimizer, scheduler, scaler, torch.Generator().manual_seed(seed))


def test_a_run_writes_its_resolved_config_and_releases_its_lock_even_on_failure(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with TrainingRun(cfg, "unused") as run:
            assert run.run_dir == tmp_path / "tiny" and (run.run_dir / LOCK_NAME).is_file()
            raise RuntimeError("boom")
    assert yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text()) == to_dict(cfg)
    assert not (tmp_path / "tiny" / LOCK_NAME).exists()
    # unnamed: the default name; a named folder another live process holds is refused
    with TrainingRun(config(tmp_path, "run.name=''"), "default-1") as run:
        assert run.run_dir == tmp_path / "default-1" and run.resume_from is None
    # a live process of this host (pid 1) holds the folder
    (tmp_path / "tiny" / LOCK_NAME).write_text(f"1 {socket.gethostname()}\n")
    with pytest.raises(RunFolderLocked, match="in use by process 1"):
        TrainingRun(cfg, "unused")


def test_resume_takes_over_step_training_state_and_notes_changed_settings(tmp_path, capsys):
    first = config(tmp_path, "train.batch_size=8")
    state = _state(0)
    with TrainingRun(first, "unused") as run:
        loop = run.start(state, run.loop_settings(3, 8))
        batch_loss = state.model(torch.ones(4, 3)).square().mean()
        batch_loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step = 3
        path = loop.save(_Task(first), 1)
    assert path == tmp_path / "tiny" / "checkpoints" / "step_00000003.pt"
    saved = read_torch_file(path)

    second = config(tmp_path, "run.resume=auto")
    resumed = _state(1)  # other weights and state: everything but the weights comes back
    with TrainingRun(second, "unused") as run:
        payload = run.resume(read_torch_file)
        assert run.resume_from == path and payload["step"] == 3
        assert run.notes == [
            "warning: train.batch_size is 4 but the checkpoint was written with 8; the "
            "resumed run is not the run it continues"
        ]
        loop = run.start(resumed, run.loop_settings(3, 4))
        run.announce("start")
    assert isinstance(loop, TrainingLoop) and resumed.step == 3
    assert resumed.scheduler.state_dict() == saved["scheduler"]
    torch.testing.assert_close(
        resumed.optimizer.state_dict()["state"][0]["exp_avg"],
        saved["optimizer"]["state"][0]["exp_avg"],
    )
    out = capsys.readouterr().out
    assert "already at step 3 of 3; nothing to do" in out
    log = (tmp_path / "tiny" / "train.log").read_text()
    assert f"start; resumed from {path} at step 3" in log
    assert "warning: train.batch_size is 4" in log


def test_the_step_seam_is_the_engine_step(tmp_path):
    cfg = config(tmp_path, "train.max_steps=1000")
    dataset = UnlabeledDataset(cfg.data)
    batch = next(iter(build_loader(dataset, 4, 0, seed=0)))
    device = torch.device("cpu")
    normalization = ([0.5] * dataset.num_bands, [0.25] * dataset.num_bands)
    engine = build_pretrain_step(cfg, dataset.num_bands, device, dataset.nodata, normalization)
    assert (engine.task.mean, engine.task.std) == normalization
    prepared = engine.prepare(batch)
    assert prepared.view1.shape == (4, dataset.num_bands, 32, 32)

    # the same step as the task run_pretrain builds, run by hand: same losses, same weights
    torch.manual_seed(0)
    engine = build_pretrain_step(cfg, dataset.num_bands, device, dataset.nodata, normalization)
    torch.manual_seed(0)
    task, state = build_pretrain_task(
        cfg, dataset.num_bands, 10**6, device, dataset.nodata, normalization=normalization
    )
    ours, by_hand = [], []
    for i, eager in enumerate((False, True)):
        torch.manual_seed(10 + i)  # the step draws from the global stream too
        ours.append(engine.step(batch, eager))
        torch.manual_seed(10 + i)
        out = task.train_step(batch)
        optimizer_step(out["total"], state.optimizer, state.scheduler, state.scaler,
                       state.model.parameters(), cfg.optim.grad_clip)  # fmt: skip
        by_hand.append(out)
    assert engine.state.step == 2
    for a, b in zip(ours, by_hand, strict=True):
        torch.testing.assert_close(a["total"], b["total"])
    for a, b in zip(engine.state.model.parameters(), state.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
