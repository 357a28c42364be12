"""Fixtures shared by the augment tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_rng():
    """Every test sees the same global random stream, so unseeded test data is reproducible."""
    torch.manual_seed(0)
