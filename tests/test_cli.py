import subprocess
import sys

import pytest
import torch

import contrastseg
from contrastseg.cli import main


def test_info_prints_versions_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"contrastseg     {contrastseg.__version__}" in out
    assert torch.__version__ in out
    assert "device (auto)" in out and "torch threads" in out


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"contrastseg {contrastseg.__version__}"


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "contrastseg.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: contrastseg" in result.stdout and "info" in result.stdout
