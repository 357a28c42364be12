"""The whole pretraining step of contrastseg against the usual peer composition, interleaved.

contrastseg's step is the engine's own (:func:`~contrastseg.train.pretrain_task.build_pretrain_step`,
the seam ``pretrain_step.py`` times): its loader workers only read uint8 patches; the views,
index maps, region matching and normalisation run batched on the device (Kornia), then the
forward, the losses, backward and the optimizer step.

The peer composition is what a GLCNet / SimCLR run is usually assembled from:

* a ``torch.utils.data.Dataset`` whose ``__getitem__`` reads the same patch (the same
  :class:`~contrastseg.data.UnlabeledDataset` read), makes the two views per sample with
  ``torchvision.transforms.v2`` (the index map of the patch travels with the image as a
  ``tv_tensors.Mask``, nearest-resampled, as the official GLCNet code's ``join_transform``
  does with ``cv2``) and, for GLCNet, draws the region pairs per sample from the two index
  maps (centres on source pixels whose window fits in both views, the official
  ``get_index`` rule with overlapping windows allowed), run by a ``DataLoader`` with the
  same worker count, batch and prefetch as contrastseg's;
* ``segmentation_models_pytorch.DeepLabV3Plus`` with the same ResNet, output stride, ASPP
  rates and widths (``decoder_aspp_separable=False``, no pretrained weights); the global
  branch reads its ASPP output, the local branch its decoder output;
* the same projection heads (``nn.Sequential`` MLPs of the same widths);
* ``lightly.loss.NTXentLoss`` for the global branch (and SimCLR), and for the local branch
  too, over the matched regions' embeddings (lightly has no GLCNet local loss; NT-Xent over
  all regions of the batch is its formula, as contrastseg's ``LocalMatchingLoss`` with
  ``decoupled: false``); regions are pooled with ``torchvision.ops.roi_align`` (one output
  cell, adaptive sampling) on the stride-4 decoder features, the official code's RoI pooling;
* ``torch.optim.Adam`` with the config's settings and a cosine schedule.

Loss check (before timing, per method and size): on one peer batch (the same views and
region pairs for both sides) with the heads' weights copied, lightly's NT-Xent equals
contrastseg's ``nt_xent``, and the global / local / SimCLR losses of both sides on the same
features agree (asserted to ``--tolerance``). The networks are compared, not asserted: the
ResNet encoders with copied weights (equal under the dilation convention reported), and the
ASPP + decoder, which are not the same architecture (smp adds a separable 3x3 convolution
after ASPP and fuses with one 3x3 separable convolution where contrastseg has two 3x3
convolutions); their parameter counts and forward FLOPs are reported per side.

Timing: each case (method x size x threads x workers) builds both sides once, then times
them in alternating blocks (A B, B A, ...): per block a fresh loader iterator (so only the
timed side's workers are alive), one untimed step (worker start-up), then ``--steps`` timed
whole steps (waiting for the batch, views and matching where each side makes them, forward,
backward, update). images/s = images / time summed over a side's blocks; ratio =
contrastseg / peer; the ratio of each block pair is kept too.

Usage::

    python benchmarks/vs_peers.py [--quick] [--sizes quick paper] [--threads 1 2] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))

from _common import add_device_argument, machine_info, print_table, write_json
from pretrain_step import case_config, data_area

from contrastseg.augment.config import PipelineConfig, ViewsConfig
from contrastseg.augment.intensity import gaussian_kernel_size
from contrastseg.augment.pooling import pool_regions
from contrastseg.config import PretrainConfig
from contrastseg.data import UnlabeledDataset, build_loader, set_loader_epoch, write_demo_dataset
from contrastseg.losses.ntxent import nt_xent
from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import DeepLabFeatures
from contrastseg.models.deeplab import aspp_rates
from contrastseg.train.model import build_network
from contrastseg.train.pretrain_task import PretrainStep, build_pretrain_step
from contrastseg.train.runtime import seed_everything

#: Case sizes: the quick CPU size and the paper's (GLCNet: ResNet-50, 224 px views of 256 px
#: patches, 48 px regions); views, patches and regions keep the paper's ratios.
SIZES = {"quick": {"arch": "resnet18", "view": 96}, "paper": {"arch": "resnet50", "view": 224}}
CONFIGS = {"glcnet": "glcnet_potsdam.yaml", "simclr": "simclr_potsdam.yaml"}
BANDS = 3  # RGB, so that torchvision's colour jitter (saturation, hue) applies as in contrastseg


def _peers() -> tuple[Any, Any, Any]:
    """``(smp, lightly.loss, torchvision)``; the benchmark's optional extra ``peers``."""
    try:
        import lightly.loss
        import segmentation_models_pytorch as smp
        import torchvision
        import torchvision.ops
        import torchvision.transforms.v2
        import torchvision.tv_tensors
    except ImportError as err:
        raise SystemExit(
            f"vs_peers needs the peer libraries ({err.name} is missing): "
            "pip install 'contrastseg[peers]'"
        ) from err
    return smp, lightly.loss, torchvision


# ---------------------------------------------------------------- the peer's data side


class RandomNoise(nn.Module):
    """Additive Gaussian noise of a per-sample std drawn from ``std`` (image only), clamped."""

    def __init__(self, std: tuple[float, float], value_range: tuple[float, float] | None):
        super().__init__()
        self.std, self.value_range = std, value_range

    def forward(self, image: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        std = float(torch.empty(()).uniform_(*self.std))
        noisy = image + std * torch.randn_like(image)
        if self.value_range is not None:
            noisy = noisy.clamp(*self.value_range)
        return type(image)(noisy) if type(image) is not Tensor else noisy, index


def peer_pipeline(pipe: PipelineConfig, views: ViewsConfig) -> Callable:
    """One view of a contrastseg pipeline as per-sample ``torchvision.transforms.v2`` ops.

    Called on ``(Image, Mask)``: the geometric ops move the index map with the image
    (nearest for the mask, fill 0 = outside), the intensity ops touch the image only.
    Differences from contrastseg's view: each geometric op resamples in turn (contrastseg
    composes them into one warp), ``grayscale`` is torchvision's luminance (contrastseg's
    ``mean`` mode averages the bands).
    """
    _, _, tv = _peers()
    v2 = tv.transforms.v2
    size = views.size
    ops: list[Any] = [v2.RandomResizedCrop(size, scale=pipe.crop.scale, ratio=pipe.crop.ratio)]
    if pipe.flip.horizontal_p > 0:
        ops.append(v2.RandomHorizontalFlip(pipe.flip.horizontal_p))
    if pipe.flip.vertical_p > 0:
        ops.append(v2.RandomVerticalFlip(pipe.flip.vertical_p))
    if pipe.rot90.p > 0:
        turns = [v2.RandomRotation((a, a)) for a in (90, 180, 270)]
        ops.append(v2.RandomApply([v2.RandomChoice(turns)], p=pipe.rot90.p))
    if pipe.rotation.p > 0:
        ops.append(v2.RandomApply([v2.RandomRotation(pipe.rotation.degrees)], p=pipe.rotation.p))
    c = pipe.color
    if c.p > 0:
        jitter = v2.ColorJitter(c.brightness, c.contrast, c.saturation, c.hue)
        ops.append(v2.RandomApply([jitter], p=c.p))
    if pipe.grayscale.p > 0:
        ops.append(v2.RandomGrayscale(pipe.grayscale.p))
    if pipe.blur.p > 0:
        k = gaussian_kernel_size(pipe.blur.sigma[1])
        ops.append(v2.RandomApply([v2.GaussianBlur(k, pipe.blur.sigma)], p=pipe.blur.p))
    if pipe.noise.p > 0:
        noise = RandomNoise(pipe.noise.std, views.value_range)
        ops.append(v2.RandomApply([noise], p=pipe.noise.p))
    if pipe.extra:
        raise ValueError("vs_peers: views with extra ops have no torchvision translation here")
    return v2.Compose(ops)


def match_regions_per_sample(
    index1: Tensor, index2: Tensor, n: int, size: int, num_source: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Region pairs of one sample from its two index maps (``(S, S)``, source pixel + 1, 0 outside).

    The official ``get_index`` rule, vectorised: a centre is a source pixel seen at a
    position of view 1 whose ``size`` window fits in the view, and seen in view 2 where its
    window fits too (its first such position there); ``n`` distinct centres are drawn.

    Returns:
        ``boxes1``, ``boxes2`` ``(n, 4)`` float ``x1, y1, x2, y2`` in view pixels, ``valid``
        ``(n,)`` bool (False when the views share no such pixel).
    """
    half = size // 2
    lo, hi = half, index1.shape[-1] - size + half  # centres whose window fits
    inner1, inner2 = index1[lo : hi + 1, lo : hi + 1], index2[lo : hi + 1, lo : hi + 1]
    width = inner1.shape[-1]
    where2 = torch.full((num_source + 1,), -1, dtype=torch.long)
    flat2 = inner2.reshape(-1)
    # first occurrence wins: scatter in reverse order
    where2[flat2.flip(0)] = torch.arange(flat2.numel() - 1, -1, -1)
    where2[0] = -1
    flat1 = inner1.reshape(-1)
    candidates = torch.nonzero(where2[flat1] >= 0).reshape(-1)
    if candidates.numel() == 0:
        zeros = torch.zeros(n, 4)
        return zeros, zeros.clone(), torch.zeros(n, dtype=torch.bool)
    pick = candidates[torch.randperm(candidates.numel())[:n]]
    if pick.numel() < n:  # fewer candidates than regions: repeat some
        pick = pick[torch.arange(n) % pick.numel()]
    pos2 = where2[flat1[pick]]

    def boxes(pos: Tensor) -> Tensor:
        x1, y1 = pos % width, pos // width  # window corner = centre - half
        return torch.stack([x1, y1, x1 + size, y1 + size], dim=-1).float()

    return boxes(pick), boxes(pos2), torch.ones(n, dtype=torch.bool)


class PeerDataset(Dataset):
    """The same patches as contrastseg's loader reads, with the views (and regions) made per sample.

    ``__getitem__`` returns ``(view1, view2)`` normalised float32 ``(C, S, S)``, plus
    ``(boxes1, boxes2, valid)`` of ``num_regions`` region pairs when ``region_size`` is set.
    """

    def __init__(
        self,
        patches: UnlabeledDataset,
        views: ViewsConfig,
        mean: list[float],
        std: list[float],
        num_regions: int = 0,
        region_size: int | None = None,
    ) -> None:
        _, _, tv = _peers()
        v2 = tv.transforms.v2
        self.patches = patches
        self.to_float = v2.ToDtype(torch.float32, scale=True)
        self.t1, self.t2 = peer_pipeline(views.t1, views), peer_pipeline(views.t2, views)
        self.normalize = v2.Normalize(mean, std)
        self.num_regions, self.region_size = num_regions, region_size
        self.tv_tensors = tv.tv_tensors

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        patch = self.patches[i]  # uint8 (C, H, W), the read contrastseg's workers do
        h, w = patch.shape[-2:]
        image = self.to_float(self.tv_tensors.Image(patch))
        index = self.tv_tensors.Mask(torch.arange(1, h * w + 1).reshape(1, h, w))
        view1, index1 = self.t1(image, index)
        view2, index2 = self.t2(image, index)
        views = (
            self.normalize(view1).as_subclass(Tensor),
            self.normalize(view2).as_subclass(Tensor),
        )
        if not self.region_size:
            return views
        regions = match_regions_per_sample(
            index1[0].as_subclass(Tensor), index2[0].as_subclass(Tensor),
            self.num_regions, self.region_size, h * w,
        )  # fmt: skip
        return (*views, *regions)


# ------------------------------------------------------------- the peer's model side


def mlp(dims: list[int], batch_norm: bool = True) -> nn.Sequential:
    """SimCLR-style MLP: Linear (-> BN) -> ReLU per hidden layer, a plain Linear last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last or not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PeerModel(nn.Module):
    """smp DeepLabV3+ with GLCNet's (or SimCLR's) heads and lightly's NT-Xent."""

    def __init__(self, config: PretrainConfig, bands: int, network: str = "smp") -> None:
        super().__init__()
        smp, losses, _ = _peers()
        m, method = config.model, config.method
        self.method, self.network = method.name, network
        if network == "same":  # contrastseg's own network, to isolate the rest of the step
            self.net = build_network(m, bands)
        elif network != "smp":
            raise ValueError(f"peer network must be smp or same, got {network!r}")
        else:
            self.net = self._smp(smp, m, bands)
            self.net.decoder.aspp.register_forward_hook(self._keep_aspp)
        width = m.aspp_channels
        if self.method == "glcnet":
            self.global_head = mlp([2 * width, *method.global_head], method.head_batch_norm)
            self.local_head = mlp([m.decoder_channels, *method.local_head], method.head_batch_norm)
        elif self.method == "simclr":
            self.global_head = mlp([width, *method.global_head], method.head_batch_norm)
        else:
            raise ValueError(f"vs_peers times glcnet and simclr, not {self.method!r}")
        self.ntxent = losses.NTXentLoss(temperature=method.temperature)
        self.lam = getattr(method, "lam", 1.0)
        self._aspp: Tensor | None = None

    @staticmethod
    def _smp(smp: Any, m: Any, bands: int) -> nn.Module:
        """smp's DeepLabV3+ with contrastseg's ResNet, output stride, ASPP rates and widths."""
        net = smp.DeepLabV3Plus(
            encoder_name=m.arch,
            encoder_weights=None,
            encoder_output_stride=m.output_stride,
            decoder_channels=m.aspp_channels,
            decoder_atrous_rates=aspp_rates(m.output_stride),
            decoder_aspp_separable=m.separable,
            decoder_aspp_dropout=m.aspp_dropout,
            in_channels=bands,
            classes=1,
        )
        net.segmentation_head = nn.Identity()  # pretraining: no classifier
        return net

    def _keep_aspp(self, module: nn.Module, args: Any, out: Tensor) -> None:
        self._aspp = out

    def features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(encoder, decoder)``: smp's ASPP output and (GLCNet) its decoder output."""
        if self.network == "same":
            feats = self.net.forward_features(x, decoder=self.method == "glcnet")
            return feats.encoder, feats.decoder
        stages = self.net.encoder(x)
        if self.method == "simclr":
            return self.net.decoder.aspp(stages[-1]), None
        decoder = self.net.decoder(stages)
        return self._aspp, decoder

    def pool(self, decoder: Tensor, boxes: Tensor) -> Tensor:
        """``(B * n, C)`` RoI-aligned means of the decoder features over ``(B, n, 4)`` boxes."""
        _, _, tv = _peers()
        b, n = boxes.shape[:2]
        batch_index = torch.arange(b, dtype=boxes.dtype).repeat_interleave(n)[:, None]
        rois = torch.cat([batch_index, boxes.reshape(-1, 4)], dim=1)
        stride = 4  # smp's decoder output: stride 4
        pooled = tv.ops.roi_align(decoder, rois, 1, 1 / stride, -1, aligned=True)
        return pooled.flatten(1)

    def losses(
        self,
        feats1: tuple[Tensor, Tensor | None],
        feats2: tuple[Tensor, Tensor | None],
        regions: tuple[Tensor, Tensor, Tensor] | None = None,
        pooled: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        (enc1, dec1), (enc2, dec2) = feats1, feats2
        if self.method == "simclr":
            z = self.global_head(torch.cat([enc1.mean((2, 3)), enc2.mean((2, 3))]))
            loss = self.ntxent(*z.chunk(2))
            return {"total": loss, "global": loss}
        style = lambda e: torch.cat([e.mean((2, 3)), e.flatten(2).var(2)], dim=1)  # noqa: E731
        z = self.global_head(torch.cat([style(enc1), style(enc2)]))
        out = {"global": self.ntxent(*z.chunk(2))}
        if pooled is None:
            boxes1, boxes2, valid = regions
            pooled = self.pool(dec1, boxes1), self.pool(dec2, boxes2)
            keep = valid.reshape(-1)
            pooled = pooled[0][keep], pooled[1][keep]
        z = self.local_head(torch.cat(pooled))
        out["local"] = self.ntxent(*z.chunk(2))
        out["total"] = self.lam * out["global"] + (1 - self.lam) * out["local"]
        return out

    def forward(self, view1: Tensor, view2: Tensor, *regions: Tensor) -> dict[str, Tensor]:
        return self.losses(self.features(view1), self.features(view2), regions or None)


class PeerStep:
    """The peer's training step: next batch from its loader -> forward -> backward -> Adam."""

    def __init__(
        self, config: PretrainConfig, bands: int, device: torch.device, network: str = "smp"
    ) -> None:
        self.model = PeerModel(config, bands, network).to(device)
        o = config.optim
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, 10**6)
        self.device = device

    def step(self, batch: tuple[Tensor, ...]) -> dict[str, Tensor]:
        batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
        out = self.model(*batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        self.optimizer.step()
        self.schedule.step()
        return out


# ------------------------------------------------------------------------ one case


def _settings_for(method: str, size: str, s: dict[str, Any]) -> dict[str, Any]:
    view = SIZES[size]["view"]
    patch, region = round(view * 256 / 224), max(1, round(48 * view / 224))  # recipe ratios
    return {
        **s,
        "config": CONFIGS[method],
        "view": view,
        "patch": patch,
        "region": region,
        "overrides": [f"data.bands={list(range(BANDS))}", *s["overrides"]],
    }


def build_sides(
    method: str, size: str, batch: int, workers: int, s: dict[str, Any], network: str = "smp"
) -> tuple[PretrainConfig, UnlabeledDataset, PretrainStep, PeerStep, PeerDataset]:
    """Both sides of one case, the same config (``pretrain_step.case_config``) behind each."""
    st = _settings_for(method, size, {**s, "workers": workers})
    defaults = s.get("contrastseg_settings") == "defaults"
    case = {"arch": SIZES[size]["arch"], "batch": batch, "amp": "auto" if defaults else "off",
            "channels_last": "auto" if defaults else False, "compile": False}  # fmt: skip
    st["data_area"] = data_area(st)
    config = case_config(case, st)
    device = torch.device(s["device"])
    seed_everything(config.train.seed, False, device)
    dataset = UnlabeledDataset(config.data)
    mean, std = [0.5] * BANDS, [0.25] * BANDS  # the costs do not depend on the values
    engine = build_pretrain_step(config, BANDS, device, dataset.nodata, (mean, std))
    peer = PeerStep(config, BANDS, device, network)
    regions = (
        (config.method.num_regions, config.method.region_size) if method == "glcnet" else (0, None)
    )
    peer_data = PeerDataset(dataset, config.views, mean, std, *regions)
    return config, dataset, engine, peer, peer_data


def _loaders(config: PretrainConfig, dataset: UnlabeledDataset, peer_data: PeerDataset):
    batch, workers, seed = config.train.batch_size, config.train.num_workers, config.train.seed

    def ours(epoch: int) -> DataLoader:
        loader = build_loader(dataset, batch, workers, seed=seed)
        set_loader_epoch(loader, epoch)
        return loader

    def peers(epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        return DataLoader(  # the same batch, workers and prefetch as build_loader's
            peer_data, batch_size=batch, shuffle=True, generator=generator, drop_last=True,
            num_workers=workers, persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
        )  # fmt: skip

    return ours, peers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(
    make_loader: Callable[[int], DataLoader],
    step: Callable[[Any], Any],
    epoch: int,
    steps: int,
    device: torch.device,
) -> list[float]:
    """Seconds of ``steps`` whole steps (batch wait included) after one untimed step."""
    loader = make_loader(epoch)
    batches = iter(loader)
    step(next(batches))  # worker start-up (and, in the first block, lazy initialisation)
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(next(batches))
        _sync(device)
        times.append(time.perf_counter() - start)
    del batches, loader  # ends this side's workers before the other side runs
    gc.collect()
    return times


def run_case(case: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Time contrastseg and the peer on one case, in alternating blocks."""
    torch.set_num_threads(case["threads"])
    device = torch.device(s["device"])
    config, dataset, engine, peer, peer_data = build_sides(
        case["method"], case["size"], case["batch"], case["workers"], s, case["peer_net"]
    )
    ours, peers = _loaders(config, dataset, peer_data)
    sides = {
        "contrastseg": (ours, lambda b: engine.step(b.to(device))),
        "peer": (peers, peer.step),
    }
    times: dict[str, list[list[float]]] = {"contrastseg": [], "peer": []}
    for block in range(s["repeats"]):
        order = ("contrastseg", "peer") if block % 2 == 0 else ("peer", "contrastseg")
        for side in order:
            make_loader, step = sides[side]
            times[side].append(time_block(make_loader, step, block, s["steps"], device))
    images = case["batch"] * s["steps"] * s["repeats"]
    ips = {side: images / sum(map(sum, t)) for side, t in times.items()}
    block_ratios = [
        sum(p) / sum(c) for c, p in zip(times["contrastseg"], times["peer"], strict=True)
    ]
    return {
        "images_per_s": ips,
        "ratio": ips["contrastseg"] / ips["peer"],
        "block_ratios": block_ratios,
        "step_times_s": times,
    }


# ------------------------------------------------------------------------ loss check


def _copy_heads(engine: PretrainStep, peer: PeerModel) -> None:
    method = engine.task.model.method
    if peer.method == "simclr":
        peer.global_head.load_state_dict(method.global_head.layers.state_dict())
    else:
        peer.global_head.load_state_dict(method.global_loss.head.layers.state_dict())
        peer.local_head.load_state_dict(method.local_loss.head.layers.state_dict())


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def loss_check(method: str, size: str, s: dict[str, Any]) -> dict[str, Any]:
    """Both sides' losses on one batch with identical inputs; see the module docstring."""
    _, losses, _ = _peers()
    torch.manual_seed(0)
    batch = 4
    config, _, engine, peer, peer_data = build_sides(method, size, batch, 0, s)
    model, tol = engine.task.model, s["tolerance"]
    result: dict[str, Any] = {"method": method, "size": size, "tolerance": tol}

    # 1. NT-Xent: lightly against contrastseg on the same embeddings.
    z1, z2 = torch.randn(16, 64), torch.randn(16, 64)
    theirs = float(losses.NTXentLoss(temperature=0.5)(z1, z2))
    mine = float(nt_xent(z1, z2, 0.5, gather=False))
    result["ntxent"] = {"lightly": theirs, "contrastseg": mine, "abs_diff": abs(theirs - mine)}
    assert abs(theirs - mine) <= tol, result["ntxent"]

    # 2. The ResNet encoders with copied weights, in eval mode (running statistics).
    x = torch.randn(2, BANDS, SIZES[size]["view"], SIZES[size]["view"])
    smp_encoder = peer.model.net.encoder.eval()
    encoders = {}
    for convention in ("torchvision", "official"):
        ours = build_backbone(config.model.arch, BANDS, config.model.output_stride,
                              dilation_convention=convention).eval()  # fmt: skip
        smp_encoder.load_state_dict(ours.state_dict(), strict=False)
        with torch.no_grad():
            a, b = ours.stages(x), smp_encoder(x)
        encoders[convention] = {
            "layer1_rel_diff": _rel(b[2], a[0]),
            "layer4_rel_diff": _rel(b[-1], a[-1]),
        }
    result["encoder"] = encoders
    result["encoder_equal_under"] = [
        c for c, d in encoders.items() if max(d.values()) <= 1e-4
    ] or "neither"

    # 3. ASPP + decoder: not the same architecture; sizes and FLOPs per side.
    net = model.net
    xs = x.clone()  # two images (the ASPP pooling BatchNorm refuses one)
    result["networks"] = {
        "flops_of": f"one forward of {xs.shape[0]} images of {xs.shape[-1]} px",
        "contrastseg_params": sum(p.numel() for p in net.parameters()),
        "peer_params": sum(p.numel() for p in peer.model.net.parameters()),
        "contrastseg_forward_flops": _flops(
            lambda: net.forward_features(xs, decoder=method == "glcnet")
        ),
        "peer_forward_flops": _flops(lambda: peer.model.features(xs)),
    }

    # 4. The losses on identical inputs: one peer batch (views, region pairs), the peer's
    # features, the heads' weights copied; both sides in train mode (BatchNorm batch stats).
    _copy_heads(engine, peer.model)
    peer.model.train()
    model.train()
    loader = DataLoader(peer_data, batch_size=batch, shuffle=False)
    views = next(iter(loader))
    with torch.no_grad():
        feats1, feats2 = peer.model.features(views[0]), peer.model.features(views[1])
        feats1 = tuple(f.clone() if f is not None else None for f in feats1)
        feats2 = tuple(f.clone() if f is not None else None for f in feats2)
        if method == "simclr":
            theirs = peer.model.losses(feats1, feats2)["total"]
            mine = model.method(DeepLabFeatures(*feats1), DeepLabFeatures(*feats2))["total"]
            result["simclr"] = _pair(theirs, mine)
        else:
            boxes1, boxes2, valid = views[2:]
            assert bool(valid.all()), "no region pair in the check batch"
            pooled = peer.model.pool(feats1[1], boxes1), peer.model.pool(feats2[1], boxes2)
            theirs = peer.model.losses(feats1, feats2, pooled=pooled)
            m = model.method
            mine_global = m.global_loss(feats1[0], feats2[0])
            shape = (*boxes1.shape[:2], -1)
            mine_local = m.local_loss(pooled[0].reshape(shape), pooled[1].reshape(shape), valid)
            result["global"] = _pair(theirs["global"], mine_global)
            result["local"] = _pair(theirs["local"], mine_local)
            # how far roi_align (peer) is from contrastseg's exact box mean (pool_regions)
            exact = pool_regions(feats1[1], boxes1, 4).reshape(pooled[0].shape)
            result["pooling_rel_diff_roi_align_vs_box_mean"] = _rel(pooled[0], exact)
    for key in ("simclr", "global", "local"):
        if key in result:
            assert result[key]["abs_diff"] <= tol, (key, result[key])
    result["passed"] = True
    return result


def _pair(theirs: Tensor, mine: Tensor) -> dict[str, float]:
    return {"peer": float(theirs), "contrastseg": float(mine),
            "abs_diff": abs(float(theirs) - float(mine))}  # fmt: skip


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv`` as on the command line); returns what it writes as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="quick size, 1 thread, 0 and 2 workers"
    )
    add_device_argument(parser)
    parser.add_argument("--out", default="benchmarks/results/vs_peers.json")
    parser.add_argument("--methods", nargs="+", default=["simclr", "glcnet"], choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    parser.add_argument("--threads", nargs="+", type=int, default=None)
    parser.add_argument("--workers", nargs="+", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="quick size (default 8)")
    parser.add_argument("--paper-batch", type=int, default=None, help="paper size (default 8)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per block (3, quick 2)"
    )
    parser.add_argument("--paper-steps", type=int, default=None, help="at the paper size (1)")
    parser.add_argument("--repeats", type=int, default=None, help="blocks per side (3, quick 2)")
    parser.add_argument("--paper-repeats", type=int, default=None, help="at the paper size (2)")
    parser.add_argument(
        "--paper-workers", nargs="+", type=int, default=None, help="default --workers but 1"
    )
    parser.add_argument("--paper-threads", nargs="+", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="loss check, absolute")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--no-check", action="store_true", help="skip the loss check")
    parser.add_argument(
        "--contrastseg-settings",
        choices=["matched", "defaults"],
        default="matched",
        help="contrastseg's precision and memory format: matched (fp32, contiguous, as the "
        "peer; each side keeps the optimizer it builds by default: contrastseg torch's fused "
        "Adam, the peer torch.optim.Adam, a for-loop on a CPU) or defaults (train.amp and train.channels_last auto: on a CPU with native bf16, "
        "bf16 autocast and channels_last); the peer runs fp32 contiguous either way",
    )
    parser.add_argument(
        "--peer-nets",
        nargs="+",
        default=None,
        choices=["smp", "same"],
        help="the peer's network: smp's DeepLabV3+, or contrastseg's own (same) to isolate "
        "the rest of the step (default: both)",
    )
    args = parser.parse_args(argv)
    _peers()  # fail early, with the install hint
    quick = args.quick
    sizes = args.sizes or (["quick"] if quick else ["quick", "paper"])
    threads = args.threads or ([1] if quick else [1, 2])
    workers = args.workers if args.workers is not None else ([0, 2] if quick else [0, 1, 2])
    grid = {
        "quick": (threads, workers, args.batch or 8, args.steps or (2 if quick else 3)),
        "paper": (
            args.paper_threads or threads,
            args.paper_workers
            if args.paper_workers is not None
            else [w for w in workers if w != 1],
            args.paper_batch or 8,
            args.paper_steps or 1,
        ),
    }
    repeats = {
        "quick": args.repeats or (2 if quick else 3),
        "paper": args.paper_repeats or args.repeats or 2,
    }
    cases = [
        {"method": m, "size": size, "arch": SIZES[size]["arch"], "view": SIZES[size]["view"],
         "batch": grid[size][2], "steps": grid[size][3], "threads": t, "workers": w,
         "peer_net": net, "repeats": repeats[size]}
        for size in sizes for t in grid[size][0] for w in grid[size][1] for m in args.methods
        for net in args.peer_nets or ["smp", "same"]
    ]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vs_peers_") as tmp:
        n_scenes = 4 if quick else 8
        root = str(write_demo_dataset(tmp, n_scenes, 512, bands=BANDS) / "images")
        s = {
            "device": args.device,
            "data_root": root,
            "overrides": args.overrides,
            "tolerance": args.tolerance,
            "contrastseg_settings": args.contrastseg_settings,
        }
        checks = []
        if not args.no_check:
            torch.set_num_threads(max(threads))
            for size in sizes:
                for method in args.methods:
                    check = loss_check(method, size, {**s, "steps": 1, "workers": 0})
                    checks.append(check)
                    print(f"loss check {method} {size}: {_check_line(check)}", file=sys.stderr)
        records = []
        for n, case in enumerate(cases, 1):
            settings = {**s, "steps": case["steps"], "repeats": case["repeats"]}
            result = run_case(case, settings)
            records.append({**case, **result})
            ips = result["images_per_s"]
            print(
                f"[{n}/{len(cases)}] {case['method']} {case['size']} t{case['threads']} "
                f"w{case['workers']} peer net {case['peer_net']}: contrastseg {ips['contrastseg']:.2f} img/s, peer "
                f"{ips['peer']:.2f} img/s, ratio {result['ratio']:.2f}",
                file=sys.stderr,
                flush=True,
            )
            # what is measured so far, in case the run is stopped
            partial = {"benchmark": "vs_peers", "complete": False, "commit": git_commit(),
                       "loss_checks": checks, "cases": records}  # fmt: skip
            write_json(args.out, partial)
            gc.collect()
    report = _report(records, checks, s, args, grid, time.perf_counter() - started)
    path = write_json(args.out, report)
    print(f"wrote {path}")
    return report


def _check_line(check: dict[str, Any]) -> str:
    parts = [f"NT-Xent lightly - contrastseg {check['ntxent']['abs_diff']:.1e}"]
    for key in ("simclr", "global", "local"):
        if key in check:
            parts.append(f"{key} {check[key]['peer']:.6f} vs {check[key]['contrastseg']:.6f}")
    parts.append(f"encoders equal under: {check['encoder_equal_under']}")
    return "; ".join(parts)


def git_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        return run("rev-parse", "--short", "HEAD") + (
            "+dirty" if run("status", "--porcelain", "--untracked-files=no") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _report(
    records: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    s: dict[str, Any],
    args: argparse.Namespace,
    grid: dict[str, tuple],
    seconds: float,
) -> dict[str, Any]:
    device = torch.device(s["device"])
    where = (
        machine_info(device).get("gpu") or f"CPU ({machine_info()['cpu']}, {os.cpu_count()} cores)"
    )
    print(
        f"\nWhole pretraining step (data included), contrastseg vs smp + lightly + per-sample "
        f"torchvision views/matching in DataLoader workers, on {where}; images/s over "
        "the alternating blocks per side (repeats); ratio = contrastseg / peer"
    )
    headers = ["method", "size", "arch", "view", "batch", "steps", "repeats", "threads", "workers", "peer net",
               "contrastseg img/s", "peer img/s", "ratio", "block ratios"]  # fmt: skip
    rows = [
        [r["method"], r["size"], r["arch"], r["view"], r["batch"], r["steps"], r["repeats"], r["threads"], r["workers"],
         r["peer_net"], f"{r['images_per_s']['contrastseg']:.2f}", f"{r['images_per_s']['peer']:.2f}",
         f"{r['ratio']:.2f}", " ".join(f"{x:.2f}" for x in r["block_ratios"])]
        for r in records
    ]  # fmt: skip
    print_table(headers, rows)
    ratios = [r["ratio"] for r in records]
    summary = {}
    if ratios:
        summary = {
            "ratio_geometric_mean": statistics.geometric_mean(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        print(
            f"ratio: geometric mean {summary['ratio_geometric_mean']:.2f}, "
            f"range {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}"
        )
    return {
        "benchmark": "vs_peers",
        "complete": True,
        "machine": machine_info(device),
        "commit": git_commit(),
        "load_average": os.getloadavg(),
        "wall_s": seconds,
        "settings": {
            **{k: v for k, v in s.items() if k != "data_root"},
            "quick": args.quick,
            "data": f"demo scenes, {BANDS} bands uint8, random patch windows",
            "grid": {
                size: dict(zip(("threads", "workers", "batch", "steps"), g, strict=True))
                for size, g in grid.items()
            },
            "budget": "on the shared 2-core CPU the paper size runs fewer timed steps and "
            "blocks (--paper-steps, --paper-repeats) and no 1-worker case (--paper-workers), "
            "to keep a run within about 25 minutes; see grid for what this run measured",
        },
        "notes": {
            "timed": "whole steps: batch wait, views, matching, forward, backward, update; "
            "per block one untimed step first (worker start-up); blocks alternate sides",
            "prefetch": "each block starts a fresh loader iterator, whose workers prefetch "
            "up to 2 batches each while the untimed step runs; this favours the side whose "
            "workers do more (the peer)",
            "precision": "the peer: fp32, contiguous (torch's defaults), torch.optim.Adam as "
            "built by default (a for-loop on a CPU, foreach on CUDA); contrastseg: "
            + (
                "its defaults (train.amp and train.channels_last auto, optim.implementation auto)"
                if s.get("contrastseg_settings") == "defaults"
                else "fp32, contiguous, its default optim.implementation (auto: torch's fused Adam)"
            ),
            "peer_local_loss": "lightly NTXentLoss over the matched regions' embeddings "
            "(lightly has no GLCNet local loss; non-decoupled NT-Xent over all regions of the "
            "batch is its formula), regions pooled by torchvision roi_align",
            "architecture": "smp DeepLabV3+ has an extra separable 3x3 conv after ASPP and one "
            "separable 3x3 fusion conv where contrastseg has two 3x3 convs; see loss_checks",
        },
        "summary": summary,
        "loss_checks": checks,
        "cases": records,
    }


if __name__ == "__main__":
    main()
