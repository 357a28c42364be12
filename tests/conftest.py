"""Fixtures shared by the whole suite.

Disk: every training test writes checkpoints (a ResNet-18 DeepLabV3+ with its Adam state is
about 150 MB). pytest's ``tmp_path`` folders of passing tests are removed as each test ends
(``tmp_path_retention_policy = "failed"`` in pyproject.toml); ``module_tmp`` does the same for
the folders that a module's tests share, so the suite never holds more than a few runs at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request) -> Iterator[Path]:
    """A folder that the tests of one module share, removed when the module's tests end."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)
