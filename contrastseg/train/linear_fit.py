"""The linear probe as the convex problem it is: cached features, one solver run to convergence.

A linear probe (a 1x1 classifier on frozen features) is multinomial logistic regression.
Training it like a network (SGD on augmented patches, early-stopped on the validation
score) measures the stopping rule as much as the features: a probe stopped at the step
where its validation score peaked can score a good representation below a random one. Here:

1. :func:`cache_pixels`: the frozen network computes the features of every labeled patch
   once; the features are bilinearly upsampled to pixel resolution *at a regular grid of
   pixels* (``pixel_step``), exactly as the segmenter's logits are upsampled at inference
   (a 1x1 classifier commutes with bilinear interpolation), and each sample's target is the
   label of its pixel (ignored pixels left out; at most ``max_cells`` samples, evenly spaced);
2. :func:`fit_softmax`: the features are standardised and the L2-regularised softmax
   regression ``mean(CE) + l2 / 2 * ||W||^2`` (bias not penalised) is solved full batch by
   L-BFGS with a strong-Wolfe line search until the gradient vanishes (``max_iter`` bounds it);
3. :func:`fit_probe_head`: one fit per L2 strength of a small grid (strongest first, each
   warm-started from the previous), each scored by a caller's validation function; the best
   score wins (ties: the stronger regularisation). The head is returned as a ``Conv2d(C, K, 1)``
   with the standardisation folded into its weights.

``contrastseg finetune --mode linear``, the first stage of ``mode: lp-ft``, the online probe
of a pretraining and ``contrastseg probe`` all use this solver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.metrics import even_indices

__all__ = [
    "LinearFit",
    "ProbeFit",
    "cache_pixels",
    "fit_probe_head",
    "fit_softmax",
    "pixel_grid",
]


def pixel_grid(size: int, step: int) -> Tensor:
    """Pixel positions ``step // 2, step // 2 + step, ...`` below ``size`` (at least one)."""
    positions = torch.arange(min(step // 2, size - 1), size, step)
    return positions if len(positions) else torch.zeros(1, dtype=torch.long)


def _sample_upsampled(
    features: Tensor, rows: Tensor, cols: Tensor, size: tuple[int, int]
) -> Tensor:
    """Features bilinearly upsampled to ``size`` (as ``F.interpolate(..., align_corners=False)``),
    read only at pixels ``rows x cols``: ``(B, C, h, w) -> (B, len(rows), len(cols), C)``."""
    height, width = size
    h, w = features.shape[-2:]
    # the source coordinate of output pixel i is (i + 0.5) * h / H - 0.5, clamped at 0 as
    # interpolate does; grid_sample (align_corners=False, border padding) reads the same point
    ys = ((rows.float() + 0.5) * h / height - 0.5).clamp_min(0.0)
    xs = ((cols.float() + 0.5) * w / width - 0.5).clamp_min(0.0)
    gy = (2 * ys + 1) / h - 1
    gx = (2 * xs + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid.to(features)[None].expand(features.shape[0], -1, -1, -1)
    sampled = F.grid_sample(
        features, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled.permute(0, 2, 3, 1)


@torch.no_grad()
def cache_pixels(
    forward: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    ignore_index: int,
    pixel_step: int = 4,
    max_cells: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The probed features and labels of a regular grid of labeled pixels, computed once.

    Args:
        forward: frozen features of a ready input batch ``(B, C_in, H, W) -> (B, C, h, w)``.
        batches: ``(images, labels)`` pairs, images ready for ``forward``, labels ``(B, H, W)``.
        ignore_index: label of pixels left out.
        pixel_step: distance in pixels between two sampled pixels (both axes).
        max_cells: keep at most this many samples, evenly spaced (None = all).

    Returns:
        ``(x, y)``: float32 features ``(N, C)`` on the CPU and int64 labels ``(N,)``.
    """
    cached, targets = [], []
    for images, labels in batches:
        feats = forward(images).float()
        size = tuple(labels.shape[-2:])
        rows = pixel_grid(size[0], pixel_step).to(labels.device)
        cols = pixel_grid(size[1], pixel_step).to(labels.device)
        sampled = _sample_upsampled(feats, rows.to(feats.device), cols.to(feats.device), size)
        picked = labels[:, rows][:, :, cols].to(feats.device)
        keep = picked != ignore_index
        cached.append(sampled[keep].cpu())
        targets.append(picked[keep].long().cpu())
    if not cached:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    x, y = torch.cat(cached), torch.cat(targets)
    if max_cells is not None and len(y) > max_cells:
        keep = even_indices(len(y), max_cells)
        x, y = x[keep], y[keep]
    return x, y


@dataclass
class LinearFit:
    """One solved softmax regression (on standardised features).

    Attributes:
        weight: ``(K, C)`` weights on the standardised features.
        bias: ``(K,)``.
        l2: the L2 strength.
        loss: the final objective ``mean(CE) + l2 / 2 * ||W||^2``.
        iterations: L-BFGS iterations run.
        grad_norm: the largest absolute gradient entry at the end (0 = exact optimum).
    """

    weight: Tensor
    bias: Tensor
    l2: float
    loss: float
    iterations: int
    grad_norm: float


def fit_softmax(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 500,
    init: LinearFit | None = None,
    tolerance: float = 1e-6,
) -> LinearFit:
    """Solve ``min_W,b mean_i CE(x_i W^T + b, y_i) + l2 / 2 * ||W||^2`` by full-batch L-BFGS.

    ``x`` must already be standardised (see :func:`fit_probe_head`); the problem is strictly
    convex for ``l2 > 0``, so the solution does not depend on the start (``init`` only makes
    it cheaper).
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    x = x.float()
    weight = torch.zeros(num_classes, x.shape[1]) if init is None else init.weight.clone()
    bias = torch.zeros(num_classes) if init is None else init.bias.clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        loss = closure()
    grad = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return LinearFit(weight.detach(), bias.detach(), l2, float(loss.detach()), iterations, grad)


@dataclass
class ProbeFit:
    """What :func:`fit_probe_head` chose.

    Attributes:
        head: ``Conv2d(C, K, 1)`` on the raw (not standardised) features.
        l2: the selected L2 strength.
        scores: validation score per L2 strength of the grid (as given, in grid order).
        fits: the solved problem per L2 strength (iterations, loss, gradient).
        cells: samples the head was fitted on.
    """

    head: nn.Conv2d
    l2: float
    scores: dict[float, float] = field(default_factory=dict)
    fits: dict[float, LinearFit] = field(default_factory=dict)
    cells: int = 0

    def summary(self) -> str:
        fit = self.fits[self.l2]
        grid = ", ".join(f"{l2:g}: {100 * s:.2f}" for l2, s in self.scores.items())
        return (
            f"softmax regression on {self.cells} labeled pixels, L2 {self.l2:g} selected "
            f"(val mIoU % by L2: {grid}); L-BFGS {fit.iterations} iterations, final gradient "
            f"{fit.grad_norm:.1e}"
        )


def fold_head(fit: LinearFit, mean: Tensor, std: Tensor) -> nn.Conv2d:
    """The fit as a 1x1 convolution on raw features: ``((x - m) / s) W^T + b``."""
    head = nn.Conv2d(fit.weight.shape[1], fit.weight.shape[0], 1)
    with torch.no_grad():
        folded = fit.weight / std
        head.weight.copy_(folded[:, :, None, None])
        head.bias.copy_(fit.bias - (mean / std) @ fit.weight.T)
    return head


def fit_probe_head(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2_grid: Iterable[float],
    score: Callable[[nn.Conv2d], float] | None = None,
    max_iter: int = 500,
) -> ProbeFit:
    """Fit the probe's head for every L2 strength of ``l2_grid`` and keep the best one.

    Args:
        x: ``(N, C)`` cached features (raw: they are standardised here).
        y: ``(N,)`` class ids.
        num_classes: ``K``.
        l2_grid: L2 strengths; one value skips the scoring.
        score: the validation score of a head (higher is better), e.g. the val mIoU of the
            network with that head. None with several strengths is an error.
        max_iter: L-BFGS iterations per fit.

    Raises:
        ValueError: no labeled sample, an empty grid, or several strengths without ``score``.
    """
    grid = sorted({float(v) for v in l2_grid}, reverse=True)  # strongest first: warm starts
    if not grid:
        raise ValueError("the L2 grid is empty")
    if len(y) == 0:
        raise ValueError("no labeled pixel to fit the probe on")
    if len(grid) > 1 and score is None:
        raise ValueError("several L2 strengths need a validation score to choose among them")
    mean = x.mean(0)
    std = x.std(0).nan_to_num(1.0).clamp_min(1e-6)
    z = (x - mean) / std
    fits: dict[float, LinearFit] = {}
    scores: dict[float, float] = {}
    previous = None
    for l2 in grid:
        fit = fit_softmax(z, y, num_classes, l2, max_iter, previous)
        fits[l2], previous = fit, fit
        if score is not None and len(grid) > 1:
            scores[l2] = float(score(fold_head(fit, mean, std)))
    best = max(grid, key=lambda v: (scores.get(v, 0.0), v))  # ties: the stronger L2
    ordered = {float(v): scores[float(v)] for v in l2_grid if float(v) in scores}
    return ProbeFit(fold_head(fits[best], mean, std), best, ordered, fits, len(y))
