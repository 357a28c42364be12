"""Sliding-window inference: coverage, bounds, equality with whole-image inference, streaming."""

import itertools

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from contrastseg.inference import (
    ArraySink,
    plan_windows,
    predict_file,
    sliding_window_logits,
    window_positions,
)


@pytest.mark.parametrize(
    ("length", "window", "stride"),
    [(100, 32, 32), (100, 32, 20), (37, 16, 5), (16, 16, 8), (10, 16, 8), (33, 32, 1)],
)
def test_window_positions_cover_every_pixel_and_stay_inside(length, window, stride):
    starts = window_positions(length, window, stride)
    size = max(length, window)  # an image shorter than the window is padded to it
    covered = np.zeros(size, dtype=int)
    for s in starts:
        assert 0 <= s and s + window <= size
        covered[s : s + window] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


def test_window_positions_reject_gaps():
    with pytest.raises(ValueError, match="skip pixels"):
        window_positions(100, 16, 17)
    with pytest.raises(ValueError, match="window and stride"):
        window_positions(100, 0, 1)


class Recorder(nn.Module):
    """Wraps a model and keeps every batch of windows it was given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.net(x)


def pointwise_model(bands=3, classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(bands, 8, 1), nn.Tanh(), nn.Conv2d(8, classes, 1)).eval()


def test_pointwise_model_matches_whole_image_and_reads_only_inside():
    image = torch.randn(2, 3, 37, 53)  # not divisible by the window
    model = Recorder(pointwise_model())
    out = sliding_window_logits(model, image, window=16, stride=12, batch_size=5)
    whole = model.net(image)
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)
    # every window the model saw is a crop of the image at an in-bounds position
    plan = plan_windows(37, 53, 16, 12)
    crops = torch.cat(model.seen)
    assert crops.shape == (2 * len(plan.rows) * len(plan.cols), 3, 16, 16)
    expected = torch.stack(
        [
            image[b, :, r : r + 16, c : c + 16]
            for b in range(2)
            for r in plan.rows
            for c in plan.cols
        ]
    )
    torch.testing.assert_close(crops, expected, rtol=0, atol=0)


def test_overlapping_windows_average_like_a_numpy_transcription():
    # 3x3 convolution: a window's border pixels differ from the whole-image output, so the
    # result depends on the overlap averaging; oracle = explicit per-pixel mean in numpy.
    torch.manual_seed(1)
    model = nn.Conv2d(2, 3, 3, padding=1).eval()
    image = torch.randn(1, 2, 29, 41)
    window, stride = 12, 7
    out = sliding_window_logits(model, image, window, stride, batch_size=3)
    total = np.zeros((3, 29, 41))
    count = np.zeros((29, 41))
    for r in window_positions(29, window, stride):
        for c in window_positions(41, window, stride):
            with torch.no_grad():
                y = model(image[:, :, r : r + window, c : c + window])[0].numpy()
            total[:, r : r + window, c : c + window] += y
            count[r : r + window, c : c + window] += 1
    np.testing.assert_allclose(out[0].numpy(), total / count, rtol=1e-5, atol=1e-5)
    # pixels at least one pixel inside every window that covers them equal whole-image inference
    whole = model(image).detach()[0].numpy()
    interior = np.ones((29, 41), dtype=bool)
    for r in window_positions(29, window, stride):
        for c in window_positions(41, window, stride):
            edge = np.zeros((29, 41), dtype=bool)
            edge[r : r + window, c : c + window] = True
            edge[
                r + (r > 0) : r + window - (r + window < 29),
                c + (c > 0) : c + window - (c + window < 41),
            ] = False
            interior &= ~edge
    assert interior.sum() > 100
    np.testing.assert_allclose(
        out[0].numpy()[:, interior], whole[:, interior], rtol=1e-5, atol=1e-5
    )


def test_image_smaller_than_window_is_padded_and_cropped_back():
    image = torch.randn(1, 3, 9, 13)
    model = Recorder(pointwise_model())
    out = sliding_window_logits(model, image, window=16, stride=8)
    assert out.shape == (1, 4, 9, 13)
    torch.testing.assert_close(out, model.net(image), rtol=1e-5, atol=1e-5)
    seen = model.seen[0][0]
    torch.testing.assert_close(seen[:, :9, :13], image[0])
    # reflection padding: row 9 mirrors row 7
    torch.testing.assert_close(seen[:, 9, :13], image[0, :, 7])


def test_flip_tta_of_an_equivariant_model_changes_nothing():
    image = torch.randn(1, 3, 30, 30)
    model = pointwise_model()
    plain = sliding_window_logits(model, image, 16, 8)
    tta = sliding_window_logits(model, image, 16, 8, flip=True)
    torch.testing.assert_close(plain, tta, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = pointwise_model()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sliding_window_logits(model, torch.randn(3, 20, 20), 16)
    with pytest.raises(ValueError, match="float"):
        sliding_window_logits(model, torch.zeros(1, 3, 20, 20, dtype=torch.uint8), 16)
    with pytest.raises(ValueError, match="resolution"):
        sliding_window_logits(nn.Conv2d(3, 2, 2, stride=2), torch.randn(1, 3, 20, 20), 16)


@pytest.mark.parametrize(("height", "width", "suffix"), [(45, 70, ".tif"), (11, 21, ".png")])
def test_streamed_file_prediction_equals_in_memory_prediction(tmp_path, height, width, suffix):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / f"image{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array, tile=(16, 16))
    else:
        Image.fromarray(array).save(path)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
    model.eval()
    image = torch.from_numpy(np.moveaxis(array, -1, 0).astype(np.float32))[None] / 255
    expected = sliding_window_logits(model, image, 16, 10, 4).argmax(1)[0].numpy()
    rows = []
    labels = np.full((height, width), -1, dtype=np.int64)
    sink = ArraySink(labels)

    def record(row, block):
        rows.append((row, block.shape[0]))
        sink.write(row, block)

    size = predict_file(
        model, path, record, 16, 10, 4, prepare=lambda a: torch.from_numpy(a).float() / 255
    )
    assert size == (height, width)
    # every row handed over exactly once, top to bottom
    assert [r for r, _ in rows] == list(np.cumsum([0] + [n for _, n in rows])[:-1])
    assert sum(n for _, n in rows) == height
    np.testing.assert_array_equal(labels, expected)
