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


README = DOC.parent.parent / "README.md"
API = DOC.parent.parent / "contrastseg" / "api.py"


def _calls_resolve(script: str, tmp_path, monkeypatch) -> list[str]:
    """Run ``script`` with the API's training functions only resolving their configs (every key
    they are given must be a real setting); returns the calls made."""
    import types

    import contrastseg
    from contrastseg import api

    made = []

    def pretrain(config=None, *, overrides=(), **sections):
        api.pretrain_config(config, overrides=overrides, **sections)
        made.append("pretrain")
        return types.SimpleNamespace(run_dir=tmp_path / "runs" / "quickstart")

    def finetune(config=None, *, pretrained=None, overrides=(), **sections):
        if pretrained is not None:
            sections = {**sections, "pretrained": {"path": str(pretrained)}}
        api.finetune_config(config, overrides=overrides, **sections)
        made.append("finetune")
        return types.SimpleNamespace(
            best_checkpoint=tmp_path / "best.pt", test_metrics={"kappa": 0.0}
        )

    monkeypatch.setattr(contrastseg, "pretrain", pretrain)
    monkeypatch.setattr(contrastseg, "finetune", finetune)
    for name in ("evaluate", "export"):
        monkeypatch.setattr(contrastseg, name, lambda *a, _n=name, **k: made.append(_n))
    exec(compile(script, "<doc>", "exec"), {})
    return made


def test_the_readme_python_example_names_real_settings(tmp_path, monkeypatch):
    """The README's Python lines run its configs through the config loader (the walkthrough
    above runs for real; this catches an unknown key, e.g. ``train.steps``, in seconds)."""
    (script,) = cells(README.read_text())
    assert _calls_resolve(script, tmp_path, monkeypatch) == ["pretrain", "finetune"]


def test_the_api_module_example_names_real_settings(tmp_path, monkeypatch):
    from contrastseg import api

    block = []
    for line in api.__doc__.split("::\n", 1)[1].splitlines():
        if line.strip() and not line.startswith("    "):
            break  # the end of the indented example
        block.append(line[4:])
    script = "\n".join(block)
    made = _calls_resolve(script, tmp_path, monkeypatch)
    assert made == ["pretrain", "finetune", "evaluate", "export"]


@pytest.mark.slow
def test_the_exported_encoder_loads_elsewhere_as_the_downstream_page_says(tmp_path):
    """docs/downstream.md, "Using the exported encoder elsewhere", as written: the quickstart,
    ``contrastseg export``, then the page's Python block (torchvision, smp, contrastseg)."""
    pytest.importorskip("segmentation_models_pytorch")
    page = (DOC.parent / "downstream.md").read_text()
    (script,) = [c for c in cells(page) if "resnet18_glcnet.pth" in c]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["pretrain"], ["export", "runs/quickstart", "--out", "resnet18_glcnet.pth"]):
        proc = subprocess.run(
            [sys.executable, "-m", "contrastseg.cli", *args],
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    # torchvision: only the classifier is missing; contrastseg: the backbone and ASPP loaded
    assert "missing_keys=['fc.weight', 'fc.bias']" in proc.stdout
    assert "unexpected_keys=[]" in proc.stdout
