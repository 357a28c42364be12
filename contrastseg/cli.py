"""The ``contrastseg`` command line."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence

from contrastseg import __version__

Handler = Callable[[argparse.Namespace], int]


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


def _error(message: str, code: int = 2) -> int:
    print(f"contrastseg: error: {message}", file=sys.stderr)
    return code


def _load_config(args: argparse.Namespace):
    from contrastseg.config import load_pretrain_config

    overrides = list(args.set or [])
    if getattr(args, "name", None):
        overrides.append(f"run.name={args.name}")
    if getattr(args, "resume", None):
        overrides.append(f"run.resume={args.resume}")
    return load_pretrain_config(args.config, overrides)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from contrastseg.train.pretrain import TrainingDiverged, run_pretrain

    try:
        config = _load_config(args)
        result = run_pretrain(config)
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


def _cmd_views(args: argparse.Namespace) -> int:
    import torch

    from contrastseg.augment.preview import preview_views
    from contrastseg.data import UnlabeledDataset

    try:
        config = _load_config(args)
        if args.images:
            images = _read_preview_images(
                args.images, config.data.patterns, args.count, config.data.patch_size
            )
        else:
            data = UnlabeledDataset(config.data)
            images = [
                torch.from_numpy(data.read(i).copy()).float() / 255.0
                for i in range(min(args.count, len(data)))
            ]
        method = config.method
        path = preview_views(
            images,
            args.out,
            config=config.views,
            num_regions=method.num_regions,
            region_size=method.region_size,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    print(f"wrote {path}")
    return 0


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
        )
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))


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


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (default: configs/quickstart.yaml, the built-in demo scenes)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax), e.g. --set train.batch_size=64; repeatable",
    )


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info", help="print versions, the device a run would use and thread count"
    )
    info.set_defaults(handler=_cmd_info)

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

    stats = sub.add_parser(
        "stats",
        help="per-band mean and std of a dataset, printed and written as YAML",
        description=(
            "Per-band mean and standard deviation (in [0, 1]-scaled units) over image files, "
            "streamed over a random sample of windows; the YAML goes into normalize.stats_file."
        ),
    )
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
    stats.set_defaults(handler=_cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
