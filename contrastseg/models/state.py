"""The one reader of weights files: whatever ``torch.load`` gives -> a state dict and its checkpoint.

Both readers of :mod:`contrastseg.models` go through :func:`read_weights`: a backbone's
``load_weights`` (:func:`~contrastseg.models.backbone.read_backbone_state`) and the loader of
network parts (:func:`~contrastseg.models.pretrained.read_state_dict`). So they accept the
same files: a plain state dict; a contrastseg pretraining / fine-tuning checkpoint (its
``model``); a checkpoint holding the state dict under ``state_dict``, ``model`` or
``backbone`` (Lightning, timm, lightly ...), nested or not; with the wrapper prefixes of
DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from contrastseg.utils.weights import read_torch_file

#: ``format`` of the checkpoints contrastseg writes (their network state dict is ``model``).
FORMATS = ("contrastseg.pretrain", "contrastseg.finetune")
#: Prefixes that wrappers put in front of every key (DDP, ``torch.compile``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Keys under which checkpoints of other libraries keep a state dict, in the order tried.
_HOLDERS = ("backbone", "state_dict", "model")


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file.

    The bytes are checked first against the file's ``.sha256`` sidecar (or its zip CRCs),
    so a damaged file is refused instead of loading altered weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: damaged bytes, or not a readable ``torch.save`` file of tensors and plain
            values (a text file, a pickle of arbitrary objects ...).
    """
    return read_torch_file(path, "weights file")


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    """``state`` with every leading ``prefixes`` removed from its keys, repeatedly."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        while key.startswith(prefixes):
            key = key[len(next(p for p in prefixes if key.startswith(p))) :]
        out[key] = value
    return out


def _unwrap(obj: object, path: str) -> Mapping[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in _HOLDERS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                return _unwrap(inner, path)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
    raise ValueError(
        f"{path}: expected a state dict of tensors (a ResNet's, a network's, or a checkpoint "
        f"holding one under 'backbone', 'state_dict' or 'model'), got {type(obj).__name__}"
    )


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict in a weights file (wrapper prefixes removed) and the contrastseg checkpoint around it.

    Returns:
        ``(state, payload)``: ``payload`` is the whole checkpoint dict of a contrastseg
        checkpoint, else ``{}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no state dict of tensors in the file (the message names it).
    """
    obj = load_torch_file(path)
    payload: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") in FORMATS:
        payload, obj = dict(obj), obj["model"]
    return strip_prefixes(_unwrap(obj, os.fspath(path)), WRAPPER_PREFIXES), payload
