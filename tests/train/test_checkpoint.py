"""Checkpoint integrity: checksums, damaged and truncated files, resume fallback, finite check."""

import hashlib
import os

import pytest
import torch

from contrastseg.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CorruptCheckpoint,
    NonFiniteTensor,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_tmp,
    resume_source,
    save_atomic,
)
from contrastseg.utils import weights


def payload(step: int, **extra) -> dict:
    torch.manual_seed(step)
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": {"conv.weight": torch.randn(64, 64), "bn.running_var": torch.ones(64)},
        "rng": {"torch": torch.get_rng_state()},
        **extra,
    }


def overwrite_4kb(path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))


def test_save_writes_a_sha256sum_sidecar_and_load_checks_it(tmp_path):
    path = save_atomic(payload(1), checkpoint_path(tmp_path, 1))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # independent oracle
    assert (tmp_path / "step_00000001.pt.sha256").read_text() == f"{digest}  step_00000001.pt\n"
    assert load_checkpoint(path)["step"] == 1
    overwrite_4kb(path)
    with pytest.raises(CorruptCheckpoint, match=r"step_00000001\.pt is damaged.*SHA-256"):
        load_checkpoint(path)


def test_old_checkpoints_without_checksum_load_and_damage_is_still_found(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save(payload(1), path)  # as written by older versions: no sidecar
    assert torch.equal(load_checkpoint(path)["model"]["bn.running_var"], torch.ones(64))
    overwrite_4kb(path)
    with pytest.raises(CorruptCheckpoint, match=r"step_00000001\.pt is damaged.*CRC"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CorruptCheckpoint, match=r"step_00000001\.pt is damaged or truncated"):
        load_checkpoint(path)


def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3):
        save_atomic(payload(step), checkpoint_path(ckpt, step))
    newest = checkpoint_path(ckpt, 3)
    newest.write_bytes(newest.read_bytes()[:5000])  # a killed copy / full disk
    overwrite_4kb(checkpoint_path(ckpt, 2))
    with pytest.warns(UserWarning) as caught:
        chosen = resume_source("auto", True, ckpt)
    assert chosen == checkpoint_path(ckpt, 1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "step_00000003.pt is damaged: its SHA-256" in messages[0]
    assert "step_00000002.pt is damaged: its SHA-256" in messages[1]
    # set aside, not deleted, and out of the way of pruning and the next resume
    assert list_checkpoints(ckpt) == [checkpoint_path(ckpt, 1)]
    assert (ckpt / "step_00000003.pt.corrupt").is_file()
    assert load_checkpoint(chosen)["step"] == 1


def test_an_explicitly_named_damaged_checkpoint_is_an_error(tmp_path):
    path = save_atomic(payload(4), checkpoint_path(tmp_path, 4))
    overwrite_4kb(path)
    source = resume_source(str(path), True, tmp_path)
    with pytest.raises(CorruptCheckpoint, match=r"step_00000004\.pt is damaged"):
        load_checkpoint(source)


def test_non_finite_tensors_are_never_written(tmp_path):
    save_atomic(payload(1), checkpoint_path(tmp_path, 1))
    bad = payload(2)
    bad["model"]["bn.running_var"][5:7] = float("inf")
    with pytest.raises(
        NonFiniteTensor,
        match=r"step_00000002\.pt: not written: model\.bn\.running_var holds 2 non-finite "
        r"value\(s\) of 64.*newest checkpoint .*step_00000001\.pt is intact",
    ):
        save_atomic(bad, checkpoint_path(tmp_path, 2))
    bad = payload(2, optimizer={"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("nan")])}}})
    with pytest.raises(NonFiniteTensor, match=r"optimizer\.state\.0\.exp_avg_sq holds 1"):
        save_atomic(bad, checkpoint_path(tmp_path, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000001.pt",
        "step_00000001.pt.sha256",
    ]


def test_plain_weights_files_name_no_checkpoint_and_checkpoints_their_newest(tmp_path):
    # the integrity layer knows no run folders: only the checkpoint writer names the newest
    save_atomic(payload(1), checkpoint_path(tmp_path, 1))
    bad = payload(2)
    bad["model"]["conv.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteTensor) as plain:
        weights.save_atomic(bad, tmp_path / "export.pt")
    assert "newest checkpoint" not in str(plain.value)
    with pytest.raises(NonFiniteTensor, match=r"step_00000001\.pt is intact"):
        save_atomic(bad, tmp_path / "export.pt")
    path = weights.save_atomic(payload(3), tmp_path / "export.pt")
    sidecar = (tmp_path / "export.pt.sha256").read_text()
    assert sidecar == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  export.pt\n"
    torch.testing.assert_close(weights.read_torch_file(path)["model"], payload(3)["model"])


def test_prune_removes_sidecars_and_resume_removes_orphan_tmp_files(tmp_path):
    for step in (1, 2, 3):
        save_atomic(payload(step), checkpoint_path(tmp_path / "checkpoints", step))
    prune_checkpoints(tmp_path / "checkpoints", 1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000003.pt",
        "step_00000003.pt.sha256",
    ]
    dead_pid = 2**22 + 12345  # above Linux's pid_max: no such process
    orphan = tmp_path / "checkpoints" / f".step_00000004.pt.{dead_pid}.tmp"
    orphan.write_bytes(b"half a checkpoint")
    best_orphan = tmp_path / f".best.pt.{dead_pid}.tmp"
    best_orphan.write_bytes(b"half")
    alive = tmp_path / f".best.pt.{os.getppid()}.tmp"  # a live writer's file stays
    alive.write_bytes(b"being written")
    assert remove_stale_tmp(tmp_path) == [best_orphan]
    resume_source("auto", True, tmp_path / "checkpoints")
    assert not orphan.exists() and alive.exists()
