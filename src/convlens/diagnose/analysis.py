"""Architecture diagnostics (Sec. 4.1 "Architecture Selection", Fig. 6) as numbers.

The paper diagnoses AlexNet by looking: layer-1 filters where "one feature dominates" without
feature-scale clipping (Fig. 6a), a "mix of extremely high and low frequency information, with
little coverage of the mid frequencies" and "dead" filters (6b vs 6c), and "aliasing artifacts
caused by the large stride 4" in layer-2 projections (6d vs 6e). :func:`diagnose` measures each:

* **Dominance**: per-filter RMS of the layer-1 weights; ``dominance = max RMS / median RMS``,
  flagged above ``dominance_threshold`` (3 by default, a heuristic: the paper gives no number).
* **Dead filters**: per conv layer, the fraction of positive (rectified) activations of each
  channel over a data sample; dead when below ``dead_eps``. **Near-zero** filters: RMS below
  ``zero_tol`` times the layer's median RMS.
* **Frequency coverage**: each layer-1 filter zero-padded to ``fft_size`` (so 7x7 and 11x11
  filters share one frequency grid), 2-D FFT power summed over input channels, radial frequency
  ``r = |f| / f_Nyquist`` (f in cycles per pixel, Nyquist 0.5); bands low ``r < 1/3``, mid
  ``1/3 <= r < 2/3``, high ``r >= 2/3`` (the corners beyond r = 1 count as high; DC as low).
  Shares are per filter (sum to 1) and averaged over filters.
* **Aliasing** (grid energy): layer-2 units are projected to the input with the deconvnet
  (:func:`convlens.deconv.project.project_max`, strongest location of each channel). A stride-``s``
  layer 1 places every filter copy on a lattice of period ``s``; because deconvnet signals are
  rectified (positive), the projection carries an ``s``-periodic pattern whose energy sits
  exactly at the frequencies ``(a/s, b/s)``, ``(a, b) != (0, 0)``. The measure is that energy's
  share of the projection's non-DC energy: the energy of the ``s x s`` phase-averaged pattern
  (tiled), over the projection with each channel's mean removed (cropped to a multiple of ``s``),
  equal to the DFT energy at those frequencies. Noise-like projections give about
  ``(s^2 - 1) / (H W)`` (reported as ``aliasing_chance``); grid artifacts give much more; a
  stride-1 layer 1 gives exactly 0.
* Reference for the bands: white-noise (untrained) filters put 0.087 / 0.262 / 0.651 of their
  energy in low / mid / high (the bands' areas in the frequency square).

Any CNN is diagnosed: "layer 1" and "layer 2" are the first two ``nn.Conv2d`` modules the forward
pass runs (``conv1``/``conv2`` of a convlens ConvNet, ``conv1``/``layer1.0.conv1`` of a ResNet,
``features.0.0``/``features.1.conv.0.0`` of MobileNetV2). Dead filters are measured on the first
(up to) five convs, at the first activation module (ReLU, ReLU6, SiLU, ...) that follows each conv
with the same output shape (after its BatchNorm), else at the conv output.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.core.capture import hooked
from convlens.nets.convnet import ConvNet

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Hardtanh,
               nn.PReLU, nn.SELU, nn.CELU)

__all__ = [
    "BANDS",
    "Diagnosis",
    "activation_fraction",
    "comparison_table",
    "conv_layers",
    "diagnose",
    "filter_rms",
    "frequency_bands",
    "lattice_energy",
]

log = logging.getLogger(__name__)

BANDS = ("low", "mid", "high")


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """Root mean square of each filter, (C_out,), for a (C_out, C_in, k, k) weight."""
    return weight.detach().flatten(1).pow(2).mean(1).sqrt()


def frequency_bands(weight: torch.Tensor, *, fft_size: int = 32,
                    edges: tuple[float, float] = (1 / 3, 2 / 3)) -> torch.Tensor:
    """Share of each filter's spectral energy in the low / mid / high bands, (C_out, 3).

    Args:
        weight: (C_out, C_in, k, k) filters, k <= fft_size.
        fft_size: common zero-padded FFT size.
        edges: band edges as fractions of the Nyquist frequency.
    """
    k = weight.shape[-1]
    if weight.dim() != 4 or k > fft_size:
        raise ValueError(f"weight must be (C_out, C_in, k, k) with k <= fft_size={fft_size}, got {tuple(weight.shape)}")
    power = torch.fft.fft2(weight.detach().double(), s=(fft_size, fft_size)).abs().pow(2).sum(1)  # (C, P, P)
    f = torch.fft.fftfreq(fft_size, dtype=torch.float64)  # cycles per pixel, in [-0.5, 0.5)
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / 0.5  # (P, P), fraction of Nyquist
    masks = torch.stack([r < edges[0], (r >= edges[0]) & (r < edges[1]), r >= edges[1]]).double()
    energy = torch.einsum("cij,bij->cb", power, masks)  # (C, 3)
    return (energy / energy.sum(1, keepdim=True).clamp_min(1e-30)).float()


@torch.no_grad()
def activation_fraction(model: ConvNet, images: torch.Tensor, layers: Sequence[str],
                        *, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Fraction of positive rectified activations of each channel over images and positions.

    Returns:
        layer -> (C,) float tensor in [0, 1].
    """
    counts: dict[str, torch.Tensor] = {}
    total = 0
    for start in range(0, len(images), batch_size):
        acts = model.features(images[start:start + batch_size], list(layers))
        for name, a in acts.items():
            pos = (a > 0).double().sum((0, 2, 3))  # (C,)
            counts[name] = counts.get(name, 0) + pos
        total += len(images[start:start + batch_size])
    return {name: (c / (total * acts[name].shape[2] * acts[name].shape[3])).float() for name, c in counts.items()}


def _leaf_events(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int, nn.Module, tuple[int, ...]]]:
    """(name, call number, module, output shape) of every leaf-module call of one forward, in order."""
    events: list[tuple[str, int, nn.Module, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                calls[name] = calls.get(name, -1) + 1
                events.append((name, calls[name], m, tuple(out.shape)))
        return fn

    leaves = [(m, hook(name)) for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    with torch.no_grad(), hooked(model, leaves):
        model(x)
    return events


def conv_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules in the order the forward pass first runs them (``x``: one batch)."""
    seen: list[str] = []
    for name, _k, m, _s in _leaf_events(model, x):
        if isinstance(m, nn.Conv2d) and name not in seen:
            seen.append(name)
    return seen


def _activation_points(model: nn.Module, x: torch.Tensor, convs: Sequence[str]) -> dict[str, tuple[str, int]]:
    """conv name -> (module, call number) whose output is that conv's rectified output (see the docstring)."""
    events = _leaf_events(model, x)
    points: dict[str, tuple[str, int]] = {}
    for conv in convs:
        i = next(j for j, e in enumerate(events) if e[0] == conv)
        points[conv] = (conv, 0)
        for name, k, m, shape in events[i + 1:]:
            if isinstance(m, nn.Conv2d) or shape != events[i][3]:
                break
            if isinstance(m, ACTIVATIONS):
                points[conv] = (name, k)
                break
    return points


@torch.no_grad()
def _generic_activation_fraction(model: nn.Module, images: torch.Tensor, convs: Sequence[str],
                                 batch_size: int = 16) -> dict[str, torch.Tensor]:
    points = _activation_points(model, images[:1], convs)
    modules = dict(model.named_modules())
    counts: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}
    calls: dict[str, int] = {}

    def hook(target: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            calls[target] = calls.get(target, -1) + 1
            for conv, (name, k) in points.items():
                if name == target and k == calls[target]:
                    counts[conv] = counts.get(conv, 0) + (out > 0).double().sum((0, 2, 3))
                    sizes[conv] = sizes.get(conv, 0) + out.shape[0] * out.shape[2] * out.shape[3]
        return fn

    with hooked(model, [(modules[name], hook(name)) for name in {n for n, _ in points.values()}]):
        for start in range(0, len(images), batch_size):
            calls.clear()
            model(images[start:start + batch_size])
    return {conv: (counts[conv] / sizes[conv]).float() for conv in convs if conv in counts}


def lattice_energy(projections: torch.Tensor, stride: int) -> torch.Tensor:
    """Share of non-DC energy at the stride-lattice frequencies ``(a/s, b/s)``, one value per image.

    Args:
        projections: (N, C, H, W) input-space images (e.g. deconvnet projections).
        stride: the lattice period ``s`` in pixels.

    Returns:
        (N,) values in [0, 1]; NaN for an all-constant image.
    """
    if projections.dim() != 4 or stride < 1:
        raise ValueError(f"projections must be (N, C, H, W) and stride >= 1, got {tuple(projections.shape)}, {stride}")
    n, c, h, w = projections.shape
    hs, ws = h // stride, w // stride
    p = projections.detach().double()[:, :, : hs * stride, : ws * stride]
    p = p - p.mean((2, 3), keepdim=True)  # remove each channel's DC
    phase = p.reshape(n, c, hs, stride, ws, stride).mean((2, 4))  # (N, C, s, s) the periodic pattern
    phase = phase - phase.mean((2, 3), keepdim=True)  # (already ~0; exact 0 for s = 1)
    periodic = phase.pow(2).sum((1, 2, 3)) * hs * ws
    total = p.pow(2).sum((1, 2, 3))
    out = periodic / total
    out[total <= 0] = float("nan")
    return out.float()


@dataclass(frozen=True)
class Diagnosis:
    """Fig. 6 diagnostics of one model (see the module docstring for each measure).

    Attributes:
        filters: (C, 3, k, k) layer-1 weights (raw; render with ``viz.normalize_for_display``).
        rms: (C,) layer-1 filter RMS; ``dominance`` = max/median, ``dominant_filter`` its index.
        active: layer -> (C,) fraction of positive activations; ``dead[layer]`` (C,) bool.
        near_zero: layer -> (C,) bool, filters with RMS < zero_tol * median.
        bands: (C, 3) per-filter low/mid/high energy shares; ``band_mean`` (3,).
        projections: (K, 3, H, W) layer-2 deconvnet projections; ``aliasing`` (K,) their grid energy;
            ``projection_values`` (K,) the activation each starts from, ``projection_boxes`` (K, 4) its
            receptive field ``(y0, x0, y1, x1)`` (maps 0..K-1 of layer 2, strongest image each).
        compare: the other model's Diagnosis, when ``diagnose(..., compare=other)``.
    """

    name: str
    conv1_kernel: int
    conv1_stride: int
    filters: torch.Tensor
    rms: torch.Tensor
    dominance: float
    dominant_filter: int
    dominates: bool
    active: dict[str, torch.Tensor]
    dead: dict[str, torch.Tensor]
    near_zero: dict[str, torch.Tensor]
    bands: torch.Tensor
    band_mean: torch.Tensor
    projections: torch.Tensor
    aliasing: torch.Tensor
    aliasing_chance: float
    params: dict[str, object] = field(default_factory=dict)
    compare: Diagnosis | None = None
    layer_names: tuple[str, str] = ("conv1", "conv2")
    projection_values: torch.Tensor | None = None
    projection_boxes: torch.Tensor | None = None

    def metrics(self) -> dict[str, float | int | str | bool]:
        """Flat scalar summary (the rows of :func:`comparison_table`)."""
        m: dict[str, float | int | str | bool] = {
            "layer 1 filters": f"{len(self.rms)} x {self.conv1_kernel}x{self.conv1_kernel}, stride {self.conv1_stride}"
                               + ("" if self.layer_names[0] == "conv1" else f" ({self.layer_names[0]})"),
            "RMS max / median (dominance)": self.dominance,
            "one filter dominates": self.dominates,
        }
        for layer in self.active:
            m[f"dead {layer} (of {len(self.dead[layer])})"] = int(self.dead[layer].sum())
            m[f"near-zero {layer}"] = int(self.near_zero[layer].sum())
        for i, band in enumerate(BANDS):
            m[f"layer-1 energy {band} freq"] = float(self.band_mean[i])
        m["layer-2 aliasing (grid energy)"] = float(self.aliasing.nanmean())
        m["aliasing chance level"] = self.aliasing_chance
        return m

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name, "layers": list(self.layer_names), "metrics": self.metrics(), "rms": self.rms,
            "dominant_filter": self.dominant_filter,
            "active_fraction": self.active, "dead": {k: torch.nonzero(v).flatten() for k, v in self.dead.items()},
            "near_zero": {k: torch.nonzero(v).flatten() for k, v in self.near_zero.items()},
            "bands": self.bands, "aliasing": self.aliasing, "params": self.params,
        }
        if self.compare is not None:
            d["compare"] = self.compare.to_dict()
        return d


def _layer2_projections(model: nn.Module, images: torch.Tensor, channels: int,
                        layer2: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from convlens.deconv.project import project_max  # deferred: deconv imports receptive_field

    conv2 = dict(model.named_modules())[layer2]
    assert isinstance(conv2, nn.Conv2d)
    n_ch = conv2.out_channels
    chans = list(range(min(channels, n_ch)))
    best = _strongest_images(model, images, layer2, chans)  # (K,) the strongest image of each channel
    out = images.new_zeros(len(chans), *images.shape[1:])
    values = images.new_zeros(len(chans))
    boxes = torch.zeros(len(chans), 4, dtype=torch.long, device=images.device)
    for i in best.unique().tolist():  # project only those images (not N x K projections: 1.2 GB for 128 images)
        ks = (best == i).nonzero().flatten()
        proj = project_max(model, images[i:i + 1], layer2, [chans[k] for k in ks.tolist()], rule="deconvnet")
        out[ks], values[ks], boxes[ks] = proj.images[0], proj.values[0], proj.boxes[0].to(boxes)
    return out, values, boxes  # (K, 3, H, W), (K,), (K, 4)


@torch.no_grad()
def _strongest_images(model: nn.Module, images: torch.Tensor, layer: str, chans: list[int],
                      batch_size: int = 16) -> torch.Tensor:
    """Index of the image with the largest activation of each channel of ``layer`` (batched forwards)."""
    from convlens.core.capture import record_activations

    peaks = []
    with record_activations(model, [layer]) as acts:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
            a = acts[layer][:, chans]
            peaks.append(a.reshape(a.shape[0], len(chans), -1).amax(2))
    return torch.cat(peaks).argmax(0)


def diagnose(
    model: nn.Module,
    images: torch.Tensor,
    *,
    compare: nn.Module | None = None,
    channels: int = 16,
    dominance_threshold: float = 3.0,
    dead_eps: float = 1e-3,
    zero_tol: float = 1e-2,
    name: str | None = None,
) -> Diagnosis:
    """Fig. 6 diagnostics of ``model`` (and of ``compare`` on the same images).

    Args:
        model: any CNN with at least two ``nn.Conv2d`` (eval mode is used; the mode is restored).
        images: (N, 3, H, W) normalized data sample (dead filters, layer-2 projections).
        compare: a second model to diagnose on the same images (e.g. alexnet vs zfnet).
        channels: number of layer-2 channels projected (the first ``channels``).
        dominance_threshold: flag "one filter dominates" when max RMS / median RMS exceeds it.
        dead_eps: a filter is dead when its fraction of positive activations is below this.
        zero_tol: near-zero filters have RMS below ``zero_tol`` x the layer's median RMS.
        name: the model's name in tables (default: a ConvNet's arch, else the class name).

    Example:
        >>> d = diagnose(build_model("zfnet-tiny", seed=0), torch.randn(8, 3, 32, 32))
        >>> d.metrics()["layer-1 energy mid freq"]
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, 3, H, W) with N >= 1, got {tuple(images.shape)}")
    other = diagnose(compare, images, channels=channels, dominance_threshold=dominance_threshold,
                     dead_eps=dead_eps, zero_tol=zero_tol) if compare is not None else None
    was_training = model.training
    model.eval()
    try:
        return _diagnose_one(model, images, channels, dominance_threshold, dead_eps, zero_tol, other, name)
    finally:
        model.train(was_training)


def _diagnose_one(model: nn.Module, images: torch.Tensor, channels: int, threshold: float, dead_eps: float,
                  zero_tol: float, other: Diagnosis | None, name: str | None) -> Diagnosis:
    if isinstance(model, ConvNet):
        convs = [n for n in model.layer_names if n.startswith("conv")]
        active = {k: v.cpu() for k, v in activation_fraction(model, images, convs).items()}
    else:
        convs = conv_layers(model, images[:1])[:5]
        if len(convs) < 2:
            raise ValueError(f"diagnose needs a model with at least two Conv2d layers, found {len(convs)}")
        active = {k: v.cpu() for k, v in _generic_activation_fraction(model, images, convs).items()}
    modules = dict(model.named_modules())
    conv1 = modules[convs[0]]
    assert isinstance(conv1, nn.Conv2d)
    w1 = conv1.weight.detach().cpu()
    if w1.shape[-1] != w1.shape[-2] or w1.shape[-1] > 64:
        raise ValueError(f"layer 1 ({convs[0]}) has {tuple(w1.shape[-2:])} kernels; diagnose expects square kernels "
                         "of at most 64 pixels")
    rms = filter_rms(w1)
    median = float(rms.median().clamp_min(1e-30))
    near_zero = {}
    for conv in convs:
        r = filter_rms(modules[conv].weight.detach().cpu())  # type: ignore[arg-type]
        near_zero[conv] = r < zero_tol * r.median()
    bands = frequency_bands(w1, fft_size=max(32, w1.shape[-1]))
    proj, proj_values, proj_boxes = (t.cpu() for t in _layer2_projections(model, images, channels, convs[1]))
    stride = conv1.stride[0]
    h, w = proj.shape[-2:]
    return Diagnosis(
        name=name or (model.cfg.name if isinstance(model, ConvNet) else type(model).__name__),
        conv1_kernel=conv1.kernel_size[0], conv1_stride=stride, filters=w1, rms=rms,
        dominance=float(rms.max()) / median, dominant_filter=int(rms.argmax()),
        dominates=float(rms.max()) / median > threshold, active=active,
        dead={k: v < dead_eps for k, v in active.items()}, near_zero=near_zero, bands=bands,
        band_mean=bands.mean(0), projections=proj, aliasing=lattice_energy(proj, stride),
        aliasing_chance=(stride**2 - 1) / ((h // stride) * (w // stride) * stride**2 - 1),
        params={"channels": channels, "dominance_threshold": threshold, "dead_eps": dead_eps, "zero_tol": zero_tol,
                "images": len(images)},
        compare=other, layer_names=(convs[0], convs[1]), projection_values=proj_values, projection_boxes=proj_boxes,
    )


def comparison_table(a: Diagnosis, b: Diagnosis | None = None, *, names: Sequence[str] | None = None
                     ) -> tuple[list[str], list[list[object]]]:
    """Side-by-side ``(columns, rows)`` of :meth:`Diagnosis.metrics` for one or two models."""
    diags = [a] if b is None else [a, b]
    labels = list(names) if names else [d.name for d in diags]
    metrics = [d.metrics() for d in diags]
    keys = list(dict.fromkeys(k for m in metrics for k in m))

    def fmt(v: object) -> object:
        if isinstance(v, bool):
            return "yes" if v else "no"
        return round(v, 4) if isinstance(v, float) else ("-" if v is None else v)

    rows = [[k, *(fmt(m.get(k)) for m in metrics)] for k in keys]
    return ["measure", *labels], rows
