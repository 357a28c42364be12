"""DataLoader construction, seeded shuffling, and uint -> float conversion on the device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

#: The value that maps to 1.0 for each integer dtype when no scale is configured.
DTYPE_RANGE = {
    torch.uint8: 255.0,
    torch.int8: 127.0,
    torch.uint16: 65535.0,
    torch.int16: 32767.0,
    torch.int32: 2147483647.0,
}


def dtype_scale(dtype: torch.dtype) -> float:
    """The default scale of a dtype: its maximum for integers, 1 for floats."""
    if dtype.is_floating_point:
        return 1.0
    if dtype not in DTYPE_RANGE:
        raise ValueError(f"no default scale for dtype {dtype}; set scale in the data config")
    return DTYPE_RANGE[dtype]


def to_float(
    batch: Tensor,
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Integer images -> float32: ``(batch / scale - mean) / std`` per band.

    Call it on the device after the transfer, so the host moves 1-2 bytes per pixel.

    Args:
        batch: ``(B, C, H, W)`` or ``(C, H, W)``, any integer or float dtype.
        scale: value mapped to 1.0; None = the dtype's range (255, 65535, ...; 1 for floats).
        mean: per-band mean in scaled units (as :func:`compute_band_stats` gives); None = 0.
        std: per-band std in scaled units; None = 1.

    Returns:
        float32 tensor of the same shape, on the same device; non-finite values of a float
        batch (nodata pixels) become 0, the band mean after normalisation.

    Raises:
        ValueError: ``mean``/``std`` length differs from the band count, or a std <= 0.
    """
    if batch.dim() not in (3, 4):
        raise ValueError(
            f"expected images (B, C, H, W) or (C, H, W), got shape {tuple(batch.shape)}"
        )
    scale = dtype_scale(batch.dtype) if scale is None else float(scale)
    out = batch.float().mul_(1.0 / scale) if batch.dtype != torch.float32 else batch / scale
    bands = batch.shape[-3]
    shape = (bands, 1, 1)
    if mean is not None:
        if len(mean) != bands:
            raise ValueError(f"mean has {len(mean)} values but the images have {bands} bands")
        out = out.sub_(torch.as_tensor(mean, dtype=torch.float32, device=out.device).view(shape))
    if std is not None:
        if len(std) != bands:
            raise ValueError(f"std has {len(std)} values but the images have {bands} bands")
        if min(std) <= 0:
            raise ValueError(f"std values must be positive, got {list(std)}")
        out = out.div_(torch.as_tensor(std, dtype=torch.float32, device=out.device).view(shape))
    if batch.is_floating_point():
        # nodata pixels of float files arrive as NaN (contrastseg.data.nodata): they enter
        # the network as 0, the band mean once normalised, instead of poisoning every output
        out = torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


class Normalize(nn.Module):
    """:func:`to_float` as a module (mean/std kept as buffers, so ``.to(device)`` moves them)."""

    def __init__(
        self,
        scale: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer(
            "mean", None if mean is None else torch.tensor(list(mean), dtype=torch.float32)
        )
        self.register_buffer(
            "std", None if std is None else torch.tensor(list(std), dtype=torch.float32)
        )

    def forward(self, batch: Tensor) -> Tensor:
        mean = None if self.mean is None else self.mean.tolist()
        std = None if self.std is None else self.std.tolist()
        return to_float(batch, self.scale, mean, std)


class SeededRandomSampler(Sampler[int]):
    """A shuffle that is a pure function of ``(seed, epoch)``: reproducible and resumable."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    distributed: bool = False,
    seed: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose workers only decode and crop.

    Args:
        dataset: an :class:`UnlabeledDataset`, :class:`LabeledDataset` or any map dataset.
        batch_size: per-process batch size.
        num_workers: worker processes (persistent when > 0, prefetch 2 batches each).
        shuffle: shuffle every epoch, reproducibly from ``(seed, epoch)``.
        drop_last: drop the last incomplete batch (also makes ranks agree under DDP).
        distributed: use a ``DistributedSampler`` when ``torch.distributed`` is initialised.
        seed: shuffle seed.
        pin_memory: pin batches for faster host-to-GPU copies; None = when CUDA is available.

    Returns:
        The loader; call :func:`set_loader_epoch` before iterating each epoch.

    Raises:
        ValueError: ``batch_size`` < 1, ``num_workers`` < 0, or an empty dataset.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty")
    sampler: Sampler[int] | None = None
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = SeededRandomSampler(len(dataset), seed)  # type: ignore[arg-type]
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler (shuffle order) and the dataset (random windows) the new epoch."""
    for obj in (loader.sampler, loader.dataset):
        set_epoch = getattr(obj, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
