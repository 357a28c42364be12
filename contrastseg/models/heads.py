"""Projection heads for the contrastive branches (SimCLR, GLCNet).

GLCNet (Li et al., TGRS 2022) projects the 512-d style vector of the ASPP output with a
512-256-64 MLP (global branch) and the 256-d mean of the decoder features over each
matched region with a 1x1 projection to 64 channels followed by a 64-64-64 MLP (local
branch). Region pooling is a mean and the 1x1 projection is linear, so projecting after
pooling equals projecting the feature map and then pooling; the local head therefore
works on pooled vectors, ``256 -> 64`` then ``64 -> 64 -> 64``, and costs nothing per pixel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """An MLP ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Every layer but the last is Linear (-> BatchNorm1d) -> ReLU; the last is a plain
    Linear, as in SimCLR's head.

    Args:
        dims: layer widths, input first, at least two entries.
        batch_norm: BatchNorm1d after each hidden Linear (its bias is then dropped).

    Shapes: ``(N, dims[0]) -> (N, dims[-1])``.
    """

    def __init__(self, dims: Sequence[int], batch_norm: bool = True) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"a projection head needs at least two positive widths, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=last or not batch_norm))
            if not last:
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

    The first layer is the paper's 1x1 projection of the decoder features, applied after
    pooling (equal, by linearity of the mean); the rest is the 64-64-64 MLP.
    """

    def __init__(
        self,
        in_dim: int = 256,
        hidden_dims: Sequence[int] = (64, 64),
        out_dim: int = 64,
        batch_norm: bool = True,
    ) -> None:
        super().__init__([in_dim, *hidden_dims, out_dim], batch_norm=batch_norm)
