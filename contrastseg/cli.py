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
