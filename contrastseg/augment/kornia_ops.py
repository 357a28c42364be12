"""Kornia augmentation classes for multi-band views, and ``extra:`` ops built by name.

Our multi-band ops as ``kornia.augmentation`` classes, so that they mix with Kornia's own in
one sequence (Kornia's parameter generation, ``p`` and ``same_on_batch``):

- :class:`RandomBandColorJitter`: torchvision ``ColorJitter`` semantics in the fixed order
  brightness, contrast, saturation, hue; contrast around each band's own mean, saturation
  and hue on the named RGB bands only (Kornia's colour ops need exactly 3 channels).
- :class:`RandomBandGrayscale`: every band replaced by the band mean, or by one random band.
- :class:`RandomBandGaussianNoise`: additive noise with a per-sample std drawn from a range.
- :class:`RandomQuarterTurn`: rotation by k * 90 degrees, k uniform in {1, 2, 3}, done with
  ``torch.rot90`` (exact permutation, no resampling); Kornia's ``RandomRotation90`` rounds a
  continuous draw (k = 2 twice as likely as 1 or 3) and resamples bilinearly.

:func:`make_op` builds any op of ``kornia.augmentation`` (or of this module) from a config
mapping ``{name: ..., **arguments}`` and refuses the ones whose pixel mapping an index map
cannot follow.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation import random_generator as rg
from torch import Tensor, nn

from contrastseg.augment import geometry, intensity

#: Geometric Kornia ops whose image follows their ``transform_matrix`` (bilinear resampling,
#: pixel centres at integers) and keep the view's size: the index map can follow them.
#: Checked on a coordinate ramp in tests/augment/test_kornia_views.py.
TRACKED_GEOMETRIC = (
    "RandomAffine",
    "RandomHorizontalFlip",
    "RandomPerspective",
    "RandomQuarterTurn",
    "RandomRotation",
    "RandomRotation90",
    "RandomShear",
    "RandomTranslate",
    "RandomVerticalFlip",
)


class _ComputeSelectedOnly:
    """Mixin for per-sample Kornia ops: with ``p < 1`` on the CPU, compute only the chosen samples.

    Kornia's base computes every sample and blends with ``torch.where``, which keeps GPU runs
    free of host synchronisation but costs the skipped samples' work on a CPU; there the
    chosen rows are computed alone (:func:`~contrastseg.augment.intensity.apply_to_selected`).
    Only for ops whose parameters are all per sample (first dimension B).
    """

    def transform_inputs(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        always = self.p == 1.0 and self.p_batch == 1.0  # type: ignore[attr-defined]
        if always or input.device.type != "cpu" or kwargs or input.ndim != 4:
            return super().transform_inputs(input, params, flags, transform, **kwargs)  # type: ignore[misc]
        batch = input.shape[0]

        def op(x: Tensor, pick: Any) -> Tensor:
            # forward_input_shape is (B, C, H, W) itself, not one row per sample.
            chosen = {
                k: pick(v)
                if isinstance(v, Tensor)
                and v.ndim
                and v.shape[0] == batch
                and k != "forward_input_shape"
                else v
                for k, v in params.items()
            }
            chosen_transform = None if transform is None else pick(transform)
            return self.apply_transform(x, chosen, flags, chosen_transform)  # type: ignore[attr-defined]

        return intensity.apply_to_selected(params["batch_prob"] > 0.5, op, input, subset=True)


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Parameters (drawn on the CPU by Kornia) to the images' device without a synchronisation.

    A blocking copy from pageable host memory waits for the GPU's queue; a non-blocking one
    stages the source before it returns, so the source may be reused at once (as Kornia does).
    """
    non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()
    return tensor.to(device, non_blocking=non_blocking)


def _uniform_range(low: float, high: float) -> Tensor:
    return torch.tensor([float(low), float(high)])


def _clamp(images: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    return images if value_range is None else images.clamp(value_range[0], value_range[1])


class RandomBandColorJitter(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """Colour distortion for any band count (torchvision ``ColorJitter``, fixed order b, c, s, h).

    Factors are drawn uniformly from ``[max(0, 1 - x), 1 + x]`` (hue shift from
    ``[-hue, hue]`` turns), one per sample. Brightness and contrast act on every band, contrast
    around each band's spatial mean (a multi-band image has no luminance); saturation and hue
    act on ``rgb_bands``. Results are clamped to ``value_range`` after brightness, contrast
    and saturation, as torchvision does for ``[0, 1]`` images.

    Args:
        brightness, contrast, saturation: half-widths of the factor ranges (>= 0).
        hue: half-width of the hue shift range in turns, in [0, 0.5].
        rgb_bands: indices of the red, green and blue bands; ``None`` skips saturation and hue.
        value_range: ``(low, high)`` to clamp to, or ``None``.
        p: probability per sample.
        same_on_batch: one draw for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        rgb_bands: Sequence[int] | None = (0, 1, 2),
        value_range: tuple[float, float] | None = (0.0, 1.0),
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if saturation < 0 or not 0 <= hue <= 0.5:
            raise ValueError(
                f"saturation must be >= 0 and hue in [0, 0.5], got {saturation}, {hue}"
            )
        rgb = None if rgb_bands is None else tuple(int(b) for b in rgb_bands)
        self._param_generator = rg.PlainUniformGenerator(
            (_uniform_range(max(0.0, 1 - brightness), 1 + brightness), "brightness", None, None),
            (_uniform_range(max(0.0, 1 - contrast), 1 + contrast), "contrast", None, None),
            (_uniform_range(max(0.0, 1 - saturation), 1 + saturation), "saturation", None, None),
            (_uniform_range(-hue, hue), "hue", None, None),
        )
        self.flags = {
            "rgb_bands": rgb,
            "value_range": value_range,
            "saturation": rgb is not None and saturation > 0,
            "hue": rgb is not None and hue > 0,
        }

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Jitter ``(B, C, H, W)`` images with the ``(B,)`` factors in ``params``."""
        rgb = flags["rgb_bands"]
        if rgb is not None and (flags["saturation"] or flags["hue"]) and max(rgb) >= input.shape[1]:
            raise ValueError(
                f"rgb_bands = {list(rgb)} names a band the {input.shape[1]}-band images lack"
            )

        def factor(name: str) -> Tensor:
            return _to_device(params[name], input.device)

        return intensity.color_jitter(
            input,
            factor("brightness"),
            factor("contrast"),
            factor("saturation") if flags["saturation"] else None,
            factor("hue") if flags["hue"] else None,
            rgb,
            lambda x: _clamp(x, flags["value_range"]),
        )


class RandomBandGrayscale(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """ "Grayscale" for any band count: every band replaced by the band mean or a random band.

    Args:
        mode: ``"mean"`` (the mean over bands) or ``"random_band"`` (one band, uniform per sample).
        p: probability per sample.
        same_on_batch: one draw for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self, mode: str = "mean", p: float = 0.1, same_on_batch: bool = False, keepdim: bool = False
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if mode not in ("mean", "random_band"):
            raise ValueError(f"mode must be 'mean' or 'random_band', got {mode!r}")
        self.flags = {"mode": mode}

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``band``: ``(B,)`` int64, uniform over the ``batch_shape[1]`` bands."""
        draws = 1 if self.same_on_batch else batch_shape[0]
        band = (torch.rand(draws) * batch_shape[1]).long().clamp_(max=batch_shape[1] - 1)
        return {"band": band.expand(batch_shape[0])}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Replace every band of ``(B, C, H, W)`` images by the mean or ``params["band"]``."""
        if flags["mode"] == "mean":
            return intensity.to_band_mean(input)
        return intensity.to_one_band(input, _to_device(params["band"], input.device))


class RandomBandGaussianNoise(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """Additive ``N(0, std^2)`` noise, independent per pixel and band, ``std`` per sample.

    Kornia's ``RandomGaussianNoise`` has one fixed std; this draws it from a range, then
    clamps to ``value_range``. The noise comes from the global generator of the images'
    device (``PairedViews`` seeds it from its own generator).

    Args:
        std: ``(min, max)`` of the standard deviation, sampled uniformly.
        value_range: ``(low, high)`` to clamp to, or ``None``.
        p: probability per sample.
        same_on_batch: one std for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        std: tuple[float, float] = (0.01, 0.05),
        value_range: tuple[float, float] | None = (0.0, 1.0),
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if len(std) != 2 or not 0 <= std[0] <= std[1]:
            raise ValueError(f"std must be (min, max) with 0 <= min <= max, got {std}")
        self._param_generator = rg.PlainUniformGenerator((_uniform_range(*std), "std", None, None))
        self.flags = {"value_range": value_range}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """``(B, C, H, W)`` images plus noise of std ``params["std"]`` (``(B,)``)."""
        noisy = intensity.gaussian_noise(input, _to_device(params["std"], input.device), None)
        return _clamp(noisy, flags["value_range"])


class RandomQuarterTurn(_ComputeSelectedOnly, K.GeometricAugmentationBase2D):
    """Rotation of square images by k quarter turns, k uniform in {1, 2, 3} when applied.

    Turns like ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise on screen), an exact
    permutation of the pixels; ``transform_matrix`` is the exact rotation about the centre.

    Args:
        p: probability per sample.
        same_on_batch: one k for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(self, p: float = 0.5, same_on_batch: bool = False, keepdim: bool = False) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``k``: ``(B,)`` int64 quarter turns, uniform in {1, 2, 3}."""
        if batch_shape[-1] != batch_shape[-2]:
            raise ValueError(f"RandomQuarterTurn needs square images, got {tuple(batch_shape)}")
        draws = 1 if self.same_on_batch else batch_shape[0]
        k = 1 + (torch.rand(draws) * 3).long().clamp_(max=2)
        return {"k": k.expand(batch_shape[0])}

    def compute_transformation(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]
    ) -> Tensor:
        """``(B, 3, 3)`` maps input pixel ``(x, y)`` to output pixel ``(u, v)``."""
        k = _to_device(params["k"], input.device)
        # cos, sin of k * 90 degrees exactly, in {-1, 0, 1}.
        sign = 1 - 2 * torch.div(k, 2, rounding_mode="floor")
        cos = ((1 - k % 2) * sign).to(input.dtype)
        sin = ((k % 2) * sign).to(input.dtype)
        c = (input.shape[-1] - 1) / 2.0
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        # (u - c, v - c) = [[cos, sin], [-sin, cos]] (x - c, y - c): torch.rot90 with k = 1
        # sends input (x, y) to (y, W - 1 - x).
        rows = [
            torch.stack([cos, sin, c - c * (cos + sin)], dim=1),
            torch.stack([-sin, cos, c - c * (cos - sin)], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ]
        return torch.stack(rows, dim=1)

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Turn each ``(C, S, S)`` sample of the batch by its ``k``."""
        k = _to_device(params["k"], input.device)
        out = input
        for turns in (1, 2, 3):
            # The rows of each k are disjoint, so ``out`` still holds the input on them.
            out = intensity.apply_to_selected(
                k == turns, lambda x, pick, t=turns: torch.rot90(x, t, dims=(-2, -1)), out
            )
        return out

    def inverse_transform(
        self,
        input: Tensor,
        flags: dict[str, Any],
        transform: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Not needed for views (an index map records the mapping instead)."""
        raise NotImplementedError("RandomQuarterTurn has no inverse")


class GaussianBlur(_ComputeSelectedOnly, K.RandomGaussianBlur):
    """Kornia's ``RandomGaussianBlur``, computing only the chosen samples on the CPU."""


class ResizedCrop(K.RandomResizedCrop):
    """Kornia's ``RandomResizedCrop`` (resample mode), sampled in one ``grid_sample``.

    Parameters and ``transform_matrix`` are Kornia's; the image is sampled bilinearly at the
    positions the inverse matrix gives, as Kornia's ``warp_affine`` does, without its
    normalisation round trip and its two extra passes for one-pixel boxes (those fall back
    to Kornia's own path). Only for ``resample="bilinear"`` with ``align_corners=True``.
    """

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Crop and resize ``(B, C, H, W)`` to ``flags["size"]`` through ``transform``."""
        src = params["src"]
        one_pixel = ((src[:, 2] - src[:, 0]) == 0).any()
        fits = flags["cropping_mode"] == "resample" and flags["align_corners"]
        size = flags["size"]
        if not fits or transform is None or bool(one_pixel) or size[0] != size[1]:
            return super().apply_transform(input, params, flags, transform)
        exact = torch.float32 if input.device.type == "mps" else torch.float64
        to_source = torch.linalg.inv_ex(transform.to(exact)).inverse[:, :2].float()
        return geometry.resample(input, to_source, size[0]).to(input.dtype)


class HorizontalFlip(_ComputeSelectedOnly, K.RandomHorizontalFlip):
    """Kornia's ``RandomHorizontalFlip``, flipping only the chosen samples on the CPU."""


class VerticalFlip(_ComputeSelectedOnly, K.RandomVerticalFlip):
    """Kornia's ``RandomVerticalFlip``, flipping only the chosen samples on the CPU."""


#: Our classes, available to ``extra:`` by name like Kornia's.
OWN_OPS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        RandomBandColorJitter,
        RandomBandGrayscale,
        RandomBandGaussianNoise,
        RandomQuarterTurn,
    )
}


def _op_classes() -> dict[str, type[nn.Module]]:
    found: dict[str, type[nn.Module]] = {}
    for name in dir(K):
        obj = getattr(K, name)
        # Every module class, so that refused ones (mixing, 3D, containers) get a specific message.
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.endswith("Base2D"):
            found[name] = obj
    found.update(OWN_OPS)
    return found


def _tuples(value: Any) -> Any:
    """YAML lists as tuples (Kornia's ranges and sizes are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def make_op(spec: Mapping[str, Any], where: str = "extra") -> nn.Module:
    """Build the augmentation named by ``spec["name"]`` with the other keys as its arguments.

    Args:
        spec: ``{"name": <class of kornia.augmentation or of this module>, **arguments}``.
        where: the config key of ``spec``, named in errors (e.g. ``"extra[0]"``).

    Returns:
        The module, ready to call on ``(B, C, H, W)`` images.

    Raises:
        ValueError: no or an unknown name (close matches listed), an argument the op does not
            take, a value it refuses, or an op whose pixel mapping an index map cannot follow
            (non-rigid warps, crops and resizes, mixing of samples).
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"{where}: expected a mapping with the op's class as 'name' and its arguments, "
            f"e.g. {{name: RandomMotionBlur, kernel_size: 5, angle: 30.0, direction: 0.5}}, got {spec!r}"
        )
    name = spec["name"]
    classes = _op_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}: {name!r} is not an op of kornia.augmentation{hint}")
    cls = classes[name]
    if issubclass(cls, K.GeometricAugmentationBase2D) and name not in TRACKED_GEOMETRIC:
        raise ValueError(
            f"{where}: {name} is refused in a view: the index map follows only geometric ops "
            "that map the view onto itself through their transform_matrix "
            f"({', '.join(TRACKED_GEOMETRIC)}); non-rigid warps have no such matrix, and crops, "
            "resizes and pads change the view size (set views.size and the views' crop instead)"
        )
    if not issubclass(cls, K.IntensityAugmentationBase2D | K.GeometricAugmentationBase2D):
        raise ValueError(
            f"{where}: {name} is refused in a view: it is not an intensity op, nor a geometric op "
            "with a transform matrix the index map can follow (it warps without a matrix, mixes "
            "samples, or is not a per-image 2D op)"
        )
    kwargs = {k: _tuples(v) for k, v in spec.items() if k != "name"}
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    for key in kwargs:
        if key not in parameters:
            raise ValueError(
                f"{where}: {name} takes no argument {key!r}; it takes {', '.join(accepted)}"
            )
    try:
        op = cls(**kwargs)
    except Exception as err:  # Kornia raises ValueError, TypeError, AssertionError, ...
        raise ValueError(f"{where}: {name}({_arguments(kwargs)}) is refused: {err}") from err
    resample = getattr(op, "flags", {}).get("resample")
    if name in TRACKED_GEOMETRIC and resample is not None and resample.name != "BILINEAR":
        raise ValueError(
            f"{where}: {name} with resample={resample.name.lower()!r}: the index map is exact "
            "only for bilinear resampling (the default); drop the resample argument"
        )
    return op


def _arguments(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def op_label(spec: Mapping[str, Any]) -> str:
    """Short text of an ``extra:`` op for titles and logs, e.g. ``RandomMotionBlur(p=0.3)``."""
    args = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec.get('name')}({_arguments(args)})"
