"""Checkpoints: atomic writes, the newest K kept, ``torch.load(weights_only=True)``-safe content.

A checkpoint is a plain dict of tensors and Python scalars / lists / dicts:

    format, version, step, epoch, batch_in_epoch, config (dict), model (the network's state
    dict: backbone.*, then its parts, e.g. aspp.*, decoder.*), heads (projection heads), optimizer, scheduler,
    scaler, rng (torch, cuda, python, views generator states)

so any later tool reads it without executing pickled code.

Integrity (checksum sidecars, the finite check, atomic writes, ``weights_only`` reads) is
:mod:`contrastseg.utils.weights`'s; its names are re-exported here. ``run.resume=auto`` skips a damaged newest checkpoint (it is renamed ``*.corrupt``) and
continues from the newest intact one.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from contrastseg.utils import weights
from contrastseg.utils.configtools import ConfigError
from contrastseg.utils.dist import is_distributed, is_main_process

# the integrity layer, re-exported: code written against this module keeps working
from contrastseg.utils.weights import (  # noqa: F401
    CHECKSUM_SUFFIX,
    CorruptCheckpoint,
    NonFiniteTensor,
    check_finite,
    checksum_path,
    file_sha256,
    first_non_finite,
    one_line_reason,
    read_torch_file,
    verify_file,
    write_checksum,
)
from contrastseg.utils.weights import TMP_NAME as _TMP_NAME

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


def remove_stale_tmp(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.<name>.<pid>.tmp`` files that writes killed midway left in ``directory``.

    Files of a process that is still alive are kept (it may be writing them now).

    Returns:
        The deleted paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = _TMP_NAME.match(path.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one file at a time and is not writing now
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except OSError:  # e.g. PermissionError: the pid exists under another user
        return True
    return True


def newest_intact(existing: list[Path]) -> Path | None:
    """The newest checkpoint of ``existing`` (oldest first) whose bytes verify.

    Each damaged newer one is renamed ``<name>.corrupt`` (kept for inspection, out of the
    way of pruning and resuming) with a warning that names it.
    """
    for path in reversed(existing):
        try:
            verify_file(path)
        except CorruptCheckpoint as err:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            if checksum_path(path).is_file():
                os.replace(checksum_path(path), checksum_path(aside))
            warnings.warn(
                f"{err}; skipped it (renamed {aside.name}), looking for an older intact one",
                stacklevel=3,
            )
            continue
        return path
    return None


#: The lock file of a run folder: ``<pid> <host>`` of the process writing the folder.
LOCK_NAME = ".run.lock"
#: A lock file without a readable holder younger than this is being written, not stale.
_LOCK_GRACE_S = 10.0
#: Run folders (resolved) whose lock this process holds -> their lock file.
_HELD: dict[Path, Path] = {}


class RunFolderLocked(ConfigError):
    """Another live process writes the run folder (its lock file names it)."""


def _lock_holder(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def lock_run_folder(run_dir: str | os.PathLike[str]) -> Path:
    """Take the lock of a run folder for this process (``<run_dir>/.run.lock``), creating the folder.

    A lock of this process is taken again; a lock left by a dead process of this host (a
    killed run) is taken over. The lock goes when :func:`release_run_folders` is called or
    the process exits.

    Returns:
        The lock file.

    Raises:
        RunFolderLocked: a live process (or one on another host, which cannot be checked)
            holds it; the message names its pid and host and the lock file.
    """
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_NAME
    me = (os.getpid(), socket.gethostname())
    run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None:
                try:
                    age = time.time() - lock.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile
                if age < _LOCK_GRACE_S:
                    raise RunFolderLocked(
                        f"{run_dir} is being taken by another process (its lock {lock} is "
                        "being written); choose another run.name or wait for it"
                    ) from None
            elif holder != me and (holder[1] != me[1] or _process_alive(holder[0])):
                where = (
                    ""
                    if holder[1] == me[1]
                    else f" (another host: if no run is active there, delete {lock})"
                )
                raise RunFolderLocked(
                    f"{run_dir} is in use by process {holder[0]} on {holder[1]}{where}: two "
                    "runs writing one folder would mix their checkpoints and logs; choose "
                    "another run.name or wait for that run to end"
                ) from None
            lock.unlink(missing_ok=True)  # a dead process's lock, or this process's own
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{me[0]} {me[1]}\n")
        if not _HELD:
            atexit.register(release_run_folders)
        _HELD[run_dir.resolve()] = lock
        return lock
    raise RunFolderLocked(f"{run_dir}: could not take its lock {lock}; try again")


def release_run_folders() -> None:
    """Remove the run-folder locks this process holds (a no-op when it holds none)."""
    while _HELD:
        _, lock = _HELD.popitem()
        if _lock_holder(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)


def resume_source(setting: str, named: bool, ckpt_dir: Path) -> Path | None:
    """The checkpoint a run continues from, or ``None`` for a fresh run.

    The run folder (``ckpt_dir``'s parent) is locked first, on the main process (see
    :func:`lock_run_folder`; the lock is let go again when this raises). Temporary files of
    killed writes are removed from the run folder and its checkpoints.

    Args:
        setting: ``run.resume``: ``never``, ``auto`` (the newest intact checkpoint of the
            run, if any; damaged newer ones are set aside with a warning) or the path of a
            checkpoint.
        named: whether ``run.name`` was given (``auto`` needs it: an unnamed run gets a new
            timestamped folder, so there is nothing to resume).
        ckpt_dir: the run's checkpoint folder.

    Raises:
        RunFolderLocked: another live process writes the run folder.
        ConfigError: a fresh run into a folder that holds checkpoints, or the ``best.pt`` /
            ``best_probe.pt`` of an earlier run; ``auto`` without a name, or with only damaged
            checkpoints; an explicit checkpoint older than others in the folder (resuming it
            would mix two runs and prune the newer checkpoints).
    """
    run_dir = ckpt_dir.parent
    existed = run_dir.is_dir()
    lock, problem = None, None
    if is_main_process():
        try:
            lock = lock_run_folder(run_dir)
        except RunFolderLocked as err:
            problem = str(err)
    if is_distributed():  # every process stops with rank 0's message, none waits for it
        shared = [problem]
        torch.distributed.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        raise RunFolderLocked(problem)
    if lock is None:
        return _resume_source(setting, named, ckpt_dir)
    try:
        return _resume_source(setting, named, ckpt_dir)
    except BaseException:
        _HELD.pop(run_dir.resolve(), None)
        lock.unlink(missing_ok=True)
        if not existed:  # a refused run leaves nothing behind
            try:
                run_dir.rmdir()
            except OSError:
                pass
        raise


#: Results a run keeps apart from its step checkpoints (fine-tuning, pretraining probe).
RESULT_FILES = ("best.pt", "best_probe.pt")


def _refuse_orphan_results(run_dir: Path) -> None:
    """A fresh run must not replace the results of an earlier run of the same folder."""
    found = [name for name in RESULT_FILES if (run_dir / name).is_file()]
    if found:
        raise ConfigError(
            f"{run_dir} holds {' and '.join(found)} of an earlier run but no step checkpoint "
            "to continue it from: a fresh run would replace it with its own first result; "
            "choose another run.name, or move it away"
        )


def _resume_source(setting: str, named: bool, ckpt_dir: Path) -> Path | None:
    remove_stale_tmp(ckpt_dir)
    remove_stale_tmp(ckpt_dir.parent)
    existing = list_checkpoints(ckpt_dir)
    if setting == "never":
        if existing:
            raise ConfigError(
                f"{ckpt_dir.parent} already holds checkpoints (newest {existing[-1].name}); "
                "pass --resume (run.resume=auto) to continue that run, or choose another run.name"
            )
        _refuse_orphan_results(ckpt_dir.parent)
        return None
    if setting == "auto":
        if not named:
            raise ConfigError(
                "run.resume=auto needs a run.name: without one every run gets a new "
                "timestamped folder and there is nothing to resume"
            )
        source = newest_intact(existing)
        if source is None and existing:
            raise ConfigError(
                f"every step checkpoint in {ckpt_dir} is damaged (set aside as *.corrupt): "
                "there is nothing intact to resume from, and starting afresh here would replace "
                "the run's results; move the run folder away or choose another run.name"
            )
        if source is None:
            _refuse_orphan_results(ckpt_dir.parent)
        return source
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


#: Settings whose change between a checkpoint and the resumed run deserves a warning.
RESUME_SENSITIVE = ("train.batch_size", "data.patch_size")


def resume_note(setting: str, source: Path | None, step: int) -> str:
    """What the start line of a run says about resuming (empty for a plain fresh run)."""
    if source is not None:
        return f"; resumed from {source} at step {step}"
    if setting == "auto":
        return "; --resume found no intact checkpoint in the run folder: starting fresh"
    return ""


def changed_settings(
    stored: Mapping[str, Any], current: Mapping[str, Any], keys: tuple[str, ...] = RESUME_SENSITIVE
) -> list[str]:
    """Warnings for the dotted ``keys`` whose value differs between two config dicts.

    A resumed run with another batch size (or patch size) continues the step count and
    schedule of the checkpoint, but its epochs and data order are no longer those of the
    run it continues.
    """

    def get(config: Mapping[str, Any], key: str) -> Any:
        for part in key.split("."):
            config = config.get(part, {}) if isinstance(config, Mapping) else {}
        return config if config != {} else None

    return [
        f"warning: {key} is {get(current, key)!r} but the checkpoint was written with "
        f"{get(stored, key)!r}; the resumed run is not the run it continues"
        for key in keys
        if get(stored, key) is not None and get(stored, key) != get(current, key)
    ]


def newest_other_checkpoint(path: Path) -> Path | None:
    """The newest step checkpoint beside ``path`` other than ``path`` itself, or None."""
    older = [p for p in list_checkpoints(path.parent) if p != path]
    return older[-1] if older else None


def save_atomic(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """:func:`contrastseg.utils.weights.save_atomic` naming the run's newest intact checkpoint.

    Raises:
        NonFiniteTensor: a float tensor of ``payload`` holds NaN or Inf; nothing is written,
            and the message names the tensor and the newest checkpoint already in the folder.
        OSError: the file could not be written; the message says what was kept.
    """
    return weights.save_atomic(payload, path, newest_other_checkpoint)


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints (and their checksums).

    Returns:
        The deleted checkpoint paths.
    """
    existing = list_checkpoints(directory)
    doomed = existing[:-keep_last] if keep_last > 0 else existing
    for path in doomed:
        path.unlink(missing_ok=True)
        checksum_path(path).unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a contrastseg checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpoint: damaged bytes (checksum or CRC mismatch, truncation).
        ValueError: the file is not a readable contrastseg pretraining checkpoint.
    """
    path = Path(path)
    payload = read_torch_file(path, "checkpoint")
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
