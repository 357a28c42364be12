"""``PairedViews``: two augmented views of a batch, on its device, with index maps.

GLCNet (Li et al., TGRS 2022) contrasts regions of two views that show the same ground
location, so every view pixel must remember its source pixel. Here both views and their
index maps are made for the whole batch at once on the images' device, with per-sample
parameters drawn from one generator and no Python loop over samples.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from contrastseg.augment import intensity
from contrastseg.augment.config import PipelineConfig, ViewsConfig
from contrastseg.augment.geometry import compose_view_affine, sample_crop_boxes, warp_with_index
from contrastseg.augment.intensity import apply_to_selected as _apply

#: Columns of the per-sample uniform draws of one pipeline (one draw each, always taken, so
#: the geometry of both views never depends on which intensity ops fire).
_HFLIP, _VFLIP, _ROT90_P, _ROT90_K, _ROT_P, _ROT_ANGLE = range(6)
_COLOR_P, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY_P, _BLUR_P, _SIGMA, _NOISE_P, _NOISE_STD = range(
    6, 16
)
_NUM_DRAWS = 16


class ViewPair(NamedTuple):
    """Two views of a batch and, for every view pixel, the source pixel it came from.

    Attributes:
        view1, view2: ``(B, C, S, S)`` views, dtype of the input.
        index1, index2: ``(B, S, S)`` int64; ``v > 0`` means source pixel
            ``v - 1 = row * W + col`` of the input, ``0`` means outside the source.
    """

    view1: Tensor
    view2: Tensor
    index1: Tensor
    index2: Tensor


class PairedViews(nn.Module):
    """Make ``view1 = t1(x)`` and ``view2 = t2(x)`` with index maps, batched on the device.

    Two engines (``config.engine``) with the same contract and the same op order (geometry,
    then colour (brightness, contrast, saturation, hue), grayscale, blur, noise, each on the
    samples its probability picks):

    - ``native``: geometry (crop, flips, rot90, rotation) is one affine map per view; the
      image is sampled bilinearly once and the index map takes the nearest source pixel of
      the same sampling position (see :mod:`contrastseg.augment.geometry`).
    - ``kornia``: each view is a sequence of ``kornia.augmentation`` modules, the built-in
      ops then ``extra``; the index map follows the product of the geometric ops'
      transform matrices (see :mod:`contrastseg.augment.kornia_views`). Kornia draws from
      the global generators, which are seeded from ``generator`` and restored afterwards.

    Args:
        config: the two pipelines; ``None`` for the GLCNet defaults.

    Example:
        >>> views = PairedViews(ViewsConfig(size=64))
        >>> pair = views(torch.rand(2, 4, 96, 96), torch.Generator().manual_seed(0))
        >>> pair.view1.shape, pair.index1.dtype
        (torch.Size([2, 4, 64, 64]), torch.int64)
    """

    def __init__(self, config: ViewsConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ViewsConfig()
        self.kornia: nn.ModuleList | None = None
        if self.config.engine == "kornia":
            from contrastseg.augment.kornia_views import KorniaView, build_ops

            self.kornia = nn.ModuleList(
                KorniaView(*build_ops(pipe, self.config, name))
                for name, pipe in (("t1", self.config.t1), ("t2", self.config.t2))
            )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> ViewPair:
        """Two views of ``images``.

        Args:
            images: ``(B, C, H, W)`` floating-point batch, on any device.
            generator: a ``torch.Generator`` on the images' device; the same generator
                state gives the same views. ``None`` draws from the device's default
                generator (seeded by ``torch.manual_seed``), so runs are reproducible only
                through the global seed.

        Returns:
            :class:`ViewPair`; views are in the input's dtype, index maps int64, also under
            ``torch.autocast`` (which is switched off inside).

        Raises:
            ValueError: ``images`` is not a 4-D float tensor, ``rgb_bands`` names a missing
                band while saturation or hue is on, or the generator is on another device.
        """
        self._check(images, generator)
        with torch.autocast(device_type=images.device.type, enabled=False):
            if self.kornia is not None:
                return self._kornia_views(images, generator)
            view1, index1 = self._view(images, self.config.t1, generator)
            view2, index2 = self._view(images, self.config.t2, generator)
        return ViewPair(view1, view2, index1, index2)

    def _kornia_views(self, images: Tensor, generator: torch.Generator | None) -> ViewPair:
        assert self.kornia is not None
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        with _seeded_global_rng(generator, images.device):
            (view1, index1), (view2, index2) = (view(work) for view in self.kornia)
        return ViewPair(view1.to(images.dtype), view2.to(images.dtype), index1, index2)

    def _check(self, images: Tensor, generator: torch.Generator | None) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            dtype = images.dtype if isinstance(images, Tensor) else None
            raise ValueError(f"PairedViews expects a float (B, C, H, W) batch, got {got} {dtype}")
        rgb = self.config.rgb_bands
        uses_rgb = any(
            pipe.color.p > 0 and (pipe.color.saturation > 0 or pipe.color.hue > 0)
            for pipe in (self.config.t1, self.config.t2)
        )
        if uses_rgb and rgb is not None and max(rgb) >= images.shape[1]:
            raise ValueError(
                f"views.rgb_bands = {rgb} names a band the {images.shape[1]}-band images lack; "
                "set rgb_bands to the RGB band indices, or None if there is no RGB triple"
            )
        if generator is not None and torch.device(generator.device).type != images.device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the images are on {images.device}; "
                "make it with torch.Generator(device=images.device)"
            )

    def _view(
        self, images: Tensor, pipe: PipelineConfig, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        b, _, height, width = images.shape
        size, device = self.config.size, images.device
        boxes = sample_crop_boxes(b, height, width, pipe.crop, generator, device)
        u = torch.rand(b, _NUM_DRAWS, generator=generator, device=device)

        def fires(column: int, p: float) -> Tensor:
            return u[:, column] < p

        def uniform(column: int, low: float, high: float) -> Tensor:
            return low + (high - low) * u[:, column]

        rot90_k = torch.where(
            fires(_ROT90_P, pipe.rot90.p), 1 + (u[:, _ROT90_K] * 3).long().clamp(max=2), 0
        )
        angle = torch.where(
            fires(_ROT_P, pipe.rotation.p), uniform(_ROT_ANGLE, *pipe.rotation.degrees), 0.0
        )
        affine = compose_view_affine(
            boxes,
            size,
            fires(_HFLIP, pipe.flip.horizontal_p),
            fires(_VFLIP, pipe.flip.vertical_p),
            rot90_k,
            angle,
        )
        view, index = warp_with_index(images, affine, size, may_leave_source=pipe.rotation.p > 0)

        if pipe.color.p > 0:
            view = _apply(
                fires(_COLOR_P, pipe.color.p), lambda x, pick: self._color(x, pipe, u, pick), view
            )
        if pipe.grayscale.p > 0:
            view = _apply(
                fires(_GRAY_P, pipe.grayscale.p), lambda x, pick: intensity.to_band_mean(x), view
            )
        if pipe.blur.p > 0:
            sigma = uniform(_SIGMA, *pipe.blur.sigma)
            kernel = intensity.gaussian_kernel_size(pipe.blur.sigma[1])
            view = _apply(
                fires(_BLUR_P, pipe.blur.p),
                lambda x, pick: intensity.gaussian_blur(x, pick(sigma), kernel),
                view,
            )
        if pipe.noise.p > 0:
            std = uniform(_NOISE_STD, *pipe.noise.std)
            view = _apply(
                fires(_NOISE_P, pipe.noise.p),
                lambda x, pick: self._clamp(intensity.gaussian_noise(x, pick(std), generator)),
                view,
            )
        return view, index

    def _color(
        self, view: Tensor, pipe: PipelineConfig, u: Tensor, pick: Callable[[Tensor], Tensor]
    ) -> Tensor:
        cfg = pipe.color
        u = pick(u)

        def factor(column: int, spread: float) -> Tensor:
            return (1 - spread + 2 * spread * u[:, column]).clamp_min(0)

        return intensity.color_jitter(
            view,
            factor(_BRIGHT, cfg.brightness),
            factor(_CONTRAST, cfg.contrast),
            factor(_SAT, cfg.saturation) if cfg.saturation > 0 else None,
            cfg.hue * (2 * u[:, _HUE] - 1) if cfg.hue > 0 else None,
            self.config.rgb_bands,
            self._clamp,
        )

    def _clamp(self, images: Tensor) -> Tensor:
        value_range = self.config.value_range
        return images if value_range is None else images.clamp(value_range[0], value_range[1])


@contextlib.contextmanager
def _seeded_global_rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Kornia draws from the global generators: seed them from ``generator``, then restore them.

    Kornia samples its parameters on the CPU; noise is drawn on the images' device. With
    ``generator=None`` the global generators are used (and advanced) as they are.
    """
    if generator is None:
        yield
        return
    # The seed is a hash of the generator's state, which lives on the host even for a CUDA
    # generator (reading a drawn number back would synchronise with the device every step);
    # then one draw advances the generator, so the next call gets another seed.
    state = generator.get_state().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") >> 1
    torch.empty(1, device=generator.device).uniform_(generator=generator)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
