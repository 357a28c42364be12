"""Scoring and applying fine-tuned segmenters: ``contrastseg evaluate`` and ``contrastseg predict``.

A fine-tuning checkpoint (``format: contrastseg.finetune``, written by
:mod:`contrastseg.train.finetune`) holds everything needed to use the segmenter on new
images: the network state dict with its classifier, its architecture, the classes and
palette, the bands, scale and normalisation of the training data, and the run's config.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import Tensor

from contrastseg.config import ModelConfig, resolve_presets
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.loader import to_float
from contrastseg.data.nodata import file_nodata
from contrastseg.data.readers import GDAL_NODATA_TAG, image_size
from contrastseg.inference import ArraySink, StripSink, predict_file, sliding_window_logits
from contrastseg.metrics import ConfusionMatrix
from contrastseg.models import SegmentationNet, build_model, model_class
from contrastseg.train.checkpoint import remove_stale_tmp
from contrastseg.train.finetune_config import EvalConfig, FinetuneConfig
from contrastseg.train.report import class_palette, colorize, safe_name, write_overlay, write_report
from contrastseg.train.runtime import modes_kept, resolve_amp_dtype
from contrastseg.utils.configtools import from_dict, to_dict
from contrastseg.utils.device import resolve_device
from contrastseg.utils.weights import read_torch_file

FINETUNE_FORMAT = "contrastseg.finetune"
#: GeoTIFF tags copied from an input TIFF to its label map (pixel scale, tie points,
#: transformation, GeoKey directory and its double / ASCII parameters).
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
#: Model keys that belong to the backbone: a fine-tuning run that swaps the decoder family
#: (``model.name``) keeps them from the pretrained checkpoint, whose backbone it loads.
BACKBONE_KEYS = ("arch", "output_stride", "in_channels", "dilation_convention")
#: Model keys that only change how the network trains: a fine-tune takes them from its own
#: config, whatever the checkpoint's (dropout of the fine-tuning decoder, BN momentum).
TRAINING_KEYS = ("decoder_dropout", "bn_momentum")


def build_segmenter(
    model_config: Mapping[str, Any], num_classes: int, in_channels: int
) -> SegmentationNet:
    """The network of a model config dict (``config["model"]`` of a checkpoint), with a classifier.

    ``model_config["name"]`` picks DeepLabV3+ (also when absent: checkpoints before U-Net and
    FPN), U-Net or FPN; ``classifier_features`` what the classifier reads. No weights file is
    read (``backbone_weights`` is the caller's business).
    """
    return build_model(
        model_config,
        in_channels,
        num_classes,
        classifier_features=model_config.get("classifier_features", "decoder"),
        backbone_weights=False,
    )


def pretrained_model_config(
    checkpoint_model: Mapping[str, Any], requested: ModelConfig
) -> dict[str, Any]:
    """The model config of a network fine-tuned from a checkpoint whose model config is ``checkpoint_model``.

    The checkpoint's config with the fine-tuning config's training-only keys
    (:data:`TRAINING_KEYS`), unless ``requested.name`` (``--set model.name=unet``) names another
    network family: then the requested config with the checkpoint's backbone
    (:data:`BACKBONE_KEYS`), so that the pretrained backbone loads and the decoder starts fresh.
    """
    if requested.name is None or model_class(requested.name) is model_class(
        checkpoint_model.get("name")
    ):
        requested_keys = to_dict(requested)
        training = {k: requested_keys[k] for k in TRAINING_KEYS if k in requested_keys}
        merged = {**checkpoint_model, **training}
        dropout = merged.get("decoder_dropout")
        if merged.get("decoder_convs") == 1 and dropout is not None and dropout[1] > 0:
            # a recipe's [0.5, 0.1] meets a checkpoint pretrained with smp's one-conv decoder
            warnings.warn(
                f"model.decoder_dropout {list(dropout)}: the pretrained checkpoint's decoder has "
                "one 3x3 convolution (model.decoder_convs: 1), so the second value, after a "
                f"second convolution, is not used: fine-tuning with [{dropout[0]}, 0.0]",
                stacklevel=2,
            )
            merged["decoder_dropout"] = [dropout[0], 0.0]
        return merged
    backbone = {k: checkpoint_model[k] for k in BACKBONE_KEYS if k in checkpoint_model}
    return {**to_dict(requested), **backbone}


@dataclass
class Segmenter:
    """A fine-tuned model with what it needs to read new images.

    Attributes:
        model: the network (eval mode, on ``device``).
        config: the fine-tuning config it was trained with.
        classes: class names in id order.
        palette: one ``'#RRGGBB'`` per class (may be empty).
        bands: band indices read from image files (None = all).
        scale: value mapped to 1.0 (None = the dtype's range).
        mean: per-band mean after scaling, or None.
        std: per-band std after scaling, or None.
        device: where the model runs.
        payload: the checkpoint dict (metrics, epoch, ...).
    """

    model: SegmentationNet
    config: FinetuneConfig
    classes: list[str]
    palette: list[str]
    bands: list[int] | None
    scale: float | None
    mean: list[float] | None
    std: list[float] | None
    device: torch.device
    payload: dict[str, Any]

    def prepare(self, image: Tensor | np.ndarray) -> Tensor:
        """An integer image ``(C, h, w)`` or batch ``(B, C, h, w)`` -> normalised float on the device."""
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        return to_float(image.to(self.device), self.scale, self.mean, self.std)

    def predictor(self, amp: str = "off") -> Callable[[Tensor], Tensor]:
        """``(n, C, h, w) -> (n, K, h, w)`` logits, under autocast when ``amp`` asks for it."""
        dtype = resolve_amp_dtype(amp, self.device, inference=True)

        def predict(x: Tensor) -> Tensor:
            context = (
                torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            )
            with context:
                return self.model(x)

        return predict


def load_finetune_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a fine-tuning checkpoint (``weights_only=True``) onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a fine-tuning checkpoint; a pretraining checkpoint gets
            a message saying to fine-tune it first (it has no classifier).
    """
    payload = read_torch_file(path, "weights file")
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == "contrastseg.pretrain":
        raise ValueError(
            f"{path} is a pretraining checkpoint: it has no classifier, so it cannot segment. "
            f"Fine-tune it first (contrastseg finetune --pretrained {path}) and evaluate the "
            "fine-tuned checkpoint (runs/<name>/best.pt)"
        )
    if fmt != FINETUNE_FORMAT:
        raise ValueError(f"{path} is not a contrastseg fine-tuning checkpoint (format={fmt!r})")
    missing = [k for k in _FINETUNE_KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"{path} is a damaged or foreign fine-tuning checkpoint: it lacks {', '.join(missing)}"
        )
    return payload


#: What :func:`load_segmenter` reads from a fine-tuning checkpoint.
_FINETUNE_KEYS = ("config", "model_config", "num_classes", "in_channels", "model", "classes")


def load_segmenter(
    path: str | os.PathLike[str], device: str | torch.device = "auto", overrides: Sequence[str] = ()
) -> Segmenter:
    """Load a fine-tuning checkpoint as a ready :class:`Segmenter`.

    Args:
        path: the checkpoint (``best.pt`` of a fine-tuning run, or a step checkpoint).
        device: ``auto``, ``cpu``, ``cuda``, ...
        overrides: ``section.key=value`` strings applied to the stored config (e.g.
            ``data.root=/new/place``, ``eval.window=1024``).
    """
    payload = load_finetune_checkpoint(path)
    data = resolve_presets(dict(payload["config"]), FinetuneConfig, overrides, f"{path}")
    config = from_dict(FinetuneConfig, data, source=f"{path} (stored config)")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model = build_segmenter(payload["model_config"], payload["num_classes"], payload["in_channels"])
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    norm = payload.get("normalize", {})
    return Segmenter(
        model, config, list(payload["classes"]), list(payload.get("palette", [])),
        payload.get("bands"), payload.get("scale"), norm.get("mean"), norm.get("std"), device, payload,
    )  # fmt: skip


@torch.no_grad()
def evaluate_dataset(
    segmenter: Segmenter,
    dataset: LabeledDataset,
    settings: EvalConfig,
    overlay_dir: str | os.PathLike[str] | None = None,
    amp: str = "off",
) -> ConfusionMatrix:
    """Sliding-window predictions over every whole image of ``dataset``, into a confusion matrix.

    Args:
        segmenter: the model and its input preparation.
        dataset: whole images (``whole_images=True``) with masks.
        settings: window, stride, batch of windows, flip TTA, number of overlays.
        overlay_dir: where ``image | truth | prediction`` PNGs of the first
            ``settings.overlays`` images go; None = none.
        amp: autocast setting for the forward passes.

    Raises:
        ValueError: no pixel was scored (every mask pixel ignored or nodata).
    """
    predict = segmenter.predictor(amp)
    confusion = ConfusionMatrix(len(segmenter.classes), dataset.ignore_index, segmenter.device)
    palette = class_palette(segmenter.palette, len(segmenter.classes))
    with modes_kept(segmenter.model):
        for i in range(len(dataset)):
            image, mask = dataset[i]
            logits = sliding_window_logits(
                predict, segmenter.prepare(image[None]), settings.window, settings.stride,
                settings.batch_size, settings.flip,
            )  # fmt: skip
            prediction = logits.argmax(1)
            confusion.update(prediction, mask[None].to(segmenter.device))
            if overlay_dir is not None and i < settings.overlays:
                write_overlay(
                    Path(overlay_dir) / f"{safe_name(dataset.patch_ids[i])}.png",
                    image.numpy(), mask.numpy(), prediction[0].cpu().numpy(), palette,
                )  # fmt: skip
    if int(confusion.matrix.sum()) == 0:
        raise ValueError(
            f"the {len(dataset)} image(s) of split {dataset.split!r} scored 0 pixels: every mask "
            f"pixel is ignore_index {dataset.ignore_index} or nodata, so there is no score (a "
            "mIoU of 0 here would be taken for one)"
        )
    return confusion


def run_evaluate(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    split: Literal["train", "val", "test"] = "test",
    device: str = "auto",
) -> dict[str, Any]:
    """``contrastseg evaluate``: score a fine-tuned checkpoint on whole images of one split.

    Args:
        checkpoint: a fine-tuning checkpoint.
        out_dir: report folder; None = ``<checkpoint folder>/eval-<split>``.
        overrides: ``section.key=value`` changes of the stored config, e.g. ``data.root=...``
            (other data), ``eval.window=1024``, ``eval.flip=true``, ``eval.exclude=[5]``.
        split: which split of the data to score.
        device: ``auto``, ``cpu``, ``cuda``, ...

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        ValueError / FileNotFoundError: a pretraining or unreadable checkpoint, bad overrides,
            data whose classes differ from the checkpoint's.
    """
    segmenter = load_segmenter(checkpoint, device, overrides)
    config = segmenter.config
    dataset = LabeledDataset(config.data, split, whole_images=True)
    if dataset.num_classes != len(segmenter.classes):
        raise ValueError(
            f"the data has {dataset.num_classes} classes {dataset.classes} but {checkpoint} was "
            f"trained for {len(segmenter.classes)} {segmenter.classes}"
        )
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent / f"eval-{split}"
    confusion = evaluate_dataset(
        segmenter, dataset, config.eval, out / "overlays", config.train.amp
    )
    return write_report(
        confusion, segmenter.classes, out, config.eval.exclude,
        {"checkpoint": str(checkpoint), "split": split, "images": len(dataset),
         "window": config.eval.window, "stride": config.eval.stride, "flip": config.eval.flip},
    )  # fmt: skip


def geotiff_tags(path: str | os.PathLike[str]) -> list[tuple]:
    """GeoTIFF tags of a TIFF's first page as tifffile ``extratags`` (empty for other files)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return []
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        out = []
        for code in GEOTIFF_TAGS:
            tag = tags.get(code)
            if tag is not None:
                count = 0 if isinstance(tag.value, str) else tag.count
                out.append((code, tag.dtype, count, tag.value, True))
        return out


def run_predict(
    checkpoint: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    fmt: Literal["auto", "png", "tif"] = "auto",
    overrides: Sequence[str] = (),
    device: str = "auto",
    preview: bool = True,
    preview_size: int = 2048,
    overwrite: bool = False,
) -> list[Path]:
    """``contrastseg predict``: label maps (and colour previews) of image files of any size.

    Images are streamed strip by strip (:func:`~contrastseg.inference.predict_file`); GeoTIFF
    label maps are written row by row into the file (:class:`TiffRowSink`, plain writes, no
    memory map), so neither the image nor its label map needs to fit in memory. PNG label
    maps are assembled in memory (one byte per pixel). Every file is written under a
    temporary name in the output folder and renamed when complete; temporary files that a
    killed run left there are removed first.

    Args:
        checkpoint: a fine-tuning checkpoint.
        inputs: image files (bands, scale and normalisation as in training).
        out_dir: output folder: ``<name>_labels.png|tif`` (class ids) and ``<name>_preview.png``.
        fmt: ``tif`` (GeoTIFF, georeferencing tags of a TIFF input copied), ``png`` (index PNG),
            ``auto`` = ``tif`` for TIFF inputs, else ``png``.
        overrides: ``eval.window=...``, ``eval.flip=true``, ... (see :func:`run_evaluate`).
        device: ``auto``, ``cpu``, ``cuda``, ...
        preview: also write a colourised preview (downsampled to ``preview_size``).
        overwrite: replace label maps and previews that exist (otherwise every output is
            checked first and an existing one is refused before anything is predicted).

    Returns:
        The label map paths, in input order.

    Raises:
        ValueError / FileNotFoundError: an unreadable input, a band count the model does not
            take, NaN pixels without a nodata value ...; the message names the input, and no
            output file of that input is left behind (nor is an older one replaced).
    """
    segmenter = load_segmenter(checkpoint, device, overrides)
    palette = class_palette(segmenter.palette, len(segmenter.classes))
    # the largest value of the dtype is never a class id: it marks nodata pixels
    dtype = np.uint8 if len(segmenter.classes) < 256 else np.uint16
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot create the output folder: {err.strerror}") from err
    remove_stale_tmp(out)  # the temporary files of a killed predict into this folder
    written: list[Path] = []
    used: set[str] = set()
    planned = []
    for source in inputs:
        name = safe_name(Path(source).stem)
        while name in used:
            name += "_"
        used.add(name)
        is_tiff = Path(source).suffix.lower() in (".tif", ".tiff")
        kind = ("tif" if is_tiff else "png") if fmt == "auto" else fmt
        target = out / f"{name}_labels.{kind}"
        preview_path = out / f"{name}_preview.png" if preview else None
        planned.append((source, target, preview_path))
    existing = [p for _, *paths in planned for p in paths if p is not None and p.exists()]
    if existing and not overwrite:  # checked before anything is predicted
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise ValueError(
            f"{len(existing)} output file(s) already exist in {out} ({shown}); pass "
            "--overwrite to replace them, or choose another --out"
        )
    for source, target, preview_path in planned:
        try:
            _predict_one(segmenter, source, target, dtype, palette, preview_path, preview_size)
        except (ValueError, OSError) as err:  # OSError covers FileNotFoundError
            if str(source) in str(err):
                raise
            raise ValueError(f"{source}: {err}") from err  # every error names the input
        written.append(target)
    return written


def _predict_one(
    segmenter: Segmenter,
    source: str | os.PathLike[str],
    target: Path,
    dtype: type[np.integer],
    palette: Any,
    preview_path: Path | None,
    preview_size: int,
) -> None:
    """Label map (and preview) of one image, under temporary names renamed on success.

    A failure (wrong band count, unreadable strip, NaN pixels ...) therefore never leaves a
    result-looking file behind, and an older result under the final name stays intact.
    """
    size = image_size(source)
    expected = int(segmenter.payload.get("in_channels") or size.bands)
    bands = segmenter.config.data.bands
    given = size.bands if bands is None else len(bands)  # band indices: the reader checks them
    if given != expected:
        raise ValueError(
            f"{source} has {size.bands} band(s)"
            + ("" if bands is None else f" of which data.bands={bands} selects {given}")
            + f" but the model takes {expected}; select them with --set data.bands=[...]"
        )
    settings = segmenter.config.eval
    nodata = file_nodata(str(source), segmenter.config.data.nodata)
    nodata_label = int(np.iinfo(dtype).max)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_preview = (
        None
        if preview_path is None
        else preview_path.with_name(f".{preview_path.name}.{os.getpid()}.tmp")
    )
    step = max(1, -(-max(size.height, size.width) // preview_size))
    sink: ArraySink | TiffRowSink | None = None
    try:
        if target.suffix == ".tif":
            tags = geotiff_tags(source)
            if nodata is not None:  # the label map keeps the input's nodata pixels as nodata
                tags = [*tags, (GDAL_NODATA_TAG, "s", 0, str(nodata_label), False)]
            with _writing(target):
                sink = TiffRowSink(tmp, size.height, size.width, dtype, tags, step, target)
        else:
            sink = ArraySink(np.zeros((size.height, size.width), dtype=dtype))
        predict_file(
            segmenter.predictor(segmenter.config.train.amp), source, sink,
            settings.window, settings.stride, settings.batch_size, settings.flip,
            segmenter.config.data.bands, segmenter.prepare, segmenter.device,
            nodata, nodata_label,
        )  # fmt: skip
        with _writing(target):
            if isinstance(sink, TiffRowSink):
                sink.close()
                small = sink.preview
            else:
                Image.fromarray(sink.array).save(tmp, format="PNG")
                small = sink.array[::step, ::step]
        if preview_path is not None and tmp_preview is not None:
            with _writing(preview_path):
                Image.fromarray(colorize(small, palette)).save(tmp_preview, format="PNG")
        with _writing(target):
            os.replace(tmp, target)
        if preview_path is not None and tmp_preview is not None:
            with _writing(preview_path):
                os.replace(tmp_preview, preview_path)
    finally:
        if isinstance(sink, TiffRowSink):
            sink.close(flush=False)
        tmp.unlink(missing_ok=True)
        if tmp_preview is not None:
            tmp_preview.unlink(missing_ok=True)


class OutputNotWritten(ValueError):
    """An output file could not be written (full disk, read-only folder ...); names the file."""


def _not_written(target: Path, err: OSError) -> OutputNotWritten:
    kept = "; the older file there is kept" if target.exists() else ""
    return OutputNotWritten(f"cannot write {target}: {err.strerror or err}{kept}")


@contextlib.contextmanager
def _writing(target: Path):
    """Turn an ``OSError`` of writing ``target`` (or its temporary file) into one that names it."""
    try:
        yield
    except OSError as err:
        raise _not_written(target, err) from err


class TiffRowSink(StripSink):
    """Label rows written into an uncompressed (Geo)TIFF with plain file writes, no memory map.

    The file is laid out as ``tifffile.memmap`` lays it out (one contiguous image after the
    tags), but the rows go in with ``write``: a full disk is an ``OSError`` naming the file
    rather than a SIGBUS of a memory-mapped page, and the data is fsynced before it counts.
    Every ``step``-th row and column is kept for the preview.
    """

    def __init__(
        self, path: Path, height: int, width: int, dtype: Any, tags: list, step: int, name: Path
    ) -> None:
        self.path, self.width, self.dtype, self.step = path, width, np.dtype(dtype), step
        self.name = name  # the final file, named in messages
        result = tifffile.imwrite(
            path, shape=(height, width), dtype=self.dtype, photometric="minisblack",
            extratags=tags, returnoffset=True, data=None,
        )  # fmt: skip
        if result is None:  # pragma: no cover - an uncompressed single page always has one
            raise ValueError(f"{path}: tifffile wrote no contiguous image")
        self.offset = int(result[0])
        self.handle: Any = open(path, "r+b")  # closed by close()
        self.rows: list[np.ndarray] = []

    def write(self, row: int, labels: np.ndarray) -> None:
        data = np.ascontiguousarray(labels, dtype=self.dtype.newbyteorder("<"))
        with _writing(self.name):
            self.handle.seek(self.offset + row * self.width * self.dtype.itemsize)
            self.handle.write(data.tobytes())
        first = -row % self.step  # the first kept row of this strip
        self.rows.extend(np.array(r[:: self.step]) for r in data[first :: self.step])

    @property
    def preview(self) -> np.ndarray:
        """Every ``step``-th row and column of the label map."""
        return np.stack(self.rows) if self.rows else np.zeros((0, 0), self.dtype)

    def close(self, flush: bool = True) -> None:
        """Flush and fsync (errors of a full disk surface here), then close; idempotent."""
        if self.handle.closed:
            return
        try:
            if flush:
                self.handle.flush()
                os.fsync(self.handle.fileno())
        finally:
            self.handle.close()
