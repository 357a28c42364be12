"""Checkpoints: atomic writes, the newest K kept, ``torch.load(weights_only=True)``-safe content.

A checkpoint is a plain dict of tensors and Python scalars / lists / dicts (DESIGN.md):

    format, version, step, epoch, batch_in_epoch, config (dict), model (DeepLabV3+ state
    dict: backbone.*, aspp.*, decoder.*), heads (projection heads), optimizer, scheduler,
    scaler, rng (torch, cuda, python, views generator states)

so any later tool reads it without executing pickled code.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from contrastseg.utils.configtools import ConfigError

CHECKPOINT_FORMAT = "contrastseg.pretrain"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """``<directory>/step_00001234.pt``."""
    return Path(directory) / f"step_{step:08d}.pt"


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step in a ``step_00001234.pt`` name, or None for any other name."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Step checkpoints in ``directory``, oldest first (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(step, p) for p in directory.iterdir() if (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def resume_source(setting: str, named: bool, ckpt_dir: Path) -> Path | None:
    """The checkpoint a run continues from, or ``None`` for a fresh run.

    Args:
        setting: ``run.resume``: ``never``, ``auto`` (the newest checkpoint of the run, if
            any) or the path of a checkpoint.
        named: whether ``run.name`` was given (``auto`` needs it: an unnamed run gets a new
            timestamped folder, so there is nothing to resume).
        ckpt_dir: the run's checkpoint folder.

    Raises:
        ConfigError: a fresh run into a folder that holds checkpoints; ``auto`` without a
            name; an explicit checkpoint older than others in the folder (resuming it would
            mix two runs and prune the newer checkpoints).
    """
    existing = list_checkpoints(ckpt_dir)
    if setting == "never":
        if existing:
            raise ConfigError(
                f"{ckpt_dir.parent} already holds checkpoints (newest {existing[-1].name}); "
                "pass --resume (run.resume=auto) to continue that run, or choose another run.name"
            )
        return None
    if setting == "auto":
        if not named:
            raise ConfigError(
                "run.resume=auto needs a run.name: without one every run gets a new "
                "timestamped folder and there is nothing to resume"
            )
        return existing[-1] if existing else None
    path = Path(setting)
    resumed = checkpoint_step(path)
    newer = [p for p in existing if resumed is not None and checkpoint_step(p) > resumed]
    if newer:
        raise ConfigError(
            f"{ckpt_dir} holds checkpoints newer than {path.name} ({', '.join(p.name for p in newer)}); "
            "resuming from an older one would mix two runs and prune the new checkpoints: "
            "move the newer ones away first, or resume from the newest"
        )
    return path


def save_atomic(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file, fsync it, then rename.

    A crash (or a full disk) while writing leaves the previous file untouched and at most a
    ``.tmp`` file behind, never a truncated checkpoint under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(dict(payload), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; returns the deleted paths."""
    existing = list_checkpoints(directory)
    doomed = existing[:-keep_last] if keep_last > 0 else existing
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a contrastseg checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable contrastseg pretraining checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a contrastseg pretraining checkpoint (no format={CHECKPOINT_FORMAT!r})"
        )
    return payload


def capture_rng(views_generator: torch.Generator | None) -> dict[str, Any]:
    """The random states a bitwise resume needs (torch CPU/CUDA, Python, views generator)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if views_generator is not None:
        state["views"] = views_generator.get_state()
    return state


def restore_rng(state: Mapping[str, Any], views_generator: torch.Generator | None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_lists(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if views_generator is not None and "views" in state:
        views_generator.set_state(state["views"])


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_lists(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
