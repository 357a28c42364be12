"""The Python API walkthrough (docs/python-api.md) runs as written, top to bottom."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def cells(text: str) -> list[str]:
    """The ``python`` code blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_page_has_its_cells():
    found = cells(DOC.read_text())
    assert len(found) >= 5 and "contrastseg.pretrain(" in found[0]


@pytest.mark.slow
def test_the_walkthrough_runs_top_to_bottom(tmp_path):
    pytest.importorskip("onnxruntime")  # the export cell writes an ONNX model
    script = "\n".join(cells(DOC.read_text()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    # what the cells say they write
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["api-demo", "api-demo-ft"]
    assert (tmp_path / "runs" / "api-demo-ft" / "best.pt").is_file()
    assert list((tmp_path / "predictions").glob("*.png"))
    assert (tmp_path / "resnet18_glcnet.pth").is_file() and (tmp_path / "segmenter.onnx").is_file()
