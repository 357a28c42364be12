"""Loader: float conversion, seeded shuffles, workers that follow the epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastseg.data.config import DemoDataConfig, UnlabeledDataConfig
from contrastseg.data.loader import (
    Normalize,
    SeededRandomSampler,
    build_loader,
    set_loader_epoch,
    to_float,
)
from contrastseg.data.unlabeled import UnlabeledDataset


def test_to_float_against_numpy() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, (2, 3, 5, 4), dtype=np.uint16)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    expected = (raw / 65535.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    out = to_float(torch.from_numpy(raw), None, mean, std)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    u8 = rng.integers(0, 256, (3, 2, 2), dtype=np.uint8)
    np.testing.assert_allclose(to_float(torch.from_numpy(u8)).numpy(), u8 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(
        to_float(torch.from_numpy(u8), scale=100.0).numpy(), u8 / 100.0, rtol=1e-6
    )
    module = Normalize(None, mean, std)
    np.testing.assert_allclose(
        module(torch.from_numpy(raw)).numpy(), expected, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="mean has 2 values but the images have 3 bands"):
        to_float(torch.from_numpy(raw), None, [0.0, 0.0], None)
    with pytest.raises(ValueError, match="positive"):
        to_float(torch.from_numpy(raw), None, None, [1.0, 0.0, 1.0])


def test_seeded_sampler() -> None:
    sampler = SeededRandomSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(SeededRandomSampler(50, seed=4)) != first


def _dataset() -> UnlabeledDataset:
    config = UnlabeledDataConfig(
        patch_size=32, coverage=0.5, demo=DemoDataConfig(n_scenes=2, size=96, bands=4)
    )
    return UnlabeledDataset(config)


def test_persistent_workers_follow_the_epoch() -> None:
    ds = _dataset()
    loader = build_loader(
        ds, batch_size=len(ds), num_workers=1, shuffle=False, drop_last=False, seed=0
    )
    assert loader.persistent_workers
    batches = []
    for epoch in (0, 1, 0):
        set_loader_epoch(loader, epoch)
        (batch,) = list(loader)
        batches.append(batch)
        assert batch.dtype == torch.uint8 and batch.shape == (len(ds), 4, 32, 32)
        # Oracle: the windows the main process draws for the same epoch.
        expected = np.stack([ds.read(i) for i in range(len(ds))])
        np.testing.assert_array_equal(batch.numpy(), expected)
    assert not torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])


def test_shuffled_loader_is_reproducible() -> None:
    ds = _dataset()
    loader = build_loader(ds, batch_size=2, num_workers=0, shuffle=True, drop_last=True, seed=5)
    assert isinstance(loader.sampler, SeededRandomSampler)
    assert len(loader) == len(ds) // 2
    run1 = torch.cat(list(loader))
    run2 = torch.cat(list(build_loader(ds, batch_size=2, num_workers=0, shuffle=True, seed=5)))
    assert torch.equal(run1, run2)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(ds, batch_size=0)


def test_uint16_batches_through_workers(tmp_path) -> None:
    import tifffile

    array = np.random.default_rng(1).integers(0, 65536, (40, 40, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", array, photometric="rgb")
    ds = UnlabeledDataset(
        UnlabeledDataConfig(roots=[str(tmp_path)], patch_size=20, sampling="grid")
    )
    (batch,) = list(build_loader(ds, batch_size=4, num_workers=1, shuffle=False, drop_last=False))
    assert batch.dtype == torch.uint16
    np.testing.assert_array_equal(batch[3].numpy(), np.moveaxis(array, -1, 0)[:, 20:, 20:])
    np.testing.assert_allclose(
        to_float(batch)[3].numpy(), np.moveaxis(array, -1, 0)[:, 20:, 20:] / 65535.0, rtol=1e-6
    )


def test_distributed_sampler_when_initialised(tmp_path) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        ds = _dataset()
        loader = build_loader(ds, batch_size=2, distributed=True, seed=3)
        assert isinstance(loader.sampler, DistributedSampler)
        set_loader_epoch(loader, 4)
        assert loader.sampler.epoch == 4 and ds.epoch == 4
        assert isinstance(
            build_loader(ds, batch_size=2, distributed=False).sampler, SeededRandomSampler
        )
    finally:
        dist.destroy_process_group()
