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


TINY_PRETRAIN = [
    "run.progress=false", "run.image_every=0", "data.demo.n_scenes=2", "data.demo.size=64",
    "data.patch_size=48", "data.coverage=2.0", "views.size=32", "method.region_size=8",
    "train.batch_size=4", "train.max_steps=1",
]  # fmt: skip


def _set(overrides):
    return [arg for text in overrides for arg in ("--set", text)]


def test_views_stats_and_config_commands(tmp_path, capsys):
    png = tmp_path / "views.png"
    assert main(["views", "--count", "2", "--out", str(png), *_set(["data.demo.n_scenes=2"])]) == 0
    from PIL import Image

    with Image.open(png) as img:
        assert img.height > img.width / 3  # two rows of original / view 1 / view 2
    capsys.readouterr()
    kornia = ["views.t2.extra=[{name: RandomErasing, p: 0.5}]"]
    assert main(["views", "--count", "1", "--out", str(png), *_set(kornia)]) == 0
    assert (
        "t2: crop, hflip, vflip, rot90, color, grayscale, blur, noise + RandomErasing(p=0.5)"
        in (capsys.readouterr().out)
    )
    stats = tmp_path / "stats.yaml"
    assert main(["stats", "--max-samples", "4", "--out", str(stats)]) == 0
    import yaml

    assert len(yaml.safe_load(stats.read_text())["mean"]) == 4  # the demo scenes' 4 bands
    capsys.readouterr()
    assert main(["config", "--reference"]) == 0
    assert "| `method.lam` | float | `0.5` |" in capsys.readouterr().out
    assert main(["config", "--set", "method.lam=2"]) == 2
    assert "method.lam must lie in [0, 1], got 2.0" in capsys.readouterr().err


def test_export_of_a_pretraining_run_loads_into_torchvision(tmp_path, capsys):
    import torchvision

    assert main(["pretrain", *_set([*TINY_PRETRAIN, f"run.root={tmp_path}"]), "--name", "r"]) == 0
    out = tmp_path / "r18.pth"
    assert main(["export", str(tmp_path / "r"), "--out", str(out)]) == 0  # a run folder works
    state = torch.load(out, weights_only=True)
    model = torchvision.models.resnet18()
    model.conv1 = torch.nn.Conv2d(4, 64, 7, 2, 3, bias=False)  # the demo scenes have 4 bands
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    # a pretraining checkpoint has no classifier: evaluate says to fine-tune first
    capsys.readouterr()
    ckpt = next((tmp_path / "r" / "checkpoints").glob("step_*.pt"))
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    assert "finetune" in capsys.readouterr().err.lower()


def test_pretrain_with_kornia_views_and_extra_ops(tmp_path, capsys):
    # End to end with the 4-band demo scenes: Kornia pipelines, a random-band grayscale, an
    # extra intensity op and an extra geometric op in view 2.
    kornia = [
        "views.t2.grayscale.mode=random_band",
        "views.t2.extra=[{name: RandomMotionBlur, kernel_size: 5, angle: 30.0, direction: 0.5},"
        " {name: RandomAffine, degrees: 20.0, p: 0.5}]",
    ]
    args = _set([*TINY_PRETRAIN, *kornia, f"run.root={tmp_path}"])
    assert main(["pretrain", *args, "--name", "k"]) == 0
    assert next((tmp_path / "k" / "checkpoints").glob("step_*.pt"))
    capsys.readouterr()
    assert main(["config", "--set", "views.t2.extra=[{name: RandomElasticTransform}]"]) == 2
    assert "RandomElasticTransform is refused" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--window", "--stride"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_zero_window_or_stride_is_refused(tmp_path, capsys, flag, command):
    extra = [str(tmp_path / "x.tif"), "--out", str(tmp_path)] if command == "predict" else []
    code = main([command, "--checkpoint", str(tmp_path / "best.pt"), flag, "0", *extra])
    assert code == 2
    assert f"{flag} must be a positive number of pixels, got 0" in capsys.readouterr().err


def test_finetune_help_names_its_own_default_config(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: configs/finetune_demo.yaml" in out and "quickstart" not in out


def test_finetune_decoder_and_parts_reach_the_config(monkeypatch):
    import contrastseg.train.finetune as engine

    class Captured(Exception):
        pass

    def fake_run(config):
        raise Captured(config)

    monkeypatch.setattr(engine, "run_finetune", fake_run)
    with pytest.raises(Captured) as caught:
        main(["finetune", "--decoder", "fpn", "--parts", "encoder"])
    config = caught.value.args[0]
    assert config.model.name == "fpn" and config.pretrained.parts == "encoder"
