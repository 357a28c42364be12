"""contrastseg: contrastive self-supervised pretraining of segmentation encoders for remote sensing."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: the Python API (contrastseg.api), one function per subcommand
API = ("pretrain", "finetune", "evaluate", "predict", "export", "probe")

__all__ = ["__version__", "load_pretrained", *API]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import contrastseg` (and `contrastseg --version`) does not load torch.
    if name == "load_pretrained":
        from contrastseg.models.pretrained import load_pretrained

        return load_pretrained
    if name in API or name == "api":
        import importlib

        api = importlib.import_module("contrastseg.api")  # not `from contrastseg import api`,
        return api if name == "api" else getattr(api, name)  # which would ask here again
    raise AttributeError(f"module 'contrastseg' has no attribute {name!r}")
