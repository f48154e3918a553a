"""The optimization: every requested unit of one layer in one batch (Olah et al. 2017's recipe).

Per step: spectra -> pixels (:mod:`.param`) -> a transform drawn per image (:mod:`.transforms`)
-> the model's own normalization (:meth:`convlens.images.data.Preprocessing.normalize`) -> the model up
to the layer only (:mod:`.truncated`) -> the loss ``-sum(objective)`` (+ the diversity term) ->
Adam. The loss is a *sum* over units and Adam works element by element, and BatchNorm in eval mode
treats each image alone: so unit ``u``'s images follow exactly the path they would follow alone.
Each unit draws its start and its transforms from its own generator, seeded from ``(seed, unit)``,
so a unit's result does not depend on which other units share the batch.

Objectives (Lucid's names): ``channel``: the mean of the unit's map; ``neuron``: the unit's
value at the centre position of the map. ``diverse=K``: K images per unit and Lucid's diversity
term, ``weight * sum_{i != j} <G_i, G_j> / K``, the cosine similarities of the K images' Gram
matrices (channels x channels over positions) at the layer, subtracted from the objective.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.featvis.param import init_spectrum, to_rgb
from convlens.featvis.transforms import TransformSpec, apply_transforms, draw_transforms
from convlens.featvis.truncated import truncated_forward
from convlens.images.data import Preprocessing
from convlens.io.progress import progress_bar

__all__ = ["DEFAULT_CONFIG", "OBJECTIVES", "FeatureVisualization", "FeatvisConfig", "check_units", "model_dtype_device",
           "objective_values", "render", "unit_generator"]

log = logging.getLogger(__name__)
OBJECTIVES = ("channel", "neuron")


@dataclass(frozen=True)
class FeatvisConfig:
    """Settings of one optimization (Lucent's defaults: 512 steps, 128 px, Adam lr 0.05).

    Attributes:
        steps: Adam steps. size: image side in pixels (before the transforms' padding).
        lr: Adam learning rate. seed: unit ``u`` draws from ``unit_generator(seed, u)``.
        objective: ``channel`` (map mean) or ``neuron`` (centre position).
        diverse: images per unit (> 1 adds the diversity term). diversity_weight: its weight (Lucid's 1e2).
        transforms: apply the standard transforms (False: optimize the plain image).
        channels_last: feed the model a channels-last input (on the CPU, 16 MobileNetV2 units, 64 steps:
            19.0 s instead of 24.9 s; benchmarks/featvis.py).
    """

    steps: int = 512
    size: int = 128
    lr: float = 0.05
    seed: int = 0
    objective: str = "channel"
    diverse: int = 1
    diversity_weight: float = 100.0
    transforms: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "size", "diverse"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}; Lucent's default is 0.05")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_CONFIG = FeatvisConfig()


@dataclass(frozen=True)
class FeatureVisualization:
    """What :func:`render` made.

    Attributes:
        images: (U, K, 3, S, S) pixels in [0, 1] (K = ``config.diverse``), on the model's device.
        layer, units, config: what was asked.
        history: (steps, U) the objective per step (mean over the unit's K transformed images).
        values: (U, K) the objective of each final image (untransformed, not quantized).
    """

    images: torch.Tensor
    layer: str
    units: tuple[int, ...]
    config: FeatvisConfig
    history: torch.Tensor
    values: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "units": list(self.units), "config": self.config.to_dict(),
                "history": self.history, "values": self.values}


def unit_generator(seed: int, unit: int) -> torch.Generator:
    """The CPU generator of one unit: seeded from ``(seed, unit)`` only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(unit)) % (2**63))


def objective_values(act: torch.Tensor, channels: torch.Tensor, objective: str) -> torch.Tensor:
    """(N, C, H, W) activations, (N,) channel per image -> (N,) objective per image."""
    rows = torch.arange(act.shape[0], device=act.device)
    maps = act[rows, channels.to(act.device)]  # (N, H, W)
    if objective == "neuron":
        return maps[:, maps.shape[1] // 2, maps.shape[2] // 2]
    return maps.mean(dim=(1, 2))


def diversity(act: torch.Tensor, k: int) -> torch.Tensor:
    """(U * K, C, H, W) -> (U,) Lucid's diversity: summed pairwise cosine similarity of Gram matrices / K."""
    flat = act.flatten(2)  # (N, C, HW)
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)  # (N, C*C)
    grams = grams.view(-1, k, grams.shape[1])
    sims = grams @ grams.transpose(1, 2)  # (U, K, K)
    return (sims.sum(dim=(1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)) / k


def check_units(act_channels: int, units: Sequence[int], layer: str) -> tuple[int, ...]:
    """The units as a tuple, each checked against the layer's channel count.

    Raises:
        ValueError: no units, a repeated unit, or a unit outside 0..channels-1.
    """
    out = tuple(int(u) for u in units)
    if not out:
        raise ValueError("units is empty; give at least one channel index, e.g. units=[0] (--units 0-15)")
    bad = [u for u in out if not 0 <= u < act_channels]
    if bad:
        raise ValueError(f"unit {bad[0]} is out of range for layer {layer!r}, which has {act_channels} channels "
                         f"(0-{act_channels - 1}); pick units in that range")
    if len(set(out)) != len(out):
        raise ValueError(f"units repeat a channel ({list(out)}); give each unit once")
    return out


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first initialized floating-point parameter (float32, CPU without one)."""
    for p in model.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter) and p.is_floating_point():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def _frozen(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    saved = [(p, p.requires_grad) for p in model.parameters()
             if not isinstance(p, nn.parameter.UninitializedParameter)]
    for p, _ in saved:
        p.requires_grad_(False)  # the weights need no gradient: a third less work per step
    return saved


def render(model: nn.Module, layer: str, units: Sequence[int], *, preprocessing: Preprocessing,
           config: FeatvisConfig = DEFAULT_CONFIG, progress: bool = False) -> FeatureVisualization:
    """Optimize one image (``config.diverse`` images) per unit of ``layer`` to excite it, all in one batch.

    The model is run in eval mode up to ``layer`` only; its mode and its parameters'
    ``requires_grad`` are restored afterwards, and no hook stays on it.

    Args:
        model: any ``nn.Module`` taking (B, 3, H, W) normalized images; its device and dtype are used.
        layer: module path or ConvNet layer name; its output must be (B, C, H', W').
        units: channel indices of ``layer``.
        preprocessing: the model's (``Loaded.preprocessing``): its normalization is applied.
        config: see :class:`FeatvisConfig`.
        progress: a tqdm bar over the steps.

    Raises:
        ValueError: unknown layer, a layer without a (B, C, H, W) output, units out of range.

    Example:
        >>> loaded = load_model("torchvision:mobilenet_v2", weights="mobilenet_v2_imagenet.pt")
        >>> fv = render(loaded.model, "features.13", range(16), preprocessing=loaded.preprocessing)
        >>> fv.images.shape  # (16, 1, 3, 128, 128)
    """
    forward = truncated_forward(model, layer)
    dtype, device = model_dtype_device(model)
    mode = model.training
    model.eval()
    saved = _frozen(model)
    try:
        return _optimize(forward, layer, units, preprocessing, config, dtype, device, progress)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
        model.train(mode)


def _optimize(forward: Any, layer: str, units: Sequence[int], pre: Preprocessing, cfg: FeatvisConfig,
              dtype: torch.dtype, device: torch.device, progress: bool) -> FeatureVisualization:
    with torch.no_grad():
        probe = forward(pre.normalize(torch.full((1, 3, cfg.size, cfg.size), 0.5, dtype=dtype, device=device)))
    if probe.dim() != 4:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(probe.shape)}, not (B, C, H, W); feature "
                         "visualization needs a convolutional map: pick a conv layer or block")
    units = check_units(probe.shape[1], units, layer)
    k, gens = cfg.diverse, [unit_generator(cfg.seed, u) for u in units]
    spectrum = torch.cat([init_spectrum(k, cfg.size, g, dtype) for g in gens]).to(device).requires_grad_(True)
    channels = torch.tensor(units, device=device).repeat_interleave(k)  # (U*K,)
    opt = torch.optim.Adam([spectrum], lr=cfg.lr)
    spec = TransformSpec()
    history = []
    for _ in progress_bar(range(cfg.steps), disable=not progress, desc=f"featvis {layer}", unit="step"):
        opt.zero_grad(set_to_none=True)
        img = to_rgb(spectrum, cfg.size)  # (U*K, 3, S, S)
        if cfg.transforms:
            img = apply_transforms(img, draw_transforms(gens, k, spec), spec)  # (U*K, 3, S+12, S+12)
        x = pre.normalize(img)
        act = forward(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)
        obj = objective_values(act, channels, cfg.objective)  # (U*K,)
        loss = -obj.sum()
        if k > 1:
            loss = loss + cfg.diversity_weight * diversity(act, k).sum()
        loss.backward()
        opt.step()
        history.append(obj.detach().view(len(units), k).mean(1))
    with torch.no_grad():
        images = to_rgb(spectrum, cfg.size)
        values = objective_values(forward(pre.normalize(images)), channels, cfg.objective)
    log.debug("featvis %s: %d units x %d images, %d steps", layer, len(units), k, cfg.steps)
    return FeatureVisualization(images=images.view(len(units), k, 3, cfg.size, cfg.size), layer=layer, units=units,
                                config=cfg, history=torch.stack(history).cpu(), values=values.view(len(units), k))
