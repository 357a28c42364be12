"""Audit: a run writes only into its own folder inside run.root, and one process at a time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from tiny_runs import TINY_FINETUNE  # tests/train, on the path through conftest.py

from contrastseg.cli import main
from contrastseg.config import load_pretrain_config
from contrastseg.train.checkpoint import (
    LOCK_NAME,
    RunFolderLocked,
    checkpoint_path,
    release_run_folders,
    resume_source,
    save_atomic,
)
from contrastseg.train.finetune_config import load_finetune_config


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "/abs/path", "..\\x"])
def test_a_run_name_is_one_folder_inside_the_root(tmp_path, name):
    for load in (load_pretrain_config, load_finetune_config):
        with pytest.raises(ValueError, match=r"run\.name must be one folder name inside run\.root"):
            load(None, [f"run.root={tmp_path / 'runs'}", f"run.name={name!r}"])


def test_name_flag_escaping_the_root_writes_nothing(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("mine\n")
    root = tmp_path / "a" / "b"
    assert main(["pretrain", "--set", f"run.root={root}", "--name", "../.."]) == 2
    assert "run.name must be one folder name" in capsys.readouterr().err
    assert (tmp_path / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


TINY_PRETRAIN = [
    "run.progress=false", "run.image_every=0", "data.demo.n_scenes=2", "data.demo.size=64",
    "data.patch_size=48", "data.coverage=2.0", "views.size=32", "method.region_size=8",
    "train.batch_size=4", "train.max_steps=1", "model.arch=resnet18",
    "model.aspp_channels=16", "model.decoder_channels=16", "model.low_level_channels=8",
]  # fmt: skip


def _hold_lock(run_dir):
    """A child process that takes the run folder's lock and waits (until killed)."""
    code = (
        "import sys, time\n"
        "from contrastseg.train.checkpoint import lock_run_folder\n"
        f"lock_run_folder({str(run_dir)!r}); print('locked', flush=True); time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "r"
    child = _hold_lock(run_dir)
    try:
        with pytest.raises(RunFolderLocked, match=rf"in use by process {child.pid} on "):
            resume_source("auto", True, run_dir / "checkpoints")
        args = ["pretrain", "--name", "r", *[a for s in TINY_PRETRAIN for a in ("--set", s)]]
        args += ["--set", f"run.root={tmp_path}"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"in use by process {child.pid} on {socket.gethostname()}" in err
        assert not (run_dir / "config.yaml").exists()  # refused before writing
    finally:
        child.kill()
        child.wait()
    # the holder died without letting go (killed): its lock is stale and taken over
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(child.pid)
    assert main(args) == 0
    assert (run_dir / "config.yaml").is_file() and not (run_dir / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_and_a_refused_run_leaves_no_folder(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    (run_dir / LOCK_NAME).write_text(f"{dead_pid} {socket.gethostname()}\n")
    assert resume_source("auto", True, run_dir / "checkpoints") is None
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    release_run_folders()
    assert not (run_dir / LOCK_NAME).exists()
    # a lock held on another host cannot be checked: refused, saying how to clear it
    (run_dir / LOCK_NAME).write_text("1 another-host\n")
    with pytest.raises(RunFolderLocked, match=r"another host: if no run is active there"):
        resume_source("auto", True, run_dir / "checkpoints")
    with pytest.raises(ValueError, match=r"needs a run\.name"):
        resume_source("auto", False, tmp_path / "fresh" / "checkpoints")
    assert not (tmp_path / "fresh").exists()


def _damaged_checkpoint(ckpt_dir):
    path = save_atomic({"format": "contrastseg.finetune", "step": 1}, checkpoint_path(ckpt_dir, 1))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_resume_whose_only_checkpoint_is_damaged_is_refused_keeping_best_pt(tmp_path):
    run_dir = tmp_path / "r"
    _damaged_checkpoint(run_dir / "checkpoints")
    (run_dir / "best.pt").write_bytes(b"val mIoU 0.10")
    with pytest.warns(UserWarning, match="looking for an older intact one"):
        with pytest.raises(ValueError, match=r"every step checkpoint .* is damaged"):
            resume_source("auto", True, run_dir / "checkpoints")
    assert (run_dir / "best.pt").read_bytes() == b"val mIoU 0.10"
    assert not (run_dir / LOCK_NAME).exists()


def test_a_fresh_run_never_replaces_the_results_of_an_earlier_one(tmp_path, capsys):
    for name in ("best.pt", "best_probe.pt"):
        run_dir = tmp_path / name.replace(".", "_")
        run_dir.mkdir()
        (run_dir / name).write_bytes(b"an earlier run's result")
        for setting in ("never", "auto"):
            with pytest.raises(ValueError, match=rf"holds {name} of an earlier run"):
                resume_source(setting, True, run_dir / "checkpoints")
    # end to end: fine-tuning into a folder that holds only best.pt stops before writing
    args = ["finetune", "--name", "best_pt", "--set", f"run.root={tmp_path}"]
    args += [a for s in TINY_FINETUNE for a in ("--set", s)]
    assert main(args) == 2
    assert "holds best.pt of an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "best_pt").iterdir()) == ["best.pt"]
