"""On-demand analysis of an uploaded image for the explorer (Sec. 2.1 projections, Sec. 4.2 occlusion).

For each conv layer, the maps with the strongest activation in the image are projected back to
pixels with the deconvnet (:func:`convlens.deconv.project_max`), and the occlusion maps of Fig. 7
(layer-5 activity, correct-class probability, most probable label) are computed with
:func:`convlens.occlusion.occlusion_map`. Everything comes back as PNG bytes; nothing is written
to disk. The occluder defaults to a quarter of the input side, stride an eighth (the paper's
50/224 px window, 8 px stride scaled).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

__all__ = ["ImageAnalysis", "Panel", "analyze_image", "png_bytes"]


@dataclass(frozen=True)
class Panel:
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class ImageAnalysis:
    input: Panel
    predictions: list[tuple[str, float]]
    layers: dict[str, list[Panel]] = field(default_factory=dict)
    occlusion: list[Panel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def png_bytes(img01: torch.Tensor, min_side: int = 112) -> bytes:
    """(3, H, W) or (H, W) float image in [0, 1] -> PNG bytes, enlarged (nearest) to at least ``min_side``."""
    from ..viz import to_uint8, upscale_nearest

    factor = max(1, -(-min_side // int(img01.shape[-1])))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(upscale_nearest(img01.detach().cpu().float(), factor))).save(buf, format="PNG")
    return buf.getvalue()


def _conv_layers(model: Any) -> list[str]:
    names = [n for n, _ in model.stages()] if hasattr(model, "stages") else []
    return [f"conv{i}" for i in range(1, 6) if f"relu{i}" in names]


def _projections(model: Any, x: torch.Tensor, top: int) -> dict[str, list[Panel]]:
    from ..deconv import project_max
    from ..viz import normalize_for_display

    out: dict[str, list[Panel]] = {}
    layers = _conv_layers(model)
    with torch.no_grad():
        feats = model.features(x, layers)
    for layer in layers:
        strength = feats[layer][0].flatten(1).amax(1)  # (C,) strongest activation of each map
        values, channels = strength.topk(min(top, strength.numel()))
        proj = project_max(model, x, layer, channels.tolist())
        shown = normalize_for_display(proj.images[0])  # (K, 3, H, W)
        out[layer] = [Panel(f"{layer}:{int(c)}", png_bytes(img), f"activation {float(v):.3g}")
                      for img, c, v in zip(shown, channels, values, strict=False)]
    return out


def _occlusion(model: Any, x: torch.Tensor, image01: torch.Tensor, classes: list[str]) -> tuple[list[Panel], str]:
    from ..occlusion import occlusion_map
    from ..viz import colorize, overlay_heatmap

    side = int(x.shape[-1])
    window, stride = max(2, side // 4), max(1, side // 8)
    occ = occlusion_map(model, x[0], window=window, stride=stride)
    name = classes[occ.target] if occ.target < len(classes) else str(occ.target)
    n = int(occ.probs.shape[-1])
    panels = [
        Panel(f"{occ.layer} map {occ.channel} activity", png_bytes(colorize(occ.activity_heatmap)),
              "total activation of the strongest map vs occluder position (Fig. 7b)"),
        Panel(f"p({name})", png_bytes(colorize(occ.prob_heatmap, vmin=0.0, vmax=1.0)),
              "probability of the predicted class vs occluder position (Fig. 7d)"),
        Panel("most probable label", png_bytes(colorize(occ.label_heatmap.float(), "tab10", vmin=0, vmax=max(n - 1, 1))),
              "most probable class vs occluder position (Fig. 7e)"),
        Panel(f"p({name}) over the image", png_bytes(overlay_heatmap(image01, occ.target_prob, 0.5)),
              "probability map blended over the input"),
    ]
    labels = sorted({int(v) for v in occ.label_heatmap.flatten().tolist()})
    legend = ", ".join(classes[i] if i < len(classes) else str(i) for i in labels)
    return panels, f"occluder {window}x{window} px, stride {stride} px, grey = training mean; labels seen: {legend}"


def analyze_image(loaded: Any, image: Image.Image, *, top: int = 4) -> ImageAnalysis:
    """Projections of the strongest maps per conv layer and occlusion maps for one image.

    Args:
        loaded: a :class:`convlens.checkpoint.Loaded` (model in eval mode + preprocessing).
        image: a decoded PIL image (any mode/size; converted to RGB and center-cropped).
        top: maps projected per layer.

    Example:
        >>> a = analyze_image(load_model("runs/demo/checkpoints/last.pt"), Image.open("shoe.png"))
        >>> sorted(a.layers)
        ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
    """
    model, pre = loaded.model, loaded.preprocessing
    x = pre.center(image.convert("RGB"))[None]  # (1, 3, crop, crop)
    image01 = pre.denormalize(x[0])
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    classes = list(loaded.class_names)
    p, idx = probs.topk(min(3, probs.numel()))
    preds = [(classes[i] if i < len(classes) else str(i), float(v)) for v, i in zip(p, idx.tolist(), strict=False)]
    notes: list[str] = []
    layers = _projections(model, x, top) if hasattr(model, "features") else {}
    occ, note = _occlusion(model, x, image01, classes)
    notes.append(note)
    return ImageAnalysis(Panel("input (center crop)", png_bytes(image01)), preds, layers, occ, notes)
