"""``PairedViews``: two augmented views of a batch, on its device, with index maps.

GLCNet (Li et al., TGRS 2022) contrasts regions of two views that show the same ground
location, so every view pixel must remember its source pixel. Here both views and their
index maps are made for the whole batch at once on the images' device, with per-sample
parameters drawn from one generator and no Python loop over samples.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from contrastseg.augment.config import ViewsConfig
from contrastseg.augment.pipeline import ViewPipeline, build_ops


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

    Each view is a :class:`~contrastseg.augment.pipeline.ViewPipeline` of
    ``kornia.augmentation`` modules: the geometric ones (crop, flips, rot90, rotation and
    geometric ``extra`` ops) compose into one source-to-view matrix and the image is resampled
    once from it, the index map naming the nearest source pixel of the same position; then
    the intensity modules (colour (brightness, contrast, saturation, hue), grayscale, blur,
    noise, intensity ``extra`` ops) run in order, each on the samples its probability picks.
    Kornia draws from the global generators, which are seeded from ``generator`` and
    restored afterwards.

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
        self.pipelines = nn.ModuleList(
            ViewPipeline(*build_ops(pipe, self.config, name), self.config.size)
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
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        with (
            torch.autocast(device_type=images.device.type, enabled=False),
            _seeded_global_rng(generator, images.device),
        ):
            (view1, index1), (view2, index2) = (view(work) for view in self.pipelines)
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
