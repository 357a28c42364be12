"""evaluate / predict (module: contrastseg/train/evaluate.py): nodata, failures, run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from contrastseg.data import write_demo_dataset
from contrastseg.train.evaluate import load_segmenter, run_predict
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config

TINY = [
    "run.progress=false", "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=32",
    "train.batch_size=4", "train.num_workers=0", "train.max_steps=1", "eval.window=32",
    "eval.stride=24", "eval.overlays=0", "model.arch=resnet18", "model.aspp_channels=16",
    "model.decoder_channels=16", "model.low_level_channels=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(module_tmp) -> Path:
    root = module_tmp
    data = write_demo_dataset(root / "demo", n_scenes=4, size=64, bands=4)
    config = load_finetune_config(
        None, [*TINY, f"data.root={data}", f"run.root={root}", "run.name=ft"]
    )
    return run_finetune(config).run_dir


def _float_image(
    path: Path, bands: int = 4, tag: str | None = "-9999", nan: bool = True
) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.random((bands, 40, 48), dtype=np.float32)
    image[:, :, :10] = -9999.0
    if nan:
        image[2, 30, 30] = np.nan
    tags = [] if tag is None else [(42113, "s", 0, tag, False)]
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate", extratags=tags)
    return image


def test_predict_keeps_nodata_pixels_as_nodata(finetuned, tmp_path):
    image = _float_image(tmp_path / "scene.tif")
    (out,) = run_predict(finetuned / "best.pt", [tmp_path / "scene.tif"], tmp_path / "pred")
    labels = tifffile.imread(out)
    missing = (image == -9999.0).all(0) | ~np.isfinite(image).all(0)  # oracle
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels == 255, missing)
    segmenter = load_segmenter(finetuned / "best.pt", "cpu")
    assert labels[~missing].max() < len(segmenter.classes)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.tags[42113].value == "255"
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "scene_labels.tif", "scene_preview.png"
    ]  # fmt: skip


def test_a_failed_prediction_leaves_no_file_and_names_the_input(finetuned, tmp_path):
    pred = tmp_path / "pred"
    _float_image(tmp_path / "three.tif", bands=3, nan=False)
    with pytest.raises(ValueError, match=r"three\.tif has 3 band\(s\) but the model takes 4"):
        run_predict(finetuned / "best.pt", [tmp_path / "three.tif"], pred)
    _float_image(tmp_path / "nan.tif", tag=None)
    with pytest.raises(ValueError, match=r"nan\.tif' has 1 NaN pixel"):
        run_predict(finetuned / "best.pt", [tmp_path / "nan.tif"], pred, fmt="png")
    assert list(pred.iterdir()) == []
    # an older result under the final name is not replaced by a failed run
    (pred / "three_labels.tif").write_bytes(b"old result")
    with pytest.raises(ValueError, match=r"three\.tif"):
        run_predict(finetuned / "best.pt", [tmp_path / "three.tif"], pred, overwrite=True)
    assert (pred / "three_labels.tif").read_bytes() == b"old result"
    # without overwrite the older result is refused before anything is predicted
    with pytest.raises(ValueError, match=r"already exist.*three_labels\.tif.*--overwrite"):
        run_predict(finetuned / "best.pt", [tmp_path / "three.tif"], pred)


def test_evaluate_and_predict_take_a_run_folder(finetuned, tmp_path, capsys):
    from contrastseg.cli import main

    assert main(["evaluate", "--checkpoint", str(finetuned), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ev")]) == 2
    assert "ev is a folder without best.pt" in capsys.readouterr().err
