"""The ``glcnet_official`` views preset against a restatement of the official view-2 draws.

``join_transform`` in utils/data_for_self_GLCNet.py of github.com/GeoX-Lab/G-RSIM draws, per
sample: ``f = [1, 0, -1, 2, 2][randint(0, 5)]`` (flip), ``k = randint(0, 4)`` with
probability 0.8 (rot90), ``color_aug`` with probability 0.8 whose HSV shift runs with
probability ``u = 0.5``, one-band grayscale with probability 0.1, and ``cv2.GaussianBlur``
with ``k = 2 * randint(1, 4) + 1`` with probability 0.5. The restatement below simulates
those draws with numpy; our ops' parameter draws must follow the same distributions.
"""

from __future__ import annotations

import numpy as np
import torch

from contrastseg.augment.config import ViewsConfig
from contrastseg.augment.ops import RandomGLCNetColor, RandomOpenCVBlur
from contrastseg.augment.pipeline import build_ops
from contrastseg.augment.views import PairedViews

N = 20000


def official_draws(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Categories of the official draws: flip code (0 none, 1 h, 2 v, 3 both), k, colour, ..."""
    rng = np.random.RandomState(seed)
    flip, rot, colour, gray, blur = [], [], [], [], []
    for _ in range(n):
        f = [1, 0, -1, 2, 2][rng.randint(0, 5)]
        flip.append({1: 1, 0: 2, -1: 3, 2: 0}[f])
        rot.append(rng.randint(0, 4) if rng.random() < 0.8 else 0)
        colour.append((1 + (rng.random() < 0.5)) if rng.random() < 0.8 else 0)
        gray.append(int(rng.random() < 0.1))
        blur.append(2 * rng.randint(1, 4) + 1 if rng.random() < 0.5 else 0)
    draws = {"flip": flip, "rot": rot, "colour": colour, "gray": gray, "blur": blur}
    return {k: np.array(v) for k, v in draws.items()}


def _ours(n: int) -> dict[str, np.ndarray]:
    views = ViewsConfig.preset("glcnet_official", size=8)
    ops, _ = build_ops(views.t2, views, "t2")
    assert [type(op).__name__ for op in ops[1:]] == [
        "RandomFlipChoice",
        "RandomQuarterTurn",
        "RandomGLCNetColor",
        "RandomBandGrayscale",
        "RandomOpenCVBlur",
    ]
    torch.manual_seed(0)
    shape = torch.Size((n, 4, 8, 8))
    params = [op.forward_parameters(shape) for op in ops[1:]]
    on = [p["batch_prob"].bool().numpy() for p in params]
    flip, rot, colour, _, blur = params
    return {
        "flip": np.where(on[0], flip["code"].numpy(), 0),
        "rot": np.where(on[1], rot["k"].numpy(), 0),
        "colour": np.where(on[2], 1 + colour["hsv"].numpy().astype(int), 0),
        "gray": on[3].astype(int),
        "blur": np.where(on[4], blur["kernel"].numpy(), 0),
    }


def test_view2_draw_frequencies_match_the_official_ones() -> None:
    ours, official = _ours(N), official_draws(200000)
    for name in ("flip", "rot", "colour", "gray", "blur"):
        cats = np.unique(official[name])
        expected = np.array([(official[name] == c).mean() for c in cats]) * N
        counts = np.array([(ours[name] == c).sum() for c in cats])
        assert counts.sum() == N, (name, np.unique(ours[name]))
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # at most 6 dof: p < 1e-4 beyond 27.9
        assert chi2 < 28.0, (name, counts.tolist(), expected.round().tolist())


def test_band_ops_follow_random_color_augment() -> None:
    """``randomColorAugment(x, 0.1, 0.1)`` per band: blend towards white/black, then x * c."""
    op = RandomGLCNetColor(p=1.0, hsv_p=0.0, pixel_noise=0.0)
    x = torch.rand(3, 4, 5, 5)
    params = op.forward_parameters(x.shape)
    out = op(x, params=params).numpy()
    b, c = params["bright"].numpy()[..., None, None], params["contrast"].numpy()[..., None, None]
    img = x.numpy() * 255  # the official code works on uint8 values
    alpha = np.where(b > 1, b - 1, 1 - b)
    degenerate = np.where(b > 1, 255.0, 0.0)
    official = np.clip((degenerate * alpha + img * (1 - alpha)) * c, 0, 255) / 255
    np.testing.assert_allclose(out, official, atol=1e-5)


def test_hsv_shift_in_opencv_units() -> None:
    op = RandomGLCNetColor(p=1.0, hsv_p=1.0)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    params = op.forward_parameters(red.shape)
    params.update(hue=torch.tensor([60.0]), sat=torch.tensor([0.0]), val=torch.tensor([-51.0]))
    out = op(red, params=params)
    # 60 OpenCV units = 120 degrees: red -> green; value 255 - 51 = 204.
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 0.8, 0.0]), atol=1e-5, rtol=0)


def test_opencv_blur_uses_opencv_sigma() -> None:
    op = RandomOpenCVBlur(kernel_sizes=(5,), p=1.0)
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = op(x)[0, 0].numpy()
    sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8  # OpenCV getGaussianKernel for sigma <= 0
    g = np.exp(-((np.arange(5) - 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    np.testing.assert_allclose(out[2:7, 2:7], np.outer(g, g), atol=1e-6)


def test_official_views_keep_exact_correspondences() -> None:
    views = PairedViews(ViewsConfig.preset("glcnet_official", size=24))
    images = torch.rand(6, 3, 32, 32)
    images[:, 0] = torch.arange(32.0).view(1, 32, 1) / 32  # ramps: index must follow
    pair = views(images, torch.Generator().manual_seed(0))
    assert pair.view2.shape == (6, 3, 24, 24)
    assert (pair.index2 > 0).all()  # flips and quarter turns never leave the source
