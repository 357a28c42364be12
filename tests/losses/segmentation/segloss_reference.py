"""Numpy transcriptions of the segmentation-loss formulas, written from the papers and
independent of contrastseg's code (valid pixels are selected, not masked; loops over
classes; the Lovász extension evaluates the set function directly), plus test inputs.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = 255


def make_inputs(
    classes: int = 4,
    seed: int = 0,
    batch: int = 2,
    height: int = 5,
    width: int = 6,
    absent: int | None = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits and int64 targets with ignored pixels; class ``absent`` never occurs,
    and image 1 lacks class 1 as well (so per-image present sets differ)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, height, width, generator=gen, dtype=torch.float64) * 2
    n_labels = max(classes, 2)
    target = torch.randint(0, n_labels, (batch, height, width), generator=gen)
    if absent is not None and classes > 2:
        target[target == absent] = 0
        target[1][target[1] == 1] = 2
    ignore = torch.rand(batch, height, width, generator=gen) < 0.2
    target[ignore] = IGNORE
    return logits, target


def perfect_logits(target: torch.Tensor, classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits whose softmax (sigmoid in binary mode) is the one-hot target to float64 precision."""
    safe = torch.where(target == IGNORE, torch.zeros_like(target), target)
    if classes == 1:
        return (scale * (2.0 * safe - 1.0)).unsqueeze(1).double()
    one_hot = torch.nn.functional.one_hot(safe, classes).permute(0, 3, 1, 2)
    return (scale * (2.0 * one_hot - 1.0)).double()


def probs_np(logits: torch.Tensor) -> np.ndarray:
    """(B, K, H, W) probabilities: softmax, or [1 - sigmoid, sigmoid] for one channel."""
    x = logits.detach().numpy().astype(np.float64)
    if x.shape[1] == 1:
        s = 1.0 / (1.0 + np.exp(-x[:, 0]))
        return np.stack([1.0 - s, s], axis=1)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pixels(
    logits: torch.Tensor, target: torch.Tensor, per_image: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups of valid pixels: ``[(P (N, K), y (N,))]``, one group per image or one in all."""
    p = probs_np(logits).transpose(0, 2, 3, 1)
    t = target.numpy()
    if per_image:
        groups = [(p[b][t[b] != IGNORE], t[b][t[b] != IGNORE]) for b in range(len(t))]
        return [g for g in groups if len(g[1])]
    return [(p[t != IGNORE], t[t != IGNORE])]


def region_loss(logits, target, per_image, per_class) -> float:
    """Mean over groups of the mean over present classes of ``per_class(p_c, y_c)``."""
    losses = []
    for p, y in pixels(logits, target, per_image):
        values = []
        for c in range(p.shape[1]):
            yc = (y == c).astype(np.float64)
            if yc.sum() > 0:
                values.append(per_class(p[:, c], yc))
        losses.append(np.mean(values))
    return float(np.mean(losses))


def dice(p, y, squared=False, eps=1e-6):
    s = 2 if squared else 1
    return 1 - 2 * np.sum(p * y) / (np.sum(p**s) + np.sum(y**s) + eps)


def jaccard(p, y, eps=1e-6):
    inter = np.sum(p * y)
    return 1 - inter / (np.sum(p) + np.sum(y) - inter + eps)


def tversky_index(p, y, alpha, beta, eps=1e-6):
    tp = np.sum(p * y)
    return tp / (tp + alpha * np.sum(p * (1 - y)) + beta * np.sum((1 - p) * y) + eps)


def sens_spec(p, y, r=0.05, eps=1e-6):
    sq = (y - p) ** 2
    return r * np.sum(sq * y) / (np.sum(y) + eps) + (1 - r) * np.sum(sq * (1 - y)) / (
        np.sum(1 - y) + eps
    )


def lovasz_class(p, y):
    """Lovász extension of the Jaccard loss, Berman et al. Eq. 8-9, set function evaluated
    directly: Delta(S) = |S| / |{y = c} ∪ S|."""
    errors = np.abs(y - p)
    order = np.argsort(-errors, kind="stable")
    gt = set(np.flatnonzero(y > 0).tolist())
    total, prev, chosen = 0.0, 0.0, set()
    for i in order:
        chosen.add(int(i))
        delta = len(chosen) / len(gt | chosen)
        total += errors[i] * (delta - prev)
        prev = delta
    return total


def cross_entropy(logits, target, weight=None, smoothing=0.0) -> float:
    ((p, y),) = pixels(logits, target, False)
    k = p.shape[1]
    w = np.ones(k) if weight is None else np.asarray(weight, dtype=np.float64)
    q = (1 - smoothing) * np.eye(k)[y] + smoothing / k  # Szegedy's smoothed target
    # weighted: class c's term of pixel i carries w_c; normalised by the target weights
    num = -(q * w[None] * np.log(p)).sum()
    return float(num / w[y].sum())


def focal(logits, target, gamma=2.0, alpha=None) -> float:
    ((p, y),) = pixels(logits, target, False)
    pt = p[np.arange(len(y)), y]
    a = np.ones(p.shape[1]) if alpha is None else np.asarray(alpha, dtype=np.float64)
    return float(np.mean(-a[y] * (1 - pt) ** gamma * np.log(pt)))


def balanced_counts(target, classes):
    t = target.numpy()
    counts = np.array([(t == c).sum() for c in range(classes)], dtype=np.float64)
    return np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 0.0)
