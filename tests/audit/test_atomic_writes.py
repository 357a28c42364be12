"""Audit: predict writes its label maps atomically, without a memory map that can fault."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import contrastseg.train.evaluate as evaluate
from contrastseg.train.evaluate import run_predict

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process


@pytest.fixture
def best(finetuned_best) -> Path:
    return finetuned_best


def _scene(path: Path) -> Path:
    image = np.random.default_rng(0).integers(0, 255, (4, 40, 48), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate")
    return path


def test_a_geotiff_label_map_is_written_without_a_memory_map(best, tmp_path, monkeypatch):
    scene = _scene(tmp_path / "scene.tif")
    (png,) = run_predict(best, [scene], tmp_path / "png", fmt="png")

    def no_memmap(*args, **kwargs):
        raise AssertionError("a memory map can SIGBUS on a full disk")

    monkeypatch.setattr(tifffile, "memmap", no_memmap)
    monkeypatch.setattr(np, "memmap", no_memmap)
    (tif,) = run_predict(best, [scene], tmp_path / "tif")
    with Image.open(png) as reference:
        np.testing.assert_array_equal(tifffile.imread(tif), np.asarray(reference))
    assert sorted(p.name for p in tif.parent.iterdir()) == ["scene_labels.tif", "scene_preview.png"]


def test_a_full_disk_is_one_error_naming_the_file_and_keeps_the_older_one(
    best, tmp_path, monkeypatch
):
    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "pred"
    out.mkdir()
    (out / "scene_labels.tif").write_bytes(b"older result")
    stale = out / f".scene_labels.tif.{DEAD_PID}.tmp"  # left by a killed predict
    stale.write_bytes(b"half a label map")
    original = evaluate.TiffRowSink.__init__

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.handle = FullDisk(self.handle)

    monkeypatch.setattr(evaluate.TiffRowSink, "__init__", init)
    with pytest.raises(ValueError) as caught:
        run_predict(best, [scene], out, overwrite=True)  # replaced only on success
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot write {out / 'scene_labels.tif'}: No space left on device" in message
    assert "older file there is kept" in message
    assert (out / "scene_labels.tif").read_bytes() == b"older result"
    assert sorted(p.name for p in out.iterdir()) == ["scene_labels.tif"]  # no temp file left


def test_an_output_folder_that_is_a_file_is_one_line(best, tmp_path):
    scene = _scene(tmp_path / "scene.tif")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match=r"--out .*taken: cannot create the output folder"):
        run_predict(best, [scene], tmp_path / "taken")


def test_a_full_disk_at_a_checkpoint_names_it_and_what_was_kept(tmp_path, monkeypatch):
    from contrastseg.cli import describe_error
    from contrastseg.train import checkpoint as ckpt

    payload = {"format": "contrastseg.pretrain", "model": {"w": torch.ones(3)}, "step": 1}
    ckpt.save_atomic(payload, ckpt.checkpoint_path(tmp_path, 1))

    def full(*args, **kwargs):  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt.torch, "save", full)
    target = ckpt.checkpoint_path(tmp_path, 2)
    with pytest.raises(OSError) as caught:
        ckpt.save_atomic(payload, target)
    line = describe_error(caught.value)
    assert line.startswith(f"{target}: not written: [enforce fail") and "MiB free there" in line
    assert "step_00000001.pt is intact" in line and "\n" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000001.pt", "step_00000001.pt.sha256"
    ]  # fmt: skip
