"""What ``convlens occlude`` writes (Fig. 7), callable from Python.

:func:`write_occlusion` computes the occlusion maps of one image and writes ``occlusion.png`` (the
five panels of Fig. 7), ``occlusion.md`` (the labels table) and ``result.json`` (kind
``occlusion``; the grids in ``data``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convlens.occlusion.maps import Approximation

__all__ = ["OcclusionSettings", "write_occlusion"]


@dataclass(frozen=True)
class OcclusionSettings:
    """The occluder (``window``, ``stride`` pixels, ``fill`` in normalized space), the correct class
    ``label`` (None: the predicted one), the feature map of panel (b) (``layer``, ``channel``; None:
    the strongest), the projection ``rule`` of panel (c), and how the maps are computed (see
    :func:`convlens.occlusion.maps.occlusion_map`)."""

    layer: str
    label: int | None = None
    window: int = 50
    stride: int = 8
    fill: float = 0.0
    channel: int | None = None
    rule: str = "auto"
    approximate: bool | Approximation = False
    batch_size: int | None = None
    incremental: bool = True


def write_occlusion(loaded: Any, image: torch.Tensor, out: str | Path, settings: OcclusionSettings, *,
                    image_path: str | Path, params: Mapping[str, Any] | None = None) -> list[str]:
    """Occlusion sensitivity of one image: compute the maps, write the figure, the table and ``result.json``.

    Args:
        loaded: a :class:`convlens.nets.loading.Loaded` (model, preprocessing, class names).
        image: (3, H, W) normalized image on the model's device.
        out: output folder (created).
        settings: see :class:`OcclusionSettings`.
        image_path: the image's file (named in the figure and ``result.json``).
        params: recorded as ``result.json`` ``params`` (e.g. the command's flags).

    Returns:
        The lines to show the user (summary, approximation quality, rule, the labels table, the file).

    Raises:
        ValueError: a ``label`` outside the model's classes.

    Example:
        >>> loaded = load_model("runs/zf/checkpoints/last.pt")
        >>> x = loaded.preprocessing.eval_transform()(load_image("dog.jpg"))
        >>> write_occlusion(loaded, x, "out/occ", OcclusionSettings("conv5", window=50), image_path="dog.jpg")
    """
    from convlens.deconv.rules import resolve_rule
    from convlens.io.artifacts import markdown_table, save_figure, write_result, write_text
    from convlens.occlusion.figures import (
        class_name,
        drawn_range,
        label_names,
        label_table,
        occlusion_projection,
        render_occlusion,
    )
    from convlens.occlusion.maps import occlusion_map

    s, names, out = settings, loaded.class_names, Path(out)
    if s.label is not None and not 0 <= s.label < max(len(names), 1):
        raise ValueError(f"--label {s.label}: expected a class index in 0..{len(names) - 1}")
    t0 = time.perf_counter()
    occ = occlusion_map(loaded.model, image, window=s.window, stride=s.stride, fill=s.fill, target=s.label,
                        layer=s.layer, channel=s.channel, batch_size=s.batch_size, incremental=s.incremental,
                        approximate=s.approximate)
    seconds = time.perf_counter() - t0
    rule, rule_reason = resolve_rule(loaded.model, occ.layer, s.rule)
    proj01, box = occlusion_projection(loaded.model, image, occ, rule)
    out.mkdir(parents=True, exist_ok=True)
    fig = render_occlusion(loaded.preprocessing.denormalize(image.cpu()), occ, proj01, box, names, rule=rule,
                           title=f"{Path(image_path).name}: correct class {class_name(occ.target, names)} "
                                 f"(clean p = {float(occ.clean_probs[occ.target]):.3f})")
    save_figure(fig, out / "occlusion.png", dpi=80)
    table = label_table(occ, names)
    write_text(out / "occlusion.md", f"### {table['title']}\n\n" + markdown_table(table["columns"], table["rows"]))
    data = occ.to_dict()
    data.update(class_names={str(k): v for k, v in label_names(occ.top_label, names).items()}, seconds=seconds,
                image=str(image_path), rule=rule, rule_reason=rule_reason)
    lo, hi = drawn_range(occ.prob_heatmap)
    summary = (f"{occ.window}px grey square, stride {occ.stride}, {occ.target_prob.numel()} positions: "
               f"p({class_name(occ.target, names)}) "
               f"{float(occ.target_prob.min()):.3f}..{float(occ.target_prob.max()):.3f} "
               f"(clean {float(occ.clean_probs[occ.target]):.3f}) per occluder position; panel (d) draws, per pixel, "
               f"the mean over the occluders covering it: {lo:.3f}..{hi:.3f} (its colour bar); "
               f"{occ.layer} map {occ.channel}; {seconds:.1f} s")
    write_result(out, "occlusion", title="Occlusion sensitivity (Fig. 7)", summary=summary, params=dict(params or {}),
                 figures=[{"path": "occlusion.png", "caption": summary, "group": Path(image_path).stem}],
                 tables=[table], data=data)
    quality = ["approximate mode: " + ", ".join(f"{k} {v:.4g}" for k, v in occ.quality.items())] if occ.quality else []
    return [summary, *quality, f"panel (c) rule: {rule} ({rule_reason})",
            markdown_table(table["columns"], table["rows"]), f"wrote {out / 'result.json'}"]
