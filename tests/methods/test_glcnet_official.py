"""GLCNet's heads and loss with the official settings, against restatements of the official code.

The oracles restate ``models/GLCNet.py`` and ``utils/contrast_loss.py`` of
github.com/GeoX-Lab/G-RSIM (T-SS-GLCNet), as ``main_ss.py`` builds them (``num_classes=64``,
``NTXentLoss(tau=0.5, cos_sim=True)``, ``loss = 0.5 * global + 0.5 * local``):

- global: ``proj = Linear(512, 256) -> ReLU -> Linear(256, 64)`` on ``[mean, var]`` of the ASPP
  output (``torch.var``, unbiased);
- local: the decoder's last layer ``conv41 = Conv2d(256, 64, 1)`` (linear, with bias) on the
  decoder map, the map upsampled to the input, mean over each window, then
  ``proj1 = Linear(64, 64) -> ReLU -> Linear(64, 64)``;
- loss: ``-log(exp(s_ij / t) / (sum_{k != i, j} exp(s_ik / t) + 1e-8))`` averaged over the
  ``2N`` anchors (the positive is left out of the denominator).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastseg.augment.pooling import pool_regions
from contrastseg.losses.ntxent import masked_nt_xent, nt_xent
from contrastseg.losses.style import style_vector
from contrastseg.methods.base import method_config
from contrastseg.methods.global_style import global_style_loss
from contrastseg.methods.local import local_matching_loss

NET = SimpleNamespace(encoder_channels=256, decoder_channels=256)


def _official_config():
    return method_config(
        "glcnet", head_batch_norm=False, local_head_layout="official", decoupled=True
    )


def _copy_linears(source: nn.Module, target: nn.Module) -> None:
    linears = [m for m in target.modules() if isinstance(m, nn.Linear)]
    for theirs, ours in zip(source, linears, strict=True):
        with torch.no_grad():
            ours.weight.copy_(theirs.weight.reshape(ours.weight.shape))
            ours.bias.copy_(theirs.bias)


def official_ntxent(zi: torch.Tensor, zj: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """``NTXentLoss.forward`` of utils/contrast_loss.py (cos_sim=True, eps=1e-8)."""
    zi, zj = F.normalize(zi, dim=1), F.normalize(zj, dim=1)
    bs = zi.shape[0]
    z_all = torch.cat([zi, zj], dim=0)
    sim = torch.exp(F.cosine_similarity(z_all.unsqueeze(1), z_all.unsqueeze(0), dim=-1) / tau)
    eye, zeros = torch.eye(bs), torch.zeros(bs, bs)
    pos_mask = torch.cat([torch.cat([zeros, eye], 0), torch.cat([eye, zeros], 0)], 1).bool()
    neg_mask = (1 - (torch.eye(2 * bs) + pos_mask.double())).bool()
    sim_pos = sim.masked_select(pos_mask).view(2 * bs)
    sim_neg = sim.masked_select(neg_mask).view(2 * bs, -1)
    return (-torch.log(sim_pos / (sim_neg.sum(dim=-1) + 1e-8))).mean()


def test_official_global_head_gives_the_official_embeddings() -> None:
    torch.manual_seed(0)
    official = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 64))
    ours = global_style_loss(_official_config(), NET).head
    assert not any(isinstance(m, nn.BatchNorm1d) for m in ours.modules())
    _copy_linears([official[0], official[2]], ours)
    x = torch.randn(6, 256, 5, 7)
    flat = x.view(6, 256, -1)
    style = torch.cat([flat.mean(2), torch.var(flat, dim=2)], dim=1)  # official forward
    torch.testing.assert_close(ours(style_vector(x)), official(style), rtol=1e-5, atol=1e-5)


def test_official_local_head_gives_the_official_embeddings() -> None:
    torch.manual_seed(1)
    conv41 = nn.Conv2d(256, 64, kernel_size=1)
    proj1 = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    ours = local_matching_loss(_official_config(), NET).head
    assert not any(isinstance(m, nn.BatchNorm1d | nn.ReLU) for m in list(ours.layers)[:2])
    _copy_linears([conv41, proj1[0], proj1[2]], ours)
    features = torch.randn(2, 256, 8, 8)  # decoder map of 32 x 32 views (stride 4)
    # Windows on the stride-4 grid, where our area-weighted cell mean equals the mean of
    # the upsampled map exactly (the official code upsamples bilinearly; see docs/recipe.md).
    boxes = torch.tensor([[[4, 8, 20, 24], [0, 0, 16, 16]], [[12, 4, 28, 20], [16, 16, 32, 32]]])
    predict = F.interpolate(conv41(features), scale_factor=4, mode="nearest")
    official = []
    for b in range(2):
        for x1, y1, x2, y2 in boxes[b].tolist():
            official.append(proj1(predict[b, :, y1:y2, x1:x2].mean((1, 2))))
    pooled = pool_regions(features, boxes.float(), 4).reshape(4, 256)
    torch.testing.assert_close(ours(pooled), torch.stack(official), rtol=1e-5, atol=1e-5)


def test_decoupled_loss_equals_the_official_loss() -> None:
    torch.manual_seed(2)
    z1, z2 = torch.randn(8, 64, dtype=torch.float64), torch.randn(8, 64, dtype=torch.float64)
    ours = nt_xent(z1, z2, 0.5, gather=False, decoupled=True)
    torch.testing.assert_close(ours, official_ntxent(z1, z2), rtol=1e-7, atol=1e-7)
    # The local branch: all regions of the batch in one NTXentLoss(bs * patch_num).
    r1, r2 = torch.randn(4 * 3, 64, dtype=torch.float64), torch.randn(12, 64, dtype=torch.float64)
    valid = torch.ones(12, dtype=torch.bool)
    local = masked_nt_xent(r1, r2, valid, 0.5, gather=False, decoupled=True).loss
    torch.testing.assert_close(local, official_ntxent(r1, r2), rtol=1e-7, atol=1e-7)


def official_ntxent_numpy(zi: np.ndarray, zj: np.ndarray, tau: float) -> float:
    """``NTXentLoss.forward`` (``utils/contrast_loss.py``, lines 68-93) in numpy, float64.

    ``sim = exp(cos / tau)`` over the 2bs views; the positive of view i is view i +- bs; the
    negatives are every view but i and its positive; ``loss = mean(-log(sim_pos /
    (sum(sim_neg) + eps)))`` with the constructor's default ``eps=1e-8`` (line 42).
    """
    zi = zi / np.linalg.norm(zi, axis=1, keepdims=True)
    zj = zj / np.linalg.norm(zj, axis=1, keepdims=True)
    bs = len(zi)
    z_all = np.concatenate([zi, zj])
    sim = np.exp(z_all @ z_all.T / tau)
    losses = []
    for i in range(2 * bs):
        pos = (i + bs) % (2 * bs)
        neg = sum(sim[i, k] for k in range(2 * bs) if k not in (i, pos))
        losses.append(-np.log(sim[i, pos] / (neg + 1e-8)))
    return float(np.mean(losses))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decoupled_loss_adds_the_official_1e_8(dtype) -> None:
    # Two pairs pointing opposite ways, at tau 0.05: each view's two negatives (the other
    # pair) have cos near -1, so exp(cos / tau) is near exp(-20) = 2e-9 and the official
    # + 1e-8 is most of the denominator (1e-7 or 1e-9 would give another loss).
    rng = np.random.default_rng(3)
    e = rng.normal(size=16)
    signs = np.array([1.0, -1.0])[:, None]
    zi = signs * e + 0.1 * rng.normal(size=(2, 16))
    zj = signs * e + 0.1 * rng.normal(size=(2, 16))
    expected = official_ntxent_numpy(zi, zj, 0.05)
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    t1, t2 = torch.tensor(zi, dtype=dtype), torch.tensor(zj, dtype=dtype)
    ours = nt_xent(t1, t2, 0.05, gather=False, decoupled=True)
    assert ours.item() == pytest.approx(expected, rel=rel)
    masked = masked_nt_xent(t1, t2, torch.ones(2, dtype=torch.bool), 0.05, decoupled=True)
    assert masked.loss.item() == pytest.approx(expected, rel=rel)
    # the same formula without its eps is far from it: the eps is what this case tests
    z_all = np.concatenate([zi, zj]) / np.linalg.norm(np.concatenate([zi, zj]), axis=1)[:, None]
    logits = z_all @ z_all.T / 0.05
    no_eps = [
        np.log(np.exp(logits[i, [k for k in range(4) if k not in (i, (i + 2) % 4)]]).sum())
        - logits[i, (i + 2) % 4]
        for i in range(4)
    ]
    assert abs(np.mean(no_eps) - expected) > 0.5
    # the default form (positive in the denominator, no eps) is not changed by it
    assert nt_xent(t1, t2, 0.05, gather=False).item() == pytest.approx(
        float(np.mean([np.log(np.exp(logits[i, [k for k in range(4) if k != i]]).sum())
                       - logits[i, (i + 2) % 4] for i in range(4)])), rel=rel, abs=1e-5
    )  # fmt: skip


def test_our_default_heads_are_unchanged() -> None:
    config = method_config("glcnet")
    head = local_matching_loss(config, NET).head
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
