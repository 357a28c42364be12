"""The ``contrastseg`` command line.

Each subcommand is a pair of functions side by side: ``_add_<command>`` declares its parser
(arguments, help, its handler) and ``_cmd_<command>`` handles it; :func:`build_parser` only
assembles them, and :func:`main` turns every expected error into one line.
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from collections.abc import Callable, Sequence

from contrastseg import __version__

Handler = Callable[[argparse.Namespace], int]


def _add_info(sub: argparse._SubParsersAction) -> None:
    """The ``info`` subcommand's arguments (versions and device)."""
    info = sub.add_parser(
        "info", help="print versions, the device a run would use and thread count"
    )
    info.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from contrastseg.utils.device import default_device, describe_device

    try:
        import kornia

        kornia_version = kornia.__version__
    except ImportError:  # pragma: no cover - kornia is a dependency
        kornia_version = "not installed"
    device = default_device()
    rows = [
        ("contrastseg", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("kornia", kornia_version),
        ("cuda available", str(torch.cuda.is_available())),
        ("cuda devices", str(torch.cuda.device_count())),
        ("device (auto)", describe_device(device)),
        ("bf16 supported", str(device.type == "cuda" and torch.cuda.is_bf16_supported())),
        ("torch threads", str(torch.get_num_threads())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


#: The longest error message printed (a YAML anchor bomb can make one of many megabytes).
MAX_MESSAGE = 2000
#: ``--debug``: print the traceback above the one-line message.
_DEBUG = False


def _error(message: str, code: int = 2) -> int:
    """Print one ``contrastseg: error:`` line (capped); call it inside the ``except`` block."""
    if _DEBUG and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    print(f"contrastseg: error: {one_line(message)}", file=sys.stderr)
    return code


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` on one line, at most ``limit`` characters (the cut says how much is left)."""
    text = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    if len(text) > limit:
        rest = len(text) - limit
        text = text[:limit] + f"... ({rest} more characters; --debug shows the traceback)"
    return text


def describe_error(err: BaseException) -> str:
    """An expected error as one message naming the path or key (see :func:`main`)."""
    if isinstance(err, OSError) and err.filename is not None:
        what = err.strerror or type(err).__name__
        other = f" -> {err.filename2}" if err.filename2 is not None else ""
        return f"{err.filename}{other}: {what}"
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) or not isinstance(err, ValueError):
        return f"{type(err).__name__}: {text}"
    return text


def _literal(value: str) -> str:
    """A flag value as a YAML string literal (a name like 2024 or a path with ' #' stays text)."""
    import json

    return json.dumps(str(value))


def _load_config(args: argparse.Namespace):
    """The pretraining config of ``--config``, ``--set``, ``--name`` and ``--resume``."""
    from contrastseg.api import pretrain_config

    overrides = list(args.set or [])
    if getattr(args, "name", None):
        overrides.append(f"run.name={_literal(args.name)}")
    if getattr(args, "resume", None):
        overrides.append(f"run.resume={_literal(args.resume)}")
    return pretrain_config(args.config, overrides=overrides)


def _add_config_arguments(
    parser: argparse.ArgumentParser, default: str = "configs/quickstart.yaml"
) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML config (default: {default}, the built-in demo scenes)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax), e.g. --set train.batch_size=64; repeatable",
    )


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    """The ``pretrain`` subcommand's arguments (pretraining)."""
    pretrain = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining (SimCLR / GLCNet); no --config runs the quickstart",
        description=(
            "Pretrain a DeepLabV3+ encoder on unlabeled imagery. Without --config it runs "
            "configs/quickstart.yaml on the built-in synthetic demo scenes. Multi-GPU: "
            "torchrun --nproc_per_node=N -m contrastseg.cli pretrain --config FILE"
        ),
    )
    _add_config_arguments(pretrain)
    pretrain.add_argument("--name", help="run name (folder under run.root)")
    pretrain.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue the run from its newest checkpoint (or from CHECKPOINT)",
    )
    pretrain.set_defaults(handler=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from contrastseg.api import pretrain
    from contrastseg.train.loop import TrainingDiverged

    try:
        result = pretrain(_load_config(args))
    except TrainingDiverged as err:
        return _error(str(err), 1)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        return _error("interrupted; the newest checkpoint is intact (resume with --resume)", 130)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _read_preview_images(paths: Sequence[str], patterns: Sequence[str], count: int, patch: int):
    """Up to ``count`` images as [0, 1] float tensors, each its central ``patch`` window."""
    import numpy as np
    import torch

    from contrastseg.data import find_images, image_size, read_image
    from contrastseg.data.loader import dtype_scale

    images = []
    for path in find_images(paths, patterns)[:count]:
        height, width, _ = image_size(path)
        h, w = min(patch, height), min(patch, width)
        array = read_image(path, window=((height - h) // 2, (width - w) // 2, h, w))
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        images.append(tensor.float() / dtype_scale(tensor.dtype))
    return images


def _add_views(sub: argparse._SubParsersAction) -> None:
    """The ``views`` subcommand's arguments (the views preview)."""
    views = sub.add_parser(
        "views",
        help="write a PNG of original / view 1 / view 2 with matched regions",
        description=(
            "Check the augmentations by eye: one row per image with the original, view 1 and "
            "view 2, each matched region pair outlined in the same colour in both views."
        ),
    )
    _add_config_arguments(views)
    views.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="image files or folders (default: the config's data, e.g. the demo scenes)",
    )
    views.add_argument("--count", type=int, default=4, help="number of images (default 4)")
    views.add_argument("--seed", type=int, default=0, help="seed of the views (default 0)")
    views.add_argument("--out", default="views.png", help="PNG to write (default views.png)")
    views.set_defaults(handler=_cmd_views)


def _cmd_views(args: argparse.Namespace) -> int:
    import torch

    from contrastseg.augment.preview import describe_views, preview_views
    from contrastseg.data import UnlabeledDataset

    try:
        config = _load_config(args)
        if args.images:
            images = _read_preview_images(
                args.images, config.data.patterns, args.count, config.data.patch_size
            )
        else:
            from contrastseg.data.loader import to_float

            data = UnlabeledDataset(config.data)
            images = [
                to_float(torch.from_numpy(data.read(i).copy()), config.data.scale)
                for i in range(min(args.count, len(data)))
            ]
        # a method without regions still shows where regions would be matched
        method = config.method
        path = preview_views(
            images,
            args.out,
            config=config.views,
            num_regions=getattr(method, "num_regions", 4),
            region_size=getattr(method, "region_size", min(48, config.views.size)),
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print("views: " + "; ".join(describe_views(config.views)))
    print(f"wrote {path}")
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    """The ``stats`` subcommand's arguments (band statistics)."""
    stats = sub.add_parser(
        "stats",
        help="per-band mean and std of a dataset, printed and written as YAML",
        description=(
            "Per-band mean and standard deviation (in [0, 1]-scaled units) over image files, "
            "streamed over a random sample of windows; the YAML goes into normalize.stats_file."
        ),
    )
    stats.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    stats.add_argument("data", nargs="*", help="folders or image files (none: the demo scenes)")
    stats.add_argument("--out", metavar="FILE", help="YAML file to write")
    stats.add_argument("--bands", type=int, nargs="+", help="band indices to use, in order")
    stats.add_argument(
        "--max-samples", type=int, default=1000, help="windows sampled (0 = every pixel)"
    )
    stats.add_argument("--window-size", type=int, default=512, help="window side in pixels")
    stats.add_argument("--scale", type=float, help="value mapped to 1.0 (default: dtype range)")
    stats.add_argument("--seed", type=int, default=0, help="seed of the window sample")
    stats.add_argument("--exclude", nargs="+", metavar="PATTERN", help="paths to leave out")
    stats.add_argument(
        "--nodata", type=float, help="value of missing pixels (default: each GeoTIFF's tag)"
    )
    stats.set_defaults(handler=_cmd_stats)


def _cmd_stats(args: argparse.Namespace) -> int:
    from contrastseg.data import run_stats_command

    try:
        return run_stats_command(
            args.data,
            args.out,
            args.bands,
            None if args.max_samples == 0 else args.max_samples,
            args.window_size,
            args.scale,
            args.seed,
            args.exclude or (),
            args.nodata,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    """The ``finetune`` subcommand's arguments (fine-tuning)."""
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune or linear-probe a DeepLabV3+ on labeled data (a label fraction)",
        description=(
            "Train a segmenter on a labeled dataset (a preset or folders) from a pretraining "
            "checkpoint or from random weights; the model is selected on the val split and "
            "scored once on the test split. Without --config: configs/finetune_demo.yaml."
        ),
    )
    _add_config_arguments(finetune, "configs/finetune_demo.yaml")
    finetune.add_argument(
        "--pretrained",
        metavar="CKPT",
        help="pretraining checkpoint, or a pretraining run folder (its newest checkpoint)",
    )
    finetune.add_argument(
        "--parts",
        choices=["auto", "backbone", "backbone+aspp", "encoder", "all"],
        help="what to load from --pretrained (default auto: the encoder, i.e. backbone+aspp for "
        "DeepLabV3+ and the backbone for U-Net / FPN; in linear mode every part in front of "
        "the probed features)",
    )
    finetune.add_argument(
        "--decoder",
        help="the segmentation network, any model.name (docs/models.md; default: the "
        "pretrained checkpoint's; an unknown name is refused with the close matches); "
        "another one than the checkpoint's keeps its backbone and starts the decoder fresh",
    )
    finetune.add_argument(
        "--mode",
        choices=["linear", "decoder", "finetune", "lp-ft"],
        help="linear probe (1x1 head solved on frozen features), frozen backbone, everything, "
        "or lp-ft (the probe's head first, then everything)",
    )
    finetune.add_argument(
        "--features",
        choices=["auto", "decoder", "encoder", "backbone"],
        help="linear mode: the frozen features the head reads (default auto: the deepest part "
        "the checkpoint's method trained)",
    )
    finetune.add_argument("--name", help="run name (folder under run.root)")
    finetune.add_argument(
        "--resume", nargs="?", const="auto", metavar="CHECKPOINT", help="continue the run"
    )
    finetune.set_defaults(handler=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from contrastseg.api import finetune
    from contrastseg.train.loop import TrainingDiverged

    overrides = list(args.set or [])
    for key, value in (
        ("pretrained.parts", args.parts),
        ("model.name", args.decoder),
        ("mode", args.mode),
        ("linear.features", args.features),
        ("run.name", args.name),
        ("run.resume", args.resume),
    ):
        if value:
            overrides.append(f"{key}={_literal(value)}")
    try:
        result = finetune(args.config, pretrained=args.pretrained, overrides=overrides)
    except TrainingDiverged as err:
        return _error(str(err), 1)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch})")
    if result.test_metrics is not None:
        print(f"test report: {result.run_dir / 'test'}")
    return 0


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and sliding-window arguments of ``evaluate`` and ``predict``."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="fine-tuning checkpoint (best.pt), or a fine-tuning run folder (its best.pt)",
    )
    parser.add_argument("--window", type=int, help="sliding-window side in pixels")
    parser.add_argument("--stride", type=int, help="sliding-window step in pixels")
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a stored setting"
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand's arguments (evaluation)."""
    evaluate = sub.add_parser(
        "evaluate",
        help="score a fine-tuned checkpoint on whole images (sliding window): OA, mIoU, F1, kappa",
        description=(
            "Sliding-window inference over the whole images of a split; writes metrics.json, "
            "metrics.txt, a confusion-matrix image and prediction overlays."
        ),
    )
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report of an earlier evaluation in the --out folder",
    )
    _add_inference_arguments(evaluate)
    evaluate.add_argument("--split", choices=["test", "val", "train"], default="test")
    evaluate.add_argument("--data-root", help="evaluate on this dataset folder instead")
    evaluate.add_argument("--out", help="report folder (default: next to the checkpoint)")
    evaluate.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from contrastseg.api import evaluate

    try:
        result = evaluate(
            args.checkpoint, split=args.split, out=args.out, data_root=args.data_root,
            window=args.window, stride=args.stride, flip=args.flip, overrides=args.set or [],
            device=args.device, overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print((result.report_dir / "metrics.txt").read_text(), end="")
    print(f"report: {result.report_dir}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` subcommand's arguments (prediction)."""
    predict = sub.add_parser(
        "predict",
        help="label maps (index PNG or GeoTIFF) and colour previews for images of any size",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace label maps and previews that exist in --out",
    )
    _add_inference_arguments(predict)
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument(
        "--format",
        choices=["auto", "png", "tif"],
        default="auto",
        help="label map format (auto: GeoTIFF for TIFF inputs, keeping georeferencing tags)",
    )
    predict.add_argument("--no-preview", action="store_true", help="skip the colour previews")
    predict.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from contrastseg.api import predict

    try:
        written = predict(
            args.checkpoint, args.inputs, args.out, format=args.format, window=args.window,
            stride=args.stride, flip=args.flip, overrides=args.set or [], device=args.device,
            preview=not args.no_preview, overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    """The ``export`` subcommand's arguments (weights export)."""
    export = sub.add_parser(
        "export",
        help="write the backbone in torchvision key names (or the encoder / all weights), or a "
        "fine-tuned segmenter as ONNX",
    )
    export.add_argument("checkpoint", help="pretraining or fine-tuning checkpoint, or a run folder")
    export.add_argument(
        "--format",
        choices=["torch", "onnx"],
        default="torch",
        help="torch: a state dict (--part); onnx: the whole fine-tuned segmenter for deployment, "
        "any input size, bands and normalisation in its metadata (needs the [onnx] extra)",
    )
    export.add_argument("--out", required=True, help="file to write (never the input itself)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.add_argument(
        "--part",
        choices=["backbone", "encoder", "all"],
        default="backbone",
        help="backbone: torchvision ResNet keys; encoder: backbone + ASPP; all: every tensor",
    )
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from contrastseg.api import export

    try:
        path = export(args.checkpoint, args.out, part=args.part, format=args.format,
                      overwrite=args.overwrite)  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as err:
        return _error(str(err))
    print(f"wrote {path} ({'onnx segmenter' if args.format == 'onnx' else args.part})")
    return 0


def _add_probe(sub: argparse._SubParsersAction) -> None:
    """The ``probe`` subcommand's arguments (the segmentation probe)."""
    probe = sub.add_parser(
        "probe",
        help="score a checkpoint with the segmentation probe (linear head on frozen features)",
        description=(
            "Fit a linear per-pixel classifier on the frozen features of any checkpoint (a "
            "pretraining or fine-tuning checkpoint, a run folder, an exported backbone or a "
            "torchvision ResNet file) with the labeled training patches of the config's probe "
            "section, and score its val images (mIoU, OA, kappa). The same probe runs during "
            "pretraining with probe.every > 0. Without --config: configs/quickstart.yaml "
            "(the demo scenes)."
        ),
    )
    probe.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_config_arguments(probe)
    probe.add_argument(
        "--checkpoint", required=True, help="weights file, or a run folder (its newest checkpoint)"
    )
    probe.add_argument(
        "--features",
        choices=["auto", "decoder", "encoder", "backbone"],
        default="auto",
        help="features probed (default auto: the deepest part the file trained)",
    )
    probe.add_argument("--out", help="also write the result as JSON here")
    probe.set_defaults(handler=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from contrastseg.api import newest_checkpoint, probe

    try:
        path = newest_checkpoint(args.checkpoint)
        result = probe(path, _load_config(args), features=args.features, out=args.out,
                       overwrite=args.overwrite)  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print(f"{path}: {result.summary()}; {result.seconds:.1f} s")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    """The ``config`` subcommand's arguments (the resolved config)."""
    config = sub.add_parser(
        "config",
        help="print the resolved pretraining config (or the reference of every key)",
        description=(
            "Print the config a run would use, after the file and the --set overrides, as "
            "YAML; with --reference, the table of every key, its type, default and meaning."
        ),
    )
    _add_config_arguments(config)
    config.add_argument(
        "--reference", action="store_true", help="print the configuration reference (Markdown)"
    )
    config.set_defaults(handler=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from contrastseg.config import PretrainConfig
    from contrastseg.utils.configtools import config_reference_markdown, to_dict

    if args.reference:
        print(config_reference_markdown(PretrainConfig), end="")
        return 0
    try:
        config = _load_config(args)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="contrastseg",
        description=(
            "Self-supervised contrastive pretraining (SimCLR, GLCNet) of semantic-segmentation "
            "encoders on unlabeled remote-sensing imagery."
        ),
    )
    parser.add_argument("--version", action="version", version=f"contrastseg {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not only its line"
    )
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[debug], **k)  # type: ignore[method-assign]
    for add in (
        _add_info, _add_pretrain, _add_views, _add_finetune, _add_evaluate, _add_predict,
        _add_export, _add_probe, _add_config, _add_stats,
    ):  # fmt: skip
        add(sub)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors a user's files, settings or machine cause: one line each, no traceback."""
    import re

    import yaml
    from PIL import Image

    return (OSError, ValueError, re.error, yaml.YAMLError, Image.DecompressionBombError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastseg`` console script.

    Every expected error (a missing or unwritable file, a full disk, a bad setting, an
    unreadable image or checkpoint ...) ends as one ``contrastseg: error:`` line naming the
    path or key, exit status 2 (1 for OS errors); ``--debug`` adds the traceback.
    """
    global _DEBUG
    parser = build_parser()
    args = parser.parse_args(argv)
    _DEBUG = bool(getattr(args, "debug", False))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        commands = ", ".join(sorted(_commands(parser)))
        return _error(f"no command given: choose one of {commands} (contrastseg --help)")
    # our warnings (a setting ignored, a file skipped) are messages to the user: one line,
    # without the source line Python adds for developers
    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return handler(args)
    except _expected_errors() as err:
        return _error(describe_error(err), 1 if isinstance(err, OSError) else 2)
    finally:
        warnings.formatwarning = previous
        _DEBUG = False


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
