"""Projection heads for the contrastive branches (SimCLR, GLCNet).

GLCNet (Li et al., TGRS 2022) projects the 512-d style vector of the ASPP output with a
512-256-64 MLP (global branch) and the 256-d mean of the decoder features over each
matched region with a 1x1 projection to 64 channels followed by a 64-64-64 MLP (local
branch). Region pooling is a mean and the 1x1 projection is linear, so projecting after
pooling equals projecting the feature map and then pooling; the local head therefore
works on pooled vectors, ``256 -> 64`` then ``64 -> 64 -> 64``, and costs nothing per pixel.

Two layouts of that local head (``method.local_head_layout``): ``mlp`` (ours) makes the
first layer an MLP layer too (Linear -> BatchNorm -> ReLU), ``official`` keeps it linear
as the official code's 1x1 convolution is (``linear_first=True``: Linear, then
Linear -> ReLU -> Linear). The official heads have no BatchNorm (``head_batch_norm: false``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """An MLP ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Every layer but the last is Linear (-> BatchNorm1d) -> ReLU; the last is a plain
    Linear, as in SimCLR's head. With ``linear_first`` the first layer is a plain Linear
    (with bias) too, feeding the next Linear directly (GLCNet's official local head, whose
    1x1 convolution is linear).

    Args:
        dims: layer widths, input first, at least two entries (three with ``linear_first``).
        batch_norm: BatchNorm1d after each hidden Linear (its bias is then dropped).
        linear_first: the first layer is linear (no BatchNorm, no ReLU).

    Shapes: ``(N, dims[0]) -> (N, dims[-1])``.
    """

    def __init__(
        self, dims: Sequence[int], batch_norm: bool = True, linear_first: bool = False
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 + linear_first or any(d < 1 for d in dims):
            least = "three" if linear_first else "two"
            raise ValueError(
                f"a projection head needs at least {least} positive widths, got {dims}"
            )
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == len(dims) - 2
            plain = last or (linear_first and i == 0)
            layers.append(nn.Linear(d_in, d_out, bias=plain or not batch_norm))
            if not plain:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        self.dims = tuple(dims)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dims[0]:
            raise ValueError(
                f"projection head expects (N, {self.dims[0]}) input, got {tuple(x.shape)}"
            )
        return self.layers(x)


class GlobalProjectionHead(ProjectionHead):
    """GLCNet's global head on the style vector: ``2 * encoder_channels -> 256 -> 64`` by default."""

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dims: Sequence[int] = (256,),
        out_dim: int = 64,
        batch_norm: bool = True,
    ) -> None:
        super().__init__([in_dim, *hidden_dims, out_dim], batch_norm=batch_norm)


class LocalProjectionHead(ProjectionHead):
    """GLCNet's local head on pooled region features: ``decoder_channels -> 64 -> 64 -> 64``.

    The first layer stands for the paper's 1x1 projection of the decoder features, applied
    after pooling; here it is an MLP layer (Linear -> BatchNorm -> ReLU, our default), where
    the official code's is linear (``ProjectionHead(..., linear_first=True)``, equal to
    projecting before pooling by linearity of the mean); the rest is the 64-64-64 MLP.
    """

    def __init__(
        self,
        in_dim: int = 256,
        hidden_dims: Sequence[int] = (64, 64),
        out_dim: int = 64,
        batch_norm: bool = True,
    ) -> None:
        super().__init__([in_dim, *hidden_dims, out_dim], batch_norm=batch_norm)
