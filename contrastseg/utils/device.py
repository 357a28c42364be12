"""Which device a run uses when the config says ``auto``."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA if available, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a config value (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) into a device.

    Raises:
        ValueError: the name is not a device, or names one this machine does not have.
    """
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {name!r} requested but MPS is not available on this machine")
    return device


def describe_device(device: torch.device) -> str:
    """A one-line human description, e.g. ``cuda:0 (NVIDIA H100, 79.1 GiB)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return str(device)
