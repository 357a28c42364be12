"""Weights-file integrity: checksums, the finite check, atomic saves, ``weights_only`` reads.

Every ``torch.save`` file the package writes (step checkpoints, ``best.pt``, exported
weights) goes through :func:`save_atomic` and every one it reads through
:func:`read_torch_file`, so the rules hold for all of them:

- no file with a NaN or infinite float tensor is written (:class:`NonFiniteTensor`, naming
  the tensor);
- a write goes to a temporary file ``.<name>.<pid>.tmp``, is fsynced and renamed, so a crash
  never leaves a truncated file under the final name;
- a ``<name>.sha256`` sidecar in ``sha256sum`` format follows the data; a read checks it
  (files without one, e.g. from older versions, get the CRC test of their zip container), so a
  damaged file is refused by name (:class:`CorruptCheckpoint`) instead of loading silently;
- reads use ``torch.load(weights_only=True)``: pickled objects are never executed.

This module sits on the lowest layer (it imports nothing of the package), so checkpoints,
export and model loading all use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Temporary names of :func:`save_atomic`: ``.<name>.<pid>.tmp``.
TMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")
CHECKSUM_SUFFIX = ".sha256"


class CorruptCheckpoint(ValueError):
    """A checkpoint or weights file whose bytes are damaged (checksum or zip CRC mismatch)."""


class NonFiniteTensor(ValueError):
    """A tensor about to be written (or exported) holds NaN or infinite values."""


def _float_tensors(obj: Any, name: str) -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield name, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _float_tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _float_tensors(value, f"{name}[{i}]")


def first_non_finite(obj: Any) -> tuple[str, int, int] | None:
    """The first float tensor in a (nested) dict / list holding NaN or Inf, or None.

    Returns:
        ``(name, bad, numel)``: the dotted key path (e.g. ``model.backbone.bn1.running_var``),
        the count of non-finite values and the tensor's size.
    """
    for name, tensor in _float_tensors(obj, ""):
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            return name, int((~finite).sum()), tensor.numel()
    return None


def check_finite(
    obj: Any,
    prefix: str,
    hint: str = "the training diverged; lower optim.lr, set optim.grad_clip or try train.amp=off",
) -> None:
    """Raise :class:`NonFiniteTensor` naming the first NaN/Inf tensor of ``obj``.

    Every parameter and buffer counts (a BatchNorm running variance overflows before the
    loss does), as do optimizer states; integer tensors (RNG states, counters) cannot be
    non-finite.

    Args:
        obj: a tensor or nested dicts / lists holding them.
        prefix: the start of the message (which file, what happens to it).
        hint: what to do, after the tensor's name and count.
    """
    bad = first_non_finite(obj)
    if bad is not None:
        name, count, numel = bad
        raise NonFiniteTensor(
            f"{prefix}{name} holds {count} non-finite value(s) of {numel} ({hint})"
        )


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of ``path``: ``step_00001234.pt.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_checksum(path: str | os.PathLike[str]) -> Path:
    """Write ``path``'s SHA-256 sidecar atomically (``sha256sum -c`` reads it too)."""
    path = Path(path)
    sidecar = checksum_path(path)
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{file_sha256(path)}  {path.name}\n")
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return sidecar


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check a ``torch.save`` file's bytes against its sidecar, or its zip CRCs without one.

    Raises:
        CorruptCheckpoint: a checksum or CRC mismatch, or a file that is no zip at all
            (truncated); the message names the file.
    """
    path = Path(path)
    sidecar = checksum_path(path)
    if sidecar.is_file():
        expected = (sidecar.read_text().split() or [""])[0]
        actual = file_sha256(path)
        if actual != expected:
            raise CorruptCheckpoint(
                f"{path} is damaged: its SHA-256 {actual[:12]}... differs from the "
                f"{expected[:12] or 'empty'}... stored in {sidecar.name}"
            )
        return
    try:  # files of older versions: zip CRCs catch overwritten bytes, the directory truncation
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CorruptCheckpoint(f"{path} is damaged or truncated: {err}") from err
    if bad is not None:
        raise CorruptCheckpoint(f"{path} is damaged: record {bad} fails its CRC check")


def read_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU after :func:`verify_file`.

    Args:
        path: the file.
        what: how messages call it (``checkpoint``, ``weights file``).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpoint: damaged bytes (see :func:`verify_file`).
        NonFiniteTensor: a float tensor holds NaN or Inf (the message names the file and the
            first such tensor).
        ValueError: not a ``torch.save`` file of tensors and plain values (a text file, a
            pickle of arbitrary objects ...); the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"  # torch.save's format since torch 1.6
    if zipped or checksum_path(path).is_file():
        verify_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        first = _load_error(err)
        raise ValueError(
            f"{path} is not a readable {what} (expected a torch.save file of tensors): {first}"
        ) from err
    # NaN/Inf weights would be probed, evaluated or fine-tuned into meaningless numbers
    check_finite(
        obj, f"{path}: ", f"this {what} cannot be used: the run that wrote it had diverged by "
        "then; take an earlier checkpoint"
    )  # fmt: skip
    return obj


def _load_error(err: Exception) -> str:
    """The cause in torch.load's message, without its advice to load untrusted code."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", text, re.M)
        cause = found.group(1).rstrip(".") if found else "objects other than tensors"
        return f"it holds pickled objects, which are never loaded since they can run code ({cause})"
    return text.splitlines()[0] if text else type(err).__name__


def save_atomic(
    payload: Mapping[str, Any],
    path: str | os.PathLike[str],
    intact: Callable[[Path], Path | None] | None = None,
) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file, fsync it, rename, add a checksum.

    A crash (or a full disk) while writing leaves the previous file untouched and at most a
    ``.tmp`` file behind, never a truncated file under the final name. The SHA-256 sidecar
    follows the data (a crash in between leaves a file without one, which loads after the zip
    CRC check, as files of older versions do).

    Args:
        payload: a dict of tensors and plain values.
        path: the file to write.
        intact: ``path -> the newest intact file that a failed write leaves to fall back on``
            (a run's newest step checkpoint), named in the error messages; None: none.

    Raises:
        NonFiniteTensor: a float tensor of ``payload`` (parameter, buffer, optimizer state)
            holds NaN or Inf; nothing is written, and the message names the tensor (and the
            file ``intact`` gives).
        OSError: the file could not be written (full disk, read-only folder): its
            ``filename`` is ``path`` and the message says what was kept.
    """
    path = Path(path)
    try:
        check_finite(payload, f"{path}: not written: ")
    except NonFiniteTensor as err:
        older = intact(path) if intact is not None else None
        if older is not None:
            raise NonFiniteTensor(f"{err}; the newest checkpoint {older} is intact") from None
        raise
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(dict(payload), handle)
            handle.flush()
            os.fsync(handle.fileno())
        checksum_path(path).unlink(missing_ok=True)  # never a stale sidecar on new data
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        older = intact(path) if intact is not None else None
        kept = f"; the newest checkpoint {older} is intact" if older is not None else ""
        kept += "; the older file there is kept" if path.exists() else ""
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        try:
            reason += f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there)"
        except OSError:
            pass
        raise OSError(
            getattr(err, "errno", None) or 0,
            f"not written: {one_line_reason(reason)}{kept}",
            str(path),
        ) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    write_checksum(path)
    return path


def one_line_reason(text: str) -> str:
    """The first line of an error text (torch's messages run over several)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
