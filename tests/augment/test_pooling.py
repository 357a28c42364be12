"""Tests of contrastseg/augment/pooling.py against a super-sampled numpy mean."""

import numpy as np
import pytest
import torch

from contrastseg.augment.pooling import pool_regions


def oracle(features, boxes, stride, q=4):
    """Nearest-upsample the map to 1/q view pixel and average over each (clipped) box."""
    f = features.double().numpy()
    fine = np.repeat(np.repeat(f, stride * q, axis=2), stride * q, axis=3)
    out = np.zeros((f.shape[0], boxes.shape[1], f.shape[1]))
    for b in range(f.shape[0]):
        for n, (x1, y1, x2, y2) in enumerate(boxes[b].tolist()):
            c1, r1 = max(round(x1 * q), 0), max(round(y1 * q), 0)
            c2, r2 = round(x2 * q), round(y2 * q)
            out[b, n] = fine[b, :, r1:r2, c1:c2].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_integer_and_fractional_boxes_match_the_oracle(stride):
    g = torch.Generator().manual_seed(stride)
    features = torch.randn(2, 5, 7, 9, generator=g)
    view_h, view_w = 7 * stride, 9 * stride
    # Corners on a quarter-pixel grid, inside the view.
    corners = torch.randint(0, 4 * view_w, (2, 6, 4), generator=g).float() / 4
    corners[..., [1, 3]] = corners[..., [1, 3]] * view_h / view_w
    corners = torch.round(corners * 4) / 4
    x1, x2 = (
        torch.minimum(corners[..., 0], corners[..., 2]),
        torch.maximum(corners[..., 0], corners[..., 2]) + 0.25,
    )
    y1, y2 = (
        torch.minimum(corners[..., 1], corners[..., 3]),
        torch.maximum(corners[..., 1], corners[..., 3]) + 0.25,
    )
    boxes = torch.stack([x1, y1, x2.clamp(max=view_w), y2.clamp(max=view_h)], dim=-1)
    out = pool_regions(features, boxes, stride)
    assert out.shape == (2, 6, 5)
    np.testing.assert_allclose(out.double().numpy(), oracle(features, boxes, stride), atol=1e-5)


def test_glcnet_shapes_and_cell_aligned_boxes_equal_plain_means():
    features = torch.randn(2, 16, 14, 14)
    boxes = torch.tensor([[[0.0, 0.0, 48.0, 48.0], [8.0, 20.0, 56.0, 68.0]]]).expand(2, 2, 4)
    out = pool_regions(features, boxes, 4)
    torch.testing.assert_close(out[:, 0], features[:, :, 0:12, 0:12].mean(dim=(-2, -1)))
    torch.testing.assert_close(out[:, 1], features[:, :, 5:17, 2:14].mean(dim=(-2, -1)))


def test_box_partly_outside_averages_the_covered_part():
    features = torch.randn(1, 3, 4, 4)
    out = pool_regions(features, torch.tensor([[[-8.0, 8.0, 8.0, 24.0]]]), 4)
    torch.testing.assert_close(out[0, 0], features[0, :, 2:4, 0:2].mean(dim=(-2, -1)))


def test_gradients_flow_to_the_features():
    features = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[[1.5, 0.0, 9.0, 7.25], [0.0, 2.0, 16.0, 12.0]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: pool_regions(f, boxes, 4), (features,))


def test_runs_under_autocast():
    features = torch.randn(2, 8, 14, 14, requires_grad=True)
    boxes = torch.tensor([[[3.0, 5.0, 51.0, 53.0]]]).expand(2, 1, 4)
    reference = pool_regions(features, boxes, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pool_regions(features, boxes, 4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


@pytest.mark.parametrize(
    ("features", "boxes", "stride", "match"),
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 1, 4), 4, "features"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4), 4, "boxes"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 3), 4, "boxes"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4), 0, "stride"),
    ],
)
def test_bad_arguments(features, boxes, stride, match):
    with pytest.raises(ValueError, match=match):
        pool_regions(features, boxes, stride)
