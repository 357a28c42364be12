"""A quick segmentation probe of a frozen network: how well do its features segment?

A falling contrastive loss says little; segmenting held-out images says what the encoder is
worth. :func:`run_probe` is the linear probe of :mod:`contrastseg.train.probe` (same feature
choice, same rule that probed parts hold trained weights) made cheap enough to run every few
hundred pretraining steps and on any checkpoint:

1. the frozen network (eval mode: its BatchNorm statistics as trained) computes the probed
   features of at most ``max_patches`` labeled training patches, once: evenly spaced over
   the whole training split (:func:`probe_patch_indices`), so every image contributes;
2. the features, bilinearly upsampled as the segmenter's logits are, are read at a regular
   grid of labeled pixels (``pixel_step``; at most ``max_cells`` samples, evenly spaced), and
   the softmax regression (a 1x1 convolution) is solved to convergence on them by the solver
   that ``finetune --mode linear`` uses (:mod:`contrastseg.train.linear_fit`): one L-BFGS
   fit per L2 strength of ``l2_grid``, fitted on three quarters of the patches and chosen on
   the pixels of the other quarter (never on the validation images): no network forward in
   the loop;
3. the network with that head segments the probe's validation images by sliding-window
   inference (logits averaged where windows overlap), scored as OA / mIoU / kappa / mean F1.

When the probed features are the decoder's, the encoder features (what a default fine-tune
transfers: ``pretrained.parts: backbone+aspp``) are probed beside them (``encoder_too``) and
logged as ``probe/encoder/*``: a decoder that probes well says little about a fine-tune that
throws it away.

During pretraining it is an evaluation hook of the training loop (``probe.every`` steps; the
random streams of the run are not touched, so a resumed run stays bitwise equal), whose
settings are checked before the first step on every process (:func:`check_probe`: data,
bands, class ids, features the method trains); stand-alone it is
``contrastseg probe --checkpoint ...``.

Nodata pixels of the probe's images are handled as in fine-tuning: their label is ignored,
and :func:`~contrastseg.data.loader.to_float` (features and val inference alike) turns the
NaN of float files into 0 after normalisation, the band mean pretraining fills in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.config import PretrainConfig, ProbeConfig
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.loader import to_float
from contrastseg.data.presets import apply_preset, preset_mapping
from contrastseg.data.splits import SplitOverlap
from contrastseg.data.stats import normalization_values, stored_normalization
from contrastseg.methods import get_method
from contrastseg.metrics import ConfusionMatrix, even_indices
from contrastseg.models.backbone import resnet_depth
from contrastseg.models.base import SegmentationNet
from contrastseg.models.pretrained import load_pretrained, read_state_dict
from contrastseg.models.registry import build_model, model_class
from contrastseg.train.evaluate import Segmenter, evaluate_dataset
from contrastseg.train.finetune_config import EvalConfig
from contrastseg.train.linear_fit import cache_pixels, fit_probe_head
from contrastseg.train.probe import LOAD_PARTS, check_trained, default_features, trained_parts
from contrastseg.train.runtime import modes_kept
from contrastseg.utils.configtools import ConfigError, to_dict
from contrastseg.utils.device import resolve_device

METRICS = ("miou", "overall_accuracy", "kappa", "mean_f1")


@dataclass
class ProbeResult:
    """What :func:`run_probe` measured.

    Attributes:
        metrics: the validation metrics (``miou``, ``overall_accuracy``, ``kappa``,
            ``mean_f1``, per-class lists, ...), as ``ConfusionMatrix.compute`` gives them.
        features: the probed features (``decoder``, ``encoder`` or ``backbone``).
        channels: their channels.
        stride: their output stride.
        cells: labeled pixels the head was fitted on.
        seconds: wall time of the whole probe.
        l2: the L2 strength chosen for the head.
        others: metrics of the heads on other features probed beside (``encoder``), by kind.
    """

    metrics: dict[str, Any]
    features: str
    channels: int
    stride: int
    cells: int
    seconds: float
    l2: float = 0.0
    others: dict[str, dict[str, Any]] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """``probe/<metric>`` values for the log (missing metrics as 0), and
        ``probe/<features>/<metric>`` for the features probed beside."""
        values = {f"probe/{k}": float(self.metrics.get(k) or 0.0) for k in METRICS}
        for kind, metrics in self.others.items():
            values.update({f"probe/{kind}/{k}": float(metrics.get(k) or 0.0) for k in METRICS})
        return {**values, "probe/seconds": self.seconds}

    def summary(self) -> str:
        m = self.metrics
        beside = "".join(
            f"; {kind} features: mIoU {100 * (o['miou'] or 0):.2f}, kappa {100 * (o['kappa'] or 0):.2f}"
            for kind, o in self.others.items()
        )
        return (
            f"mIoU {100 * (m['miou'] or 0):.2f}, OA {100 * (m['overall_accuracy'] or 0):.2f}, "
            f"kappa {100 * (m['kappa'] or 0):.2f} on {self.features} features "
            f"({self.channels} channels, stride {self.stride}; head fitted on {self.cells} "
            f"pixels, L2 {self.l2:g}){beside}"
        )


class ProbedNetwork(nn.Module):
    """A frozen network and a 1x1 head on the chosen features; ``forward`` gives logits at input size."""

    def __init__(self, net: SegmentationNet, head: nn.Module, features: str) -> None:
        super().__init__()
        self.net, self.head, self.features = net, head, features

    def forward_features(self, x: Tensor) -> Tensor:
        if self.features == "backbone":
            return self.net.backbone.stages(x)[-1]
        out = self.net.forward_features(x, decoder=self.features == "decoder")
        return out.decoder if self.features == "decoder" else out.encoder

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _where(config: ProbeConfig) -> str:
    """``probe.data`` and where its images are, for messages."""
    root = config.data.root
    return f"probe.data (root {root!r})" if root else "probe.data (the built-in demo scenes)"


def probe_datasets(
    config: ProbeConfig, bands: int | None = None, trained_on: str = "the pretraining data"
) -> tuple[LabeledDataset, LabeledDataset]:
    """The probe's training patches and validation images, checked against the probed network.

    Args:
        config: the probe section.
        bands: the band count of the probed network's input (None = not checked).
        trained_on: what has ``bands`` bands, for the message.

    Raises:
        ConfigError: naming the setting, its value and what was expected: a missing folder,
            an unknown preset, an empty split, images matched by both the train and the val
            patterns, another band count than ``bands``, ``probe.exclude`` ids that are not
            classes of the data.
    """
    try:
        train = LabeledDataset(config.data, "train")
        val = LabeledDataset(config.data, "val", whole_images=True)
    except SplitOverlap as err:
        resolved = apply_preset(config.data)
        lists = " and ".join(f"probe.data.{s}={getattr(resolved, s)}" for s in err.splits)
        from_preset = resolved.preset and resolved.train == preset_mapping(resolved.preset).get(
            "train"
        )
        origin = (
            f" (the train patterns of preset {resolved.preset})"
            if "train" in err.splits and resolved.train and from_preset
            else ""
        )
        raise ConfigError(
            f"{_where(config)}: image {err.key!r} matches both {lists}{origin}; the head would "
            "be scored on images it was fitted on. Give probe.data.train patterns that leave "
            "out the val images (as the fine-tuning config's data.train does)"
        ) from err
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"probe.data: {err}") from err
    if bands is not None and train.num_bands != bands:
        selected = "" if config.data.bands is None else f" (probe.data.bands={config.data.bands})"
        raise ConfigError(
            f"{_where(config)} has {train.num_bands} band(s){selected} but {trained_on} has "
            f"{bands}: the probed network takes {bands}; select {bands} bands with "
            "probe.data.bands"
        )
    outside = [c for c in config.exclude if not 0 <= c < train.num_classes]
    if outside:
        raise ConfigError(
            f"probe.exclude={config.exclude}: {outside} are not class ids of {_where(config)}, "
            f"whose {train.num_classes} classes are 0..{train.num_classes - 1} {train.classes}"
        )
    return train, val


def probe_features(config: PretrainConfig) -> str:
    """The features the online probe of a pretraining run reads.

    ``probe.features``; ``auto`` = the deepest part ``method.name`` trains (decoder for
    glcnet / local / dense, encoder for simclr / global_style).

    Raises:
        ConfigError: features behind a part the method never trains (it would stay random).
    """
    method, model = config.method.name, config.model.name
    trained = get_method(method).parts_trained(model_class(model))
    features = config.probe.features
    if features == "auto":
        features = default_features(trained, model)
    source = f"probe.features={config.probe.features} with method.name={method}"
    check_trained(features, trained, source, method, model, "probe.features")
    return features


def check_probe(
    config: PretrainConfig, bands: int
) -> tuple[str, tuple[LabeledDataset, LabeledDataset]]:
    """The online probe's features and datasets, every setting checked (before the first step).

    The run calls it on rank 0 (the one that probes) before the first step and passes a
    failure to the other processes, so a bad probe section stops all of them with the same
    message at startup, not rank 0 alone at the first probe while the others wait.

    Args:
        config: the pretraining config (``probe.every > 0``).
        bands: the band count of the pretraining data.

    Raises:
        ConfigError: see :func:`probe_features` and :func:`probe_datasets`.
    """
    features = probe_features(config)
    return features, probe_datasets(config.probe, bands, "the pretraining data")


def probe_patch_indices(count: int, max_patches: int) -> list[int]:
    """``min(count, max_patches)`` patch indices evenly spaced over ``0 .. count - 1``.

    Deterministic, first and last included: patches come from every part of the training
    split (its images are in key order), not from its first image or two.
    """
    return even_indices(count, max_patches).tolist()


def _fit_head(
    probed: ProbedNetwork,
    config: ProbeConfig,
    train_set: LabeledDataset,
    chosen: list[int],
    scale: float | None,
    mean: list[float] | None,
    std: list[float] | None,
    device: torch.device,
) -> tuple[nn.Conv2d, float, int]:
    """The probe's head on ``probed.features``: ``(head, chosen L2, pixels fitted on)``.

    With several L2 strengths, every fourth probe patch is held out and the strength whose
    head labels its pixels best (mIoU) is chosen; the head is fitted on the other patches.
    """

    def batches(indices: list[int]):
        for first in range(0, len(indices), config.batch_size):
            items = [train_set[i] for i in indices[first : first + config.batch_size]]
            images = torch.stack([image for image, _ in items]).to(device)
            labels = torch.stack([mask for _, mask in items]).to(device)
            yield to_float(images, scale, mean, std), labels

    def cache(indices: list[int]) -> tuple[Tensor, Tensor]:
        return cache_pixels(
            probed.forward_features, batches(indices), train_set.ignore_index,
            config.pixel_step, config.max_cells,
        )  # fmt: skip

    grid = list(config.l2_grid)
    held = chosen[3::4] if len(grid) > 1 and len(chosen) >= 2 else []
    fitted = [i for i in chosen if i not in set(held)]
    x, y = cache(fitted)
    if len(y) == 0:
        raise ConfigError("probe.data: the probe's training patches hold no labeled pixel")
    score = None
    if held:
        x_held, y_held = cache(held)
        classes, ignore = train_set.num_classes, train_set.ignore_index

        def score(head: nn.Conv2d) -> float:
            if len(y_held) == 0:
                return 0.0
            logits = x_held @ head.weight[:, :, 0, 0].T + head.bias
            confusion = ConfusionMatrix(classes, ignore)
            confusion.update(logits.argmax(1), y_held)
            return confusion.compute(config.exclude)["miou"] or 0.0

    else:
        grid = grid[len(grid) // 2 : len(grid) // 2 + 1]  # nothing to choose on: the middle
    fit = fit_probe_head(x, y, train_set.num_classes, grid, score, config.max_iter)
    return fit.head, fit.l2, fit.cells


@torch.no_grad()
def run_probe(
    net: SegmentationNet,
    features: str,
    config: ProbeConfig,
    datasets: tuple[LabeledDataset, LabeledDataset],
    scale: float | None,
    mean: list[float] | None,
    std: list[float] | None,
    device: torch.device,
) -> ProbeResult:
    """Fit the probe's head on the frozen ``net`` and score the validation images.

    With ``config.encoder_too`` and decoder ``features``, the encoder features are probed the
    same way beside them (``ProbeResult.others``). The network is put in eval mode and back in
    its previous mode afterwards; no random generator of the caller is used (the global ones
    are restored).
    """
    start = time.perf_counter()
    train_set, val_set = datasets
    chosen = probe_patch_indices(len(train_set), config.max_patches)
    kinds = [features] + (["encoder"] if config.encoder_too and features == "decoder" else [])
    results: dict[str, tuple[dict[str, Any], float, int]] = {}
    settings = EvalConfig(
        window=config.window, stride=config.stride, batch_size=config.batch_size, overlays=0
    )
    with modes_kept(net), torch.random.fork_rng(devices=[]):
        for kind in kinds:
            probed = ProbedNetwork(net, nn.Identity(), kind)
            head, l2, cells = _fit_head(probed, config, train_set, chosen, scale, mean, std, device)
            probed.head = head.to(device)
            segmenter = Segmenter(
                probed, None, list(val_set.classes), list(val_set.palette), None, scale, mean,
                std, device, {},
            )  # fmt: skip
            confusion = evaluate_dataset(segmenter, val_set, settings)
            results[kind] = (confusion.compute(config.exclude), l2, cells)
    metrics, l2, cells = results.pop(features)
    return ProbeResult(
        metrics,
        features,
        net.feature_channels(features),
        net.feature_stride(features),
        cells,
        time.perf_counter() - start,
        l2,
        {kind: value[0] for kind, value in results.items()},
    )


def probe_checkpoint(
    path: str | Path,
    config: PretrainConfig,
    features: str = "auto",
    device: str | torch.device = "auto",
) -> ProbeResult:
    """Score any weights file with the probe of ``config.probe`` (``contrastseg probe``).

    Args:
        path: a pretraining or fine-tuning checkpoint, an exported backbone, or a torchvision
            ResNet state dict (its depth read from its keys).
        config: gives the probe section, and the normalisation and network settings for a
            file that does not carry its own (a plain state dict).
        features: ``auto`` (the deepest part the file trained) or ``decoder`` / ``encoder`` /
            ``backbone``.
        device: where to run.

    Raises:
        ConfigError / ValueError / FileNotFoundError: an unreadable file, features the file
            did not train, labeled data of another band count.
    """
    state, payload = read_state_dict(path)
    if payload:
        model_config = dict(payload["config"]["model"])
        bands = int(payload["in_channels"])
        mean, std = stored_normalization(payload, path)
    else:
        arch = resnet_depth(state)
        if arch is None or "backbone.conv1.weight" not in state:
            raise ValueError(f"{path}: not a ResNet state dict (no conv1 / layerN.M keys)")
        model_config = {**to_dict(config.model), "arch": arch}
        bands = int(state["backbone.conv1.weight"].shape[1])
        mean, std = normalization_values(config.normalize, bands)
    name = model_config.get("name")
    method = (payload.get("config") or {}).get("method", {}).get("name") if payload else None
    trained = trained_parts(state, payload, name)
    if features == "auto":
        features = default_features(trained, name)
    check_trained(features, trained, str(path), method, name, "--features")
    datasets = probe_datasets(config.probe, bands, f"the input of {path}")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    net = build_model(model_config, bands, backbone_weights=False)
    load_pretrained(net, path, LOAD_PARTS[features])
    net.to(device)
    return run_probe(
        net, features, config.probe, datasets, config.probe.data.scale, mean, std, device
    )
