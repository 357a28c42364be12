"""Deployment export: a fine-tuned segmenter as an ONNX model (``contrastseg export --format onnx``).

The ONNX graph takes ``input``, float32 ``(N, C, H, W)`` of any batch and size, the bands the
checkpoint was trained on (in its order) already divided by its scale (``uint8 / 255``,
``uint16 / 65535``, or ``/ scale`` when the checkpoint records one), normalises them with the
checkpoint's per-band mean and std inside the graph, and returns ``logits`` ``(N, K, H, W)``.
What a reader needs to prepare the input is written into the model's metadata
(``metadata_props``): ``contrastseg.bands``, ``contrastseg.scale``, ``contrastseg.mean``,
``contrastseg.std``, ``contrastseg.classes``, ``contrastseg.palette`` (JSON values) and
``contrastseg.input`` (a sentence). Needs the ``onnx`` extra (``onnx``, ``onnxscript``;
``onnxruntime`` to run it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastseg.utils.outputs import check_output_file

INPUT_NOTE = (
    "float32 (N, C, H, W), any N, H, W: the checkpoint's bands in its order, divided by "
    "contrastseg.scale (null = the file dtype's maximum, 255 for uint8, 65535 for uint16); "
    "the per-band mean/std normalisation happens inside the graph"
)


class NormalizedSegmenter(nn.Module):
    """``(x - mean) / std`` per band, then the network's logits at the input's size."""

    def __init__(self, model: nn.Module, mean: list[float] | None, std: list[float] | None):
        super().__init__()
        self.model = model
        # None = no centring / no scaling (one value broadcast over the bands)
        self.register_buffer("mean", torch.tensor(mean or [0.0]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _require_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as err:
        raise ImportError(
            f"export --format onnx needs the onnx extra ({err.name} is missing): "
            'pip install "contrastseg[onnx]"'
        ) from None
    return onnx


def export_onnx(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overwrite: bool = False,
    opset: int = 18,
) -> Path:
    """Write the fine-tuned segmenter of ``checkpoint`` as an ONNX model at ``out``.

    Args:
        checkpoint: a fine-tuning checkpoint (``best.pt``).
        out: the ``.onnx`` file; never the checkpoint itself, an existing file only with
            ``overwrite``. Written under a temporary name and renamed when complete.
        overwrite: replace an existing ``out``.
        opset: the ONNX opset.

    Raises:
        ImportError: the onnx extra is missing.
        ValueError: a pretraining checkpoint (no classifier), or an output that exists.
    """
    from contrastseg.train.evaluate import load_segmenter

    check_output_file(out, [checkpoint], overwrite)
    onnx = _require_onnx()
    segmenter = load_segmenter(checkpoint, "cpu")
    wrapped = NormalizedSegmenter(segmenter.model, segmenter.mean, segmenter.std).eval()
    channels = segmenter.payload["in_channels"]
    example = torch.rand(1, channels, 64, 64)
    dynamic = torch.export.Dim.DYNAMIC
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapped, (example,), input_names=["input"], output_names=["logits"],
                dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic}}, opset_version=opset,
                dynamo=True, verbose=False,
            )  # fmt: skip
        model = program.model_proto
        meta = {
            "bands": segmenter.bands, "scale": segmenter.scale, "mean": segmenter.mean,
            "std": segmenter.std, "classes": segmenter.classes, "palette": segmenter.palette,
        }  # fmt: skip
        for key, value in meta.items():
            model.metadata_props.add(key=f"contrastseg.{key}", value=json.dumps(value))
        model.metadata_props.add(key="contrastseg.input", value=INPUT_NOTE)
        model.doc_string = f"contrastseg segmenter from {Path(checkpoint).name}"
        onnx.save(model, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
