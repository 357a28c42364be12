"""The Python API: every ``contrastseg`` subcommand as a function.

Each function takes what its subcommand takes: a config (a YAML path, a bundled config's
name, a config object, or ``None`` for the subcommand's default) and overrides in the
``--set`` key names, either as keyword sections or as dotted strings::

    import contrastseg

    run = contrastseg.pretrain("quickstart.yaml", train={"max_steps": 20}, run={"name": "try"})
    tuned = contrastseg.finetune("finetune_demo.yaml", pretrained=run.run_dir, mode="lp-ft")
    scores = contrastseg.evaluate(tuned.best_checkpoint)
    contrastseg.export(run.run_dir, "resnet18_glcnet.pth")

``train={"max_steps": 20}`` is ``--set train.max_steps=20``; ``mode="lp-ft"`` is ``--set
mode=lp-ft``; ``overrides=["optim.lr=1e-4"]`` passes ``--set`` strings as they are. Errors
are the command line's: a ``ValueError`` (``ConfigError``) or ``FileNotFoundError`` whose
one-line message names the key, the value and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the heavy modules load on first call, so `import contrastseg` stays light
    from contrastseg.config import PretrainConfig
    from contrastseg.train.finetune import FinetuneResult
    from contrastseg.train.finetune_config import FinetuneConfig
    from contrastseg.train.online_probe import ProbeResult
    from contrastseg.train.pretrain import PretrainResult

PathLike = str | os.PathLike[str]

__all__ = [
    "EvaluateResult",
    "best_checkpoint",
    "evaluate",
    "export",
    "finetune",
    "finetune_config",
    "newest_checkpoint",
    "override_strings",
    "predict",
    "pretrain",
    "pretrain_config",
    "probe",
]


def override_strings(overrides: Sequence[str] = (), **sections: Any) -> list[str]:
    """``--set`` strings from dotted strings plus keyword sections.

    ``train={"max_steps": 2, "batch_size": 4}`` gives ``train.max_steps=2`` and
    ``train.batch_size=4``; a non-mapping value is one key (``mode="linear"`` gives
    ``mode="linear"``). Values are written as JSON, which YAML reads back unchanged.

    Raises:
        ValueError: an override string without ``=``.
    """
    found = []
    for item in overrides:
        if "=" not in str(item):
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        found.append(str(item))

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            found.append(f"{prefix}={json.dumps(value, default=str)}")

    for key, value in sections.items():
        walk(key, value)
    return found


def _load(kind: Literal["pretrain", "finetune"], config: Any, overrides: list[str]):
    """A config of ``kind`` from a path / name / object / None plus ``--set`` strings."""
    from contrastseg.config import PretrainConfig, load_pretrain_config, resolve_presets
    from contrastseg.train.finetune_config import FinetuneConfig, load_finetune_config
    from contrastseg.utils.configtools import from_dict, to_dict

    cls, loader = {
        "pretrain": (PretrainConfig, load_pretrain_config),
        "finetune": (FinetuneConfig, load_finetune_config),
    }[kind]
    if config is None or isinstance(config, str | os.PathLike):
        return loader(config, overrides)
    if not isinstance(config, cls):
        raise TypeError(
            f"config must be a YAML path, a bundled config's name, a {cls.__name__} or None, "
            f"got {type(config).__name__}"
        )
    if not overrides:
        return config
    # an object plus overrides: the loader's own steps on its mapping, with their validation
    source = f"the {cls.__name__} given with overrides"
    return from_dict(cls, resolve_presets(to_dict(config), cls, overrides, source), source=source)


def pretrain_config(
    config: PathLike | PretrainConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    **sections: Any,
) -> PretrainConfig:
    """The pretraining config ``contrastseg pretrain`` would run (``contrastseg config``)."""
    return _load("pretrain", config, override_strings(overrides, **sections))


def finetune_config(
    config: PathLike | FinetuneConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    **sections: Any,
) -> FinetuneConfig:
    """The fine-tuning config ``contrastseg finetune`` would run."""
    return _load("finetune", config, override_strings(overrides, **sections))


def newest_checkpoint(path: PathLike) -> Path:
    """A run folder stands for its newest step checkpoint; a file is itself.

    Raises:
        FileNotFoundError: a folder without ``step_*.pt`` checkpoints.
    """
    from contrastseg.train.checkpoint import list_checkpoints

    folder = Path(path)
    if folder.is_dir():
        found = list_checkpoints(folder / "checkpoints") or list_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"{path} is a folder without step_*.pt checkpoints")
        return Path(found[-1])
    return folder


def best_checkpoint(path: PathLike) -> Path:
    """A fine-tuning run folder stands for its ``best.pt``; a file is itself.

    Raises:
        FileNotFoundError: a folder without ``best.pt``.
    """
    folder = Path(path)
    if folder.is_dir():
        if not (folder / "best.pt").is_file():
            raise FileNotFoundError(
                f"{path} is a folder without best.pt (a fine-tuning run folder has one)"
            )
        return folder / "best.pt"
    return folder


def pretrain(
    config: PathLike | PretrainConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    **sections: Any,
) -> PretrainResult:
    """``contrastseg pretrain``: run (or, with ``run={"resume": "auto"}``, resume) a pretraining.

    Args:
        config: YAML path, bundled config name, :class:`~contrastseg.config.PretrainConfig`,
            or None (``quickstart.yaml``, the built-in demo scenes).
        overrides: ``--set`` strings, e.g. ``["train.max_steps=20"]``.
        **sections: overrides as keyword sections, e.g. ``train={"max_steps": 20}``.

    Returns:
        The run folder, the steps done, the last checkpoint and the logged scalars.
    """
    from contrastseg.train.pretrain import run_pretrain

    return run_pretrain(pretrain_config(config, overrides=overrides, **sections))


def finetune(
    config: PathLike | FinetuneConfig | None = None,
    *,
    pretrained: PathLike | None = None,
    overrides: Sequence[str] = (),
    **sections: Any,
) -> FinetuneResult:
    """``contrastseg finetune``: train a segmenter on a label fraction, select it on val,
    score it once on test.

    Args:
        config: YAML path, bundled config name, a ``FinetuneConfig``, or None
            (``finetune_demo.yaml``).
        pretrained: a pretraining checkpoint, exported weights, or a run folder (its newest
            checkpoint); None keeps the config's ``pretrained.path``.
        overrides: ``--set`` strings.
        **sections: overrides as keyword sections, e.g. ``mode="lp-ft"``,
            ``data={"label_fraction": 0.01}``.

    Returns:
        The run folder, ``best.pt``, its epoch, val and test metrics and the load report.
    """
    from contrastseg.train.finetune import run_finetune

    if pretrained is not None:
        sections = {**sections, "pretrained": {**sections.get("pretrained", {}),
                                               "path": newest_checkpoint(pretrained)}}  # fmt: skip
    return run_finetune(finetune_config(config, overrides=overrides, **sections))


@dataclass
class EvaluateResult:
    """What :func:`evaluate` returns.

    Attributes:
        report_dir: the report folder (``metrics.json``, ``metrics.txt``, confusion matrix,
            overlays).
        metrics: the metrics written to ``metrics.json``.
    """

    report_dir: Path
    metrics: dict[str, Any]


def inference_overrides(
    data_root: PathLike | None = None,
    window: int | None = None,
    stride: int | None = None,
    flip: bool = False,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The ``--set`` strings of evaluate's and predict's inference options.

    Raises:
        ValueError: a window or stride below 1 pixel.
    """
    found = override_strings(overrides)
    if data_root is not None:
        found += override_strings(data={"root": data_root})
    for key, value in (("window", window), ("stride", stride)):
        if value is not None:
            if value < 1:
                raise ValueError(f"--{key} must be a positive number of pixels, got {value}")
            found.append(f"eval.{key}={value}")
    if flip:
        found.append("eval.flip=true")
    return found


def evaluate(
    checkpoint: PathLike,
    *,
    split: Literal["train", "val", "test"] = "test",
    out: PathLike | None = None,
    data_root: PathLike | None = None,
    window: int | None = None,
    stride: int | None = None,
    flip: bool = False,
    overrides: Sequence[str] = (),
    device: str = "auto",
    overwrite: bool = False,
) -> EvaluateResult:
    """``contrastseg evaluate``: score a fine-tuned checkpoint on whole images of one split.

    Args:
        checkpoint: a fine-tuning checkpoint, or its run folder (``best.pt``).
        split: the split scored.
        out: report folder (default ``<checkpoint folder>/eval-<split>``); an existing report
            there is refused unless ``overwrite``.
        data_root: score another dataset folder of the same classes.
        window: sliding-window side in pixels (default: the checkpoint's ``eval.window``).
        stride: step between windows (default: the checkpoint's ``eval.stride``).
        flip: also predict the flipped images and average (test-time augmentation).
        overrides: further ``--set`` strings of the stored config.
        device: ``auto``, ``cpu``, ``cuda``, ...
        overwrite: replace an existing report.
    """
    from contrastseg.train.evaluate import run_evaluate

    path = best_checkpoint(checkpoint)
    report = Path(out) if out is not None else path.parent / f"eval-{split}"
    if (report / "metrics.json").exists() and not overwrite:
        raise ValueError(
            f"{report} already holds an evaluation report (metrics.json); pass --overwrite "
            "to replace it, or choose another --out"
        )
    options = inference_overrides(data_root, window, stride, flip, overrides)
    metrics = run_evaluate(path, report, options, split, device)
    return EvaluateResult(report, metrics)


def predict(
    checkpoint: PathLike,
    inputs: Sequence[PathLike],
    out: PathLike,
    *,
    format: Literal["auto", "png", "tif"] = "auto",
    window: int | None = None,
    stride: int | None = None,
    flip: bool = False,
    overrides: Sequence[str] = (),
    device: str = "auto",
    preview: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """``contrastseg predict``: label maps (and colour previews) of image files of any size.

    Args:
        checkpoint: a fine-tuning checkpoint, or its run folder (``best.pt``).
        inputs: image files.
        out: output folder; existing label maps there are refused unless ``overwrite``.
        format: ``tif`` (GeoTIFF), ``png`` (index PNG), ``auto`` (tif for TIFF inputs).
        window: sliding-window side in pixels (default: the checkpoint's ``eval.window``).
        stride: step between windows (default: the checkpoint's ``eval.stride``).
        flip: also predict the flipped images and average (test-time augmentation).
        overrides: further ``--set`` strings of the stored config.
        device: ``auto``, ``cpu``, ``cuda``, ...
        preview: also write colour previews.
        overwrite: replace existing outputs.

    Returns:
        The files written.
    """
    from contrastseg.train.evaluate import run_predict

    return run_predict(
        best_checkpoint(checkpoint), list(inputs), out, format,
        inference_overrides(None, window, stride, flip, overrides), device,
        preview=preview, overwrite=overwrite,
    )  # fmt: skip


def export(
    checkpoint: PathLike,
    out: PathLike,
    *,
    part: Literal["backbone", "encoder", "all"] = "backbone",
    format: Literal["torch", "onnx"] = "torch",
    overwrite: bool = False,
) -> Path:
    """``contrastseg export``: write the backbone in torchvision key names (or the encoder,
    or every tensor) of a checkpoint or run folder (its newest checkpoint); with
    ``format="onnx"``, the whole fine-tuned segmenter as an ONNX model for deployment
    (:func:`contrastseg.deploy.export_onnx`: any input size, the checkpoint's bands,
    scale and normalisation in its metadata).

    Args:
        checkpoint: a pretraining or fine-tuning checkpoint, or a run folder.
        out: the file written; never the input itself, another existing file only with
            ``overwrite``.
        part: ``backbone`` (torchvision ResNet keys), ``encoder`` (backbone + ASPP), ``all``
            (``format="torch"`` only).
        format: ``torch`` (a state dict) or ``onnx`` (a fine-tuning checkpoint or its run
            folder's ``best.pt``).
        overwrite: replace an existing ``out``.
    """
    from contrastseg.models.pretrained import export_weights
    from contrastseg.utils.outputs import check_output_file

    if format == "onnx":
        from contrastseg.deploy import export_onnx

        if part != "backbone":
            raise ValueError(f"--part {part} is for state dicts; --format onnx exports the "
                             "whole fine-tuned segmenter")  # fmt: skip
        return export_onnx(best_checkpoint(checkpoint), out, overwrite)
    if format != "torch":
        raise ValueError(f"--format must be torch or onnx, got {format!r}")
    source = newest_checkpoint(checkpoint)
    check_output_file(out, [source], overwrite)  # checked before any work
    return Path(export_weights(source, out, part))


def probe(
    checkpoint: PathLike,
    config: PathLike | PretrainConfig | None = None,
    *,
    features: Literal["auto", "decoder", "encoder", "backbone"] = "auto",
    out: PathLike | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    **sections: Any,
) -> ProbeResult:
    """``contrastseg probe``: fit the converged linear probe on the frozen features of any
    checkpoint and score its val images.

    Args:
        checkpoint: a weights file (pretraining, fine-tuning, exported backbone, torchvision
            ResNet) or a run folder (its newest checkpoint).
        config: the pretraining config whose ``probe`` section names the labeled data
            (default ``quickstart.yaml``, the demo scenes).
        features: the features probed (``auto``: the deepest part the file trained).
        out: also write the result as JSON here (never over the checkpoint; an existing file
            only with ``overwrite``).
        overwrite: replace an existing ``out``.
        overrides: ``--set`` strings applied to ``config``.
        **sections: overrides as keyword sections, e.g. ``probe={"max_patches": 8}``.
    """
    from contrastseg.train.online_probe import probe_checkpoint
    from contrastseg.utils.outputs import check_output_file

    settings = pretrain_config(config, overrides=overrides, **sections)
    path = newest_checkpoint(checkpoint)
    if out is not None:
        check_output_file(out, [path], overwrite)
    result = probe_checkpoint(path, settings, features, settings.train.device)
    if out is not None:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        record = {"checkpoint": str(path), **result.scalars(), "features": result.features,
                  "channels": result.channels, "stride": result.stride, "cells": result.cells,
                  "metrics": result.metrics}  # fmt: skip
        target.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return result
