"""Pretrained weights in and out: load chosen parts into a network, export the backbone.

The parts are the network's own (:attr:`~contrastseg.models.SegmentationNet.parts`: DeepLabV3+
``backbone``, ``aspp``, ``decoder``; U-Net / FPN ``backbone``, ``decoder``), each one
state-dict prefix; a selection names them by role (:func:`~contrastseg.models.part_names`):
``backbone``, ``encoder`` (alias ``backbone+aspp``: the parts in front of the encoder
features) or ``all``. A DeepLabV3+ checkpoint's backbone therefore loads into a U-Net or FPN.

Files :func:`load_pretrained` reads:

- a pretraining checkpoint (``format: contrastseg.pretrain``) or a fine-tuning checkpoint
  (``format: contrastseg.finetune``): the network's state dict under ``model``;
- a file written by :func:`export_weights`: plain torchvision ResNet keys (``conv1.weight``,
  ``layer1.0.conv1.weight``, ...) for ``part="backbone"``, network keys (``backbone.*``,
  ``aspp.*``, ``decoder.*``) for ``encoder`` / ``all``;
- any plain state dict in one of these two key styles (wrapper prefixes ``module.`` and
  ``_orig_mod.`` from DDP / ``torch.compile`` are removed).

Nothing is loaded silently: :func:`load_pretrained` returns a :class:`LoadReport` listing
the keys it loaded, the model keys of the chosen parts that the file lacks, and the file keys
it did not use; a shape mismatch is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from contrastseg.models.backbone import check_same_resnet
from contrastseg.models.registry import ALL_ENCODER_PARTS, ALL_PARTS, PART_SELECTIONS, part_names
from contrastseg.models.state import load_torch_file, read_weights
from contrastseg.utils.weights import check_finite, save_atomic

#: The part selections :func:`load_pretrained` accepts (``--parts``).
PARTS: tuple[str, ...] = PART_SELECTIONS
EXPORT_PARTS = ("backbone", "encoder", "all")
__all__ = ["EXPORT_PARTS", "PARTS", "LoadReport", "export_weights", "load_pretrained",
           "load_torch_file", "read_state_dict"]  # fmt: skip


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        path: the file read.
        parts: the parts asked for.
        loaded: model keys filled from the file.
        missing: model keys of the chosen parts that the file does not have (left as they were).
        unexpected: file keys that belong to no chosen part of the model (not loaded).
        part_names: the model's parts that ``parts`` selected (e.g. ``backbone`` for the
            ``encoder`` of a U-Net).
    """

    path: str
    parts: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    part_names: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every model key of the chosen parts was loaded."""
        return not self.missing

    def summary(self, limit: int = 5) -> str:
        """One line: counts and the first few missing / unexpected keys."""
        text = f"{self.path}: loaded {len(self.loaded)} tensors into {self.parts}"
        if self.part_names and "+".join(self.part_names) != self.parts:
            text += f" ({'+'.join(self.part_names)})"
        if self.missing:
            text += f"; missing {len(self.missing)} ({', '.join(self.missing[:limit])})"
        if self.unexpected:
            text += f"; unused {len(self.unexpected)} ({', '.join(self.unexpected[:limit])})"
        return text


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The network state dict (``backbone.*``, ...) in a weights file, and the checkpoint around it.

    Read by :func:`~contrastseg.models.state.read_weights` (the one reader: the files it
    takes, wrapper prefixes removed); plain torchvision ResNet keys are returned under
    ``backbone.``.

    Returns:
        ``(state, payload)``: ``state`` with network key names; ``payload`` the whole
        checkpoint dict for contrastseg checkpoints, else ``{}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ``torch.save`` file of tensors (the message names it).
    """
    state, payload = read_weights(path)
    if not any(k.split(".", 1)[0] in ALL_PARTS for k in state):
        # plain torchvision ResNet keys (an exported backbone); a classifier ``fc`` stays in
        # the state as backbone.fc.* and is reported as unexpected by load_pretrained
        state = {f"backbone.{k}": v for k, v in state.items()}
    return state, payload


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    parts: Literal["backbone", "backbone+aspp", "encoder", "all"] = "backbone+aspp",
) -> LoadReport:
    """Copy the chosen parts of a weights file into a network.

    Args:
        model: a :class:`~contrastseg.models.SegmentationNet` (the classifier is never loaded:
            fine-tuning starts it fresh).
        path: a contrastseg checkpoint or an exported / plain state dict (see module doc).
        parts: ``backbone``, ``backbone+aspp`` (the GLCNet default; ``encoder`` is the same:
            the parts in front of the encoder features, the backbone alone for U-Net / FPN)
            or ``all`` (every part of ``model``).

    Returns:
        A :class:`LoadReport`; keys the file lacks stay as they were in ``model``.

    Raises:
        ValueError: an unknown ``parts``, a backbone of another ResNet depth (the message
            names both), a file key whose shape differs from the model's
            (e.g. another band count or width; the message lists them), or no key
            of the chosen parts at all in the file.
        FileNotFoundError: no such file.
    """
    names = part_names(model, parts)
    prefixes = tuple(f"{p}." for p in names)
    state, _ = read_state_dict(path)
    target = model.state_dict()
    # another depth shares most key names and shapes: refuse it before loading half of it
    check_same_resnet(
        [k for k in target if k.startswith("backbone.")],
        [k for k in state if k.startswith("backbone.")],
        str(path),
    )
    wanted = {k for k in target if k.startswith(prefixes)}
    chosen = {k: v for k, v in state.items() if k.startswith(prefixes)}
    report = LoadReport(
        str(path),
        parts,
        loaded=sorted(wanted & set(chosen)),
        missing=sorted(wanted - set(chosen)),
        unexpected=sorted(set(state) - (wanted & set(chosen))),
        part_names=names,
    )
    wrong = [
        f"{k}: file {tuple(chosen[k].shape)} vs model {tuple(target[k].shape)}"
        for k in report.loaded
        if chosen[k].shape != target[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{path} does not fit this model ({len(wrong)} shape mismatch(es), e.g. another "
            f"architecture, band count or width): " + "; ".join(wrong[:6])
        )
    if not report.loaded:
        raise ValueError(
            f"{path} has no weights for parts={parts!r} (file keys start with "
            f"{sorted({k.split('.')[0] for k in state})})"
        )
    model.load_state_dict({k: chosen[k] for k in report.loaded}, strict=False)
    return report


def export_weights(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    part: Literal["backbone", "encoder", "all"] = "backbone",
) -> Path:
    """Write the weights of a contrastseg checkpoint for use by other segmentation code.

    Args:
        checkpoint: a pretraining or fine-tuning checkpoint (or a state dict in network keys).
        out: the file to write (``torch.save`` of a plain dict of tensors).
        part: ``backbone``: the ResNet in torchvision key names (``conv1.weight``, ``bn1.*``,
            ``layer1.0.conv1.weight`` ...), loadable with ``strict=False`` into
            ``torchvision.models.resnetXX()`` with only ``fc.*`` missing (a VGG16-BN in
            torchvision's ``vgg16_bn`` names, a ``timm/<name>`` backbone in timm's names); ``encoder``: the
            parts in front of the encoder features (DeepLabV3+ ``backbone.*`` and ``aspp.*``,
            U-Net / FPN ``backbone.*``); ``all``: every tensor (the classifier too, for a
            fine-tuning checkpoint).

    Returns:
        ``out`` as a path.

    Raises:
        ValueError: an unknown ``part``, an unreadable checkpoint, or a NaN / infinite
            tensor (``NonFiniteTensor``; nothing is written).
        FileNotFoundError: no such checkpoint.
    """
    if part not in EXPORT_PARTS:
        raise ValueError(f"part must be one of {', '.join(EXPORT_PARTS)}, got {part!r}")
    state, _ = read_state_dict(checkpoint)
    if part == "backbone":
        weights = {
            k.removeprefix("backbone."): v.clone()
            for k, v in state.items()
            if k.startswith("backbone.") and not k.startswith("backbone.fc.")
        }
        if weights and all(k.startswith("model.") for k in weights):
            # a timm backbone keeps the timm model under ``model``: timm's own key names
            weights = {k.removeprefix("model."): v for k, v in weights.items()}
    elif part == "encoder":
        # a checkpoint holds the parts of one network only, so the union of every network's
        # encoder parts selects that network's
        prefixes = tuple(f"{p}." for p in ALL_ENCODER_PARTS)
        weights = {k: v.clone() for k, v in state.items() if k.startswith(prefixes)}
    else:
        weights = {k: v.clone() for k, v in state.items()}
    if not weights:
        raise ValueError(f"{checkpoint} holds no {part} weights")
    check_finite(
        weights, f"{checkpoint}: ", f"the run had diverged by then; {out} not written: "
        "export an earlier checkpoint"
    )  # fmt: skip
    return save_atomic(weights, out)  # temp file + rename + checksum sidecar
