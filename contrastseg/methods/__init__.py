"""Self-supervised methods, one file each, found by name (``method.name``).

============== ======================================================== =================
name           what is contrasted                                       trains features
============== ======================================================== =================
simclr         mean-pooled encoder features of the two views            encoder
global_style   style vectors (channel mean, variance) of the encoder    encoder
local          decoder features pooled over matched regions             encoder, decoder
glcnet         ``lam * global_style + (1 - lam) * local``               encoder, decoder
dense          every matched decoder cell (exact correspondences)       encoder, decoder
============== ======================================================== =================

Each network maps the trained features to its parts (DeepLabV3+: ``encoder`` = backbone +
ASPP; U-Net: backbone). A new method is one file here: a :class:`MethodConfig` subclass with its keys, a
:class:`Method` subclass decorated with :func:`register_method`, and an import below.
"""

from contrastseg.methods.base import (
    DEFAULT_METHOD,
    Method,
    MethodConfig,
    RegionsConfig,
    available_methods,
    build_method,
    get_method,
    method_config,
    register_method,
)
from contrastseg.methods.dense import Dense, DenseConfig
from contrastseg.methods.glcnet import GLCNet, GLCNetConfig
from contrastseg.methods.global_style import GlobalStyle, GlobalStyleConfig
from contrastseg.methods.local import Local, LocalConfig
from contrastseg.methods.simclr import SimCLR, SimCLRConfig

__all__ = [
    "DEFAULT_METHOD",
    "Dense",
    "DenseConfig",
    "GLCNet",
    "GLCNetConfig",
    "GlobalStyle",
    "GlobalStyleConfig",
    "Local",
    "LocalConfig",
    "Method",
    "MethodConfig",
    "RegionsConfig",
    "SimCLR",
    "SimCLRConfig",
    "available_methods",
    "build_method",
    "get_method",
    "method_config",
    "register_method",
]
