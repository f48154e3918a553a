"""On-demand analysis of an uploaded image for the explorer (Sec. 2.1 projections, Sec. 4.2 occlusion).

For each layer (the run's mined layers where the model has them), the maps with the strongest
activation in the image are projected back to pixels (:func:`convlens.deconv.project.project_max`) with
the chosen rule (``auto``: the paper's deconvnet where max-pool switches make it depend on the
image, guided backprop elsewhere) and shown the one way of :mod:`convlens.deconv.view` (cropped to
where the projection is, beside the image patch of the same box, robust contrast, smooth; the
full-size pair of the receptive field for a click-through), and the occlusion maps of Fig. 7 (a map's activity, the
predicted class's probability, the most probable label) are computed with
:func:`convlens.occlusion.maps.occlusion_map`, each with a colour bar or a label key. Everything comes
back as PNG bytes; nothing is written to disk. The occluder is a quarter of the input side, the
stride an eighth (the paper's 50/224 px window and 8 px stride, scaled).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from convlens.explorer.runindex import RULE_CHOICES

__all__ = ["RULE_CHOICES", "ImageAnalysis", "Panel", "analyze_image", "occluder_grid", "png_bytes", "resolve_rule",
           "upload_layers"]

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Panel:
    """One picture: ``bar`` = (css gradient, low, high, what) for a heat map, spanning exactly the
    values drawn; ``key`` = (colour, name, share) rows for a label map; ``link`` = the unit page of
    a projected map; ``full`` = the full-size picture (a projection's whole receptive field beside
    its image) and ``view`` its boxes (:meth:`convlens.deconv.view.ProjectionView.to_dict`)."""

    title: str
    png: bytes
    caption: str = ""
    link: str | None = None
    bar: tuple[str, float, float, str] | None = None
    key: tuple[tuple[str, str, float], ...] = ()
    full: bytes | None = None
    view: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImageAnalysis:
    input: Panel
    predictions: list[tuple[str, float]]
    rule: str
    rule_reason: str
    layers: dict[str, list[Panel]] = field(default_factory=dict)
    occlusion: list[Panel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def png_bytes(img01: torch.Tensor, min_side: int = 112) -> bytes:
    """(3, H, W) or (H, W) float image in [0, 1] -> PNG bytes, enlarged (nearest) to at least ``min_side``."""
    from convlens.io.viz import to_uint8, upscale_nearest

    factor = max(1, -(-min_side // int(img01.shape[-1])))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(upscale_nearest(img01.detach().cpu().float(), factor))).save(buf, format="PNG")
    return buf.getvalue()


def resolve_rule(model: nn.Module, layer: str, rule: str) -> tuple[str, str]:
    """``rule`` for ``layer`` of ``model`` and why (:func:`convlens.deconv.rules.resolve_rule`; ``auto``: the
    paper's deconvnet where max-pool switches make it follow the image, guided backprop elsewhere)."""
    if rule not in RULE_CHOICES:
        raise ValueError(f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule!r}")
    from convlens.deconv.rules import resolve_rule as library

    chosen, reason = library(model, layer, rule)
    return str(chosen), str(reason) if rule == "auto" else "chosen on the upload form"


def upload_layers(loaded: Any, mined: Sequence[str]) -> list[str]:
    """Layers to project an upload at: the mined ones the model has, else the defaults that fit the
    model (``conv1``..``conv5`` of a ZFNet, a few evenly spaced blocks of another CNN)."""
    model = loaded.model
    resolve = getattr(model, "resolve", None)
    names = dict(model.named_modules())
    ok = []
    for layer in mined:
        try:
            if (resolve(layer) if callable(resolve) else layer) in names:
                ok.append(layer)
        except ValueError:
            continue
    if ok:
        return ok
    from convlens.nets.layers import default_layers

    return default_layers(loaded)


def _activations(model: nn.Module, x: torch.Tensor, layers: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from convlens.core.capture import record_activations

    with torch.no_grad(), record_activations(model, layers) as acts:
        logits = model(x)
    return logits, {k: v.detach() for k, v in acts.items()}


VIEW = 112  # side of each projection and of its patch in an upload's panel, pixels


def _projection_panel(proj: Any, k: int, image01: torch.Tensor, title: str, caption: str,
                      link: str | None) -> Panel:
    """Projection ``k`` of ``proj`` beside the image patch of the same box (:func:`convlens.deconv.view.present`)."""
    from convlens.deconv.view import present
    from convlens.io.viz import hstack

    v = present(proj.images[0, k], image01, rf_box=proj.boxes[0, k], size=VIEW)
    return Panel(title, png_bytes(hstack([v.shown, v.patch], pad=4)), caption, link,
                 full=png_bytes(hstack([v.full, v.full_patch], pad=4), min_side=1), view=v.to_dict())


def _projections(model: nn.Module, x: torch.Tensor, image01: torch.Tensor, acts: dict[str, torch.Tensor], top: int,
                 rule: str, link: Callable[[str, int], str | None],
                 progress: Progress) -> tuple[dict[str, list[Panel]], str]:
    from convlens.deconv.project import project_max

    out: dict[str, list[Panel]] = {}
    reasons: list[tuple[str, str]] = []
    layers = [name for name, a in acts.items() if a.dim() == 4]
    for i, layer in enumerate(layers):
        progress(f"projecting the strongest maps of {layer} ({i + 1}/{len(layers)})", 0.1 + 0.6 * i / len(layers))
        chosen, reason = resolve_rule(model, layer, rule)
        reasons.append((layer, f"{chosen}: {reason}"))
        strength = acts[layer][0].flatten(1).amax(1)  # (C,) strongest activation of each map
        values, channels = strength.topk(min(top, strength.numel()))
        proj = project_max(model, x, layer, channels.tolist(), rule=chosen)  # images (1, K, 3, H, W)
        out[layer] = [_projection_panel(proj, k, image01, f"{layer}:{int(c)}",
                                        f"activation {float(v):.3g} · {chosen} · right: the image in the same box",
                                        link(layer, int(c)))
                      for k, (c, v) in enumerate(zip(channels, values, strict=False))]
    grouped: dict[str, list[str]] = {}
    for layer, why in reasons:
        grouped.setdefault(why, []).append(layer)
    if len(grouped) == 1:
        return out, next(iter(grouped))
    return out, "; ".join(f"{', '.join(layers)}: {why}" for why, layers in grouped.items())


def _bar(cmap: str, lo: float, hi: float, what: str) -> tuple[str, float, float, str]:
    from matplotlib import colormaps

    stops = [colormaps[cmap](i / 10) for i in range(11)]
    css = ", ".join(f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)}) {i * 10}%"
                    for i, (r, g, b, _) in enumerate(stops))
    return f"linear-gradient(to right, {css})", float(lo), float(hi), what


def _label_map(labels: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, tuple[tuple[str, str, float], ...]]:
    """Most-probable-label map -> distinct colours per label seen, and the key (colour, class, share)."""
    from matplotlib import colormaps

    seen, inverse = torch.unique(labels.flatten(), return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(seen)).double() / inverse.numel()
    n = len(seen)
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    colours = [cmap(i % cmap.N)[:3] if n <= 20 else colormaps["turbo"](i / max(n - 1, 1))[:3] for i in range(n)]
    palette = torch.tensor(colours, dtype=torch.float32)  # (n, 3)
    img = palette[inverse.reshape(labels.shape)].permute(2, 0, 1)
    key = tuple(sorted(
        ((f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}",
          classes[int(c)] if int(c) < len(classes) else str(int(c)), float(s))
         for (r, g, b), c, s in zip(colours, seen.tolist(), counts.tolist(), strict=True)),
        key=lambda t: -t[2]))
    return img, key


def occluder_grid(side: int, window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """The occluder's window and stride for a ``side`` px input: given values checked, else a
    quarter and an eighth of the side (the paper's 50 px on 224, coarser stride for speed).

    Raises:
        ValueError: window outside [2, side] or stride outside [1, window].
    """
    window = max(2, side // 4) if window is None else int(window)
    if not 2 <= window <= side:
        raise ValueError(f"occlusion window must be 2..{side} px for this {side} px input, got {window}")
    stride = max(1, window // 2) if stride is None else int(stride)
    if not 1 <= stride <= window:
        raise ValueError(f"occlusion stride must be 1..{window} px (at most the window), got {stride}")
    return window, stride


def _occlusion(model: nn.Module, x: torch.Tensor, image01: torch.Tensor, classes: list[str],
               layer: str | None, window: int | None = None, stride: int | None = None) -> tuple[list[Panel], str]:
    from convlens.io.viz import colorize, overlay_heatmap
    from convlens.occlusion.maps import occlusion_map

    side = int(x.shape[-1])
    window, stride = occluder_grid(side, window, stride)
    occ = occlusion_map(model, x[0], window=window, stride=stride, layer=layer)
    name = classes[occ.target] if occ.target < len(classes) else str(occ.target)
    act, prob = occ.activity_heatmap, occ.prob_heatmap  # (H, W): per pixel, mean over the occluders covering it
    lo, hi = float(act.min()), float(act.max())
    plo, phi = float(prob.min()), float(prob.max())  # both p panels draw these values, on this one scale
    labels, key = _label_map(occ.label_heatmap, classes)
    how = "with the occluder covering this pixel, mean over the occluder positions covering it"
    grid = (f"per occluder position p({name}) spans {float(occ.target_prob.min()):.3g}-"
            f"{float(occ.target_prob.max()):.3g}; averaging over the positions covering a pixel narrows it")
    panels = [
        Panel(f"{occ.layer} map {occ.channel} activity", png_bytes(colorize(act, vmin=lo, vmax=hi)),
              "total activation of the map that is strongest on the clean image, vs occluder position (Fig. 7b)",
              bar=_bar("jet", lo, hi, f"summed activation of {occ.layer}:{occ.channel} {how}")),
        Panel(f"p({name})", png_bytes(colorize(prob, vmin=plo, vmax=phi)),
              f"probability of the class predicted for the clean image, vs occluder position (Fig. 7d); {grid}",
              bar=_bar("jet", plo, phi, f"p({name}) {how}")),
        Panel("most probable label", png_bytes(labels),
              "most probable class vs occluder position (Fig. 7e); colours in the key below", key=key),
        Panel(f"p({name}) over the image", png_bytes(overlay_heatmap(image01, prob, 0.5, vmin=plo, vmax=phi)),
              "the same probability map blended over the input, same scale",
              bar=_bar("jet", plo, phi, f"p({name}) {how}")),
    ]
    return panels, f"occluder {window}x{window} px, stride {stride} px, grey = training mean"


def analyze_image(loaded: Any, image: Image.Image, *, layers: Sequence[str] = (), rule: str = "auto", top: int = 4,
                  link: Callable[[str, int], str | None] | None = None,
                  progress: Progress | None = None, window: int | None = None,
                  stride: int | None = None) -> ImageAnalysis:
    """Projections of the strongest maps per layer and occlusion maps for one image, any CNN.

    Args:
        loaded: a :class:`convlens.nets.checkpoint.Loaded` (model in eval mode + preprocessing).
        image: a decoded PIL image (any mode/size; converted to RGB and center-cropped).
        layers: layers to project at (default: :func:`upload_layers` of the model).
        rule: ``auto``, ``deconvnet``, ``guided`` or ``gradient``.
        top: maps projected per layer.
        link: ``(layer, map) -> URL`` of the map's page, or None.
        progress: called with (stage, fraction done).
        window, stride: the occluder's side and step in input pixels (default: :func:`occluder_grid`).

    Example:
        >>> a = analyze_image(load_model("torchvision:resnet18", weights="r18.pt"), Image.open("shoe.png"))
        >>> list(a.layers)[:2], len(a.occlusion)
    """
    if rule not in RULE_CHOICES:
        raise ValueError(f"rule must be one of {', '.join(RULE_CHOICES)}, got {rule!r}")
    report = progress or (lambda _s, _f: None)
    model, pre = loaded.model, loaded.preprocessing
    x = pre.center(image.convert("RGB"))[None]  # (1, 3, crop, crop)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    image01 = pre.denormalize(x[0]).cpu()
    chosen = list(layers) or upload_layers(loaded, ())
    report("forward pass", 0.05)
    logits, acts = _activations(model, x, chosen)
    probs = logits.float().softmax(1)[0].cpu()
    classes = list(loaded.class_names)
    p, idx = probs.topk(min(5, probs.numel()))
    preds = [(classes[i] if i < len(classes) else str(i), float(v)) for v, i in zip(p, idx.tolist(), strict=False)]
    panels, reasons = _projections(model, x, image01, acts, top, rule, link or (lambda _l, _m: None), report)
    report("occlusion maps (Fig. 7)", 0.75)
    spatial = [n for n in chosen if acts.get(n) is not None and acts[n].dim() == 4]
    occ, note = _occlusion(model, x, image01, classes, spatial[-1] if spatial else None, window, stride)
    shown_rule = rule if rule != "auto" else "auto"
    from convlens.deconv.view import CONTRAST, SHARE

    shown = (f"projections: each cropped to the smallest box holding {SHARE:.0%} of its mass (plus a margin, "
             f"inside its receptive field), beside the image in the same box; {CONTRAST}")
    return ImageAnalysis(Panel("input (center crop)", png_bytes(image01)), preds, shown_rule, reasons,
                         panels, occ, [note, shown])
