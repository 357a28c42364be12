"""Coordinate ramps and the half-pixel rule, shared by the view tests (imported, not collected)."""

import torch


def ramp(b, height, width, bands=2):
    """``(b, bands, height, width)``: band 0 = column, band 1 = row, others 0.5."""
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    planes = [cols, rows] + [torch.full((height, width), 0.5)] * (bands - 2)
    return torch.stack(planes).expand(b, bands, height, width).contiguous()


def check_half_pixel_rule(view, index, height, width):
    """A view value of a ramp and the position its index names differ by <= half a pixel."""
    valid = index > 0
    assert valid.any()
    assert index.dtype == torch.int64 and index.min() >= 0 and index.max() <= height * width
    v = index[valid] - 1
    col, row = (v % width).float(), torch.div(v, width, rounding_mode="floor").float()
    assert (view[:, 0][valid] - col).abs().max() <= 0.5 + 1e-3
    assert (view[:, 1][valid] - row).abs().max() <= 0.5 + 1e-3
