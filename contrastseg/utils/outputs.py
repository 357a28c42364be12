"""Files and folders the CLI writes: never over the user's input, never over a file silently.

:func:`check_output_file` is called before anything is computed, so a mistake costs nothing
and nothing the user has is lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_file(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    flag: str = "--overwrite",
) -> Path:
    """Refuse an output file that is an input, a folder, or an existing file (unless ``overwrite``).

    Args:
        out: the file about to be written.
        inputs: the files the command reads (their ``.sha256`` sidecars count as them too).
        overwrite: whether an existing ``out`` (other than an input) may be replaced.
        flag: the option that allows it, named in the message.

    Returns:
        ``out`` as a path.

    Raises:
        ValueError: the message names ``out`` and what is wrong with it.
    """
    path = Path(out)
    for source in inputs:
        source = Path(source)
        sidecar = source.with_name(source.name + ".sha256")
        if _same_file(path, source) or path.resolve() in (source.resolve(), sidecar.resolve()):
            raise ValueError(
                f"--out {path} is the input {source} itself: writing it would replace what is "
                "read; choose another file"
            )
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; name the file to write")
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path} already exists; pass {flag} to replace it")
    return path
