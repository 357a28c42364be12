import pytest
import torch

from contrastseg.models import GlobalProjectionHead, LocalProjectionHead, ProjectionHead


def test_default_widths_follow_glcnet():
    assert GlobalProjectionHead().dims == (512, 256, 64)
    assert LocalProjectionHead().dims == (256, 64, 64, 64)
    assert GlobalProjectionHead()(torch.randn(4, 512)).shape == (4, 64)
    assert LocalProjectionHead()(torch.randn(6, 256)).shape == (6, 64)


def test_structure_with_and_without_batch_norm():
    head = ProjectionHead([8, 16, 4], batch_norm=True)
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.layers[0].bias is None and head.layers[-1].bias is not None
    plain = ProjectionHead([8, 16, 4], batch_norm=False)
    assert [type(m).__name__ for m in plain.layers] == ["Linear", "ReLU", "Linear"]
    # a plain head is the composition of its layers: check against a hand computation
    x = torch.randn(5, 8)
    lin1, lin2 = plain.layers[0], plain.layers[2]
    expected = torch.relu(x @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    torch.testing.assert_close(plain(x), expected)


def test_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        ProjectionHead([8])
    with pytest.raises(ValueError, match=r"expects \(N, 512\)"):
        GlobalProjectionHead()(torch.randn(4, 256))
