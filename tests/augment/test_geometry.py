"""Tests of contrastseg/augment/geometry.py: the single resample and its index map."""

import math

import kornia
import pytest
import torch
from torchvision.ops import roi_align

from contrastseg.augment.geometry import warp_with_index

H = W = 24


def _turn(degrees, c):
    """Source -> view turn by ``degrees`` about ``(c, c)``, as torch.rot90 turns (90 = one step)."""
    t = math.radians(degrees)
    cos, sin = round(math.cos(t), 12), round(math.sin(t), 12)
    return torch.tensor(
        [[cos, sin, c - c * (cos + sin)], [-sin, cos, c - c * (cos - sin)], [0, 0, 1]],
        dtype=torch.float64,
    )


def _affine(boxes, size, hflip=False, vflip=False, k=0, angle=0.0):
    """View pixel -> source pixel map of ``rotate(rot90(flip(resize(box))))``, written out here.

    The box ``x0, y0, w, h`` (pixel edges) is resized to ``size``: ``u = (x - x0 + 0.5) S / w - 0.5``.
    """
    c = (size - 1) / 2
    flip = torch.diag(torch.tensor([-1.0 if hflip else 1.0, -1.0 if vflip else 1.0, 1.0]))
    flip[0, 2], flip[1, 2] = (size - 1 if hflip else 0), (size - 1 if vflip else 0)
    turn = _turn(angle, c) @ _turn(90 * k, c) @ flip.double()
    maps = []
    for x0, y0, w, h in boxes.double().tolist():
        resize = torch.tensor(
            [
                [size / w, 0, (0.5 - x0) * size / w - 0.5],
                [0, size / h, (0.5 - y0) * size / h - 0.5],
                [0, 0, 1],
            ],
            dtype=torch.float64,
        )
        maps.append(torch.linalg.inv(turn @ resize)[:2].float())
    return torch.stack(maps)


def _random_affines(b, height, width, size, g, angles=True):
    u = torch.rand(b, 8, generator=g, dtype=torch.float64)
    w = (0.2 + 0.8 * u[:, 0]) * width
    h = (0.2 + 0.8 * u[:, 1]) * height
    boxes = torch.stack([(width - w) * u[:, 2], (height - h) * u[:, 3], w, h], dim=1)
    return torch.cat(
        [
            _affine(
                boxes[i : i + 1],
                size,
                bool(u[i, 4] < 0.5),
                bool(u[i, 5] < 0.5),
                int(u[i, 6] * 4),
                float(u[i, 7] * 360 - 180) if angles else 0.0,
            )
            for i in range(b)
        ]
    )


def _full_box(b=2):
    return torch.tensor([[0.0, 0.0, W, H]]).expand(b, 4)


@pytest.mark.parametrize(
    ("hflip", "vflip", "k"),
    [
        (True, False, 0),
        (False, True, 0),
        (False, False, 1),
        (False, False, 2),
        (False, False, 3),
        (True, True, 1),
    ],
)
def test_flips_and_rot90_are_exact_permutations(hflip, vflip, k):
    images = torch.rand(2, 3, H, W)
    view, index = warp_with_index(images, _affine(_full_box(), W, hflip, vflip, k), W)
    expected = images
    source = torch.arange(1, H * W + 1).view(1, H, W).expand(2, H, W)
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    if dims:
        expected, source = torch.flip(expected, dims), torch.flip(source, dims)
    expected = torch.rot90(expected, k, dims=(-2, -1))
    source = torch.rot90(source, k, dims=(-2, -1))
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)
    assert torch.equal(index, source)


def test_rotation_by_90_degrees_equals_rot90():
    images = torch.rand(1, 2, H, W)
    view, index = warp_with_index(images, _affine(_full_box(1), W, angle=90.0), W)
    torch.testing.assert_close(view, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    assert torch.equal(index[0], torch.rot90(torch.arange(1, H * W + 1).view(H, W), 1))


@pytest.mark.parametrize("angle", [17.0, -33.0])
def test_rotation_matches_kornia_rotate(angle):
    images = torch.rand(1, 2, H, W)
    view, index = warp_with_index(images, _affine(_full_box(1), W, angle=angle), W)
    oracle = kornia.geometry.transform.rotate(
        images, torch.tensor([angle]), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    # Away from the source border the two agree (ours pads by the border value, then zeroes
    # the pixels whose nearest source pixel is outside).
    inner = torch.zeros(H, W, dtype=torch.bool)
    inner[5:-5, 5:-5] = True
    inner &= index[0] > 0
    torch.testing.assert_close(view[..., inner], oracle[..., inner], atol=1e-4, rtol=0)
    assert (index == 0).any()
    assert (view[:, :, index[0] == 0] == 0).all()


def test_crop_matches_roi_align():
    # roi_align(aligned=True, sampling_ratio=1) samples each bin centre bilinearly, i.e. view
    # pixel j of a box [x0, x0 + w) sits at x0 + (j + 0.5) * w / S - 0.5: an independent oracle.
    images = torch.rand(3, 2, 40, 50)
    boxes = torch.tensor([[3.3, 2.7, 30.5, 25.0], [0.0, 0.0, 50.0, 40.0], [10.2, 12.9, 12.0, 20.1]])
    size = 16
    view, _ = warp_with_index(images, _affine(boxes, size), size)
    rois = torch.cat([torch.arange(3.0)[:, None], boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    oracle = roi_align(
        images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True
    )
    torch.testing.assert_close(view, oracle, atol=1e-4, rtol=0)


def _check_ramp(view, index, height, width, tol=0.5 + 1e-3):
    """Channels 0/1 of the source were its column/row ramps; check the half-pixel rule."""
    valid = index > 0
    assert valid.any()
    assert index.min() >= 0 and index.max() <= height * width
    v = index[valid] - 1
    col, row = (v % width).float(), torch.div(v, width, rounding_mode="floor").float()
    assert (view[:, 0][valid] - col).abs().max() <= tol
    assert (view[:, 1][valid] - row).abs().max() <= tol


def ramp(b, height, width):
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    return torch.stack([cols, rows]).expand(b, 2, height, width).contiguous()


@pytest.mark.parametrize("size", [16, 37, 64])
def test_random_geometry_obeys_half_pixel_rule(size):
    g = torch.Generator().manual_seed(size)
    b, height, width = 16, 45, 53
    affine = _random_affines(b, height, width, size, g)
    view, index = warp_with_index(ramp(b, height, width), affine, size)
    _check_ramp(view, index, height, width)
    # Arbitrary angles leave corners outside the source: index 0 and image value 0 there.
    outside = index == 0
    assert outside.any()
    assert (view.permute(0, 2, 3, 1)[outside] == 0).all()


def test_large_source_positions_stay_exact():
    # 3000-pixel source: a float16 / TF32 path would be off by more than half a pixel.
    height, width, size = 8, 3000, 32
    boxes = torch.tensor([[2900.3, 0.0, 97.7, 8.0]])
    view, index = warp_with_index(
        ramp(1, height, width), _affine(boxes, size, hflip=True, angle=3.0), size
    )
    _check_ramp(view, index, height, width)
    assert math.isclose(
        float((index[index > 0] - 1).remainder(width).float().mean()), 2949, abs_tol=30
    )


def test_inside_only_shortcut_equals_the_checked_path():
    g = torch.Generator().manual_seed(1)
    b, height, width, size = 12, 30, 41, 24
    affine = _random_affines(b, height, width, size, g, angles=False)
    images = torch.rand(b, 3, height, width)
    checked = warp_with_index(images, affine, size, may_leave_source=True)
    fast = warp_with_index(images, affine, size, may_leave_source=False)
    assert (checked[1] > 0).all()  # crops, flips and rot90 never leave the source
    assert torch.equal(checked[1], fast[1]) and torch.equal(checked[0], fast[0])


def test_a_projective_map_divides_by_its_third_row():
    # A pure scaling written projectively (third row 2 * identity's) equals the affine map.
    images = torch.rand(2, 2, 30, 30)
    affine = _affine(torch.tensor([[3.0, 4.0, 20.0, 18.0]] * 2), 16)
    projective = 2 * torch.cat([affine, torch.tensor([[[0.0, 0.0, 1.0]]] * 2)], dim=1)
    view_a, index_a = warp_with_index(images, affine, 16)
    view_p, index_p = warp_with_index(images, projective, 16)
    torch.testing.assert_close(view_p, view_a, atol=1e-5, rtol=0)
    assert torch.equal(index_p, index_a)
