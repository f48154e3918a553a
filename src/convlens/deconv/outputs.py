"""What ``convlens project`` writes (Sec. 2.1, Fig. 1; the panels of Fig. 2 for one image), callable from Python.

:func:`write_projection` projects the ``top`` strongest activations of one feature map in an image
and writes, into ``out``: ``image.png``, ``view.png`` (the strongest unit's projection beside its
patch, :mod:`convlens.deconv.view`), ``projection.png`` (on the whole image, same contrast),
``projection_rf.png`` and ``patch.png`` (in the unit's whole receptive field), ``grid.png`` (all
units, labelled, as in Fig. 2), with ``sanity`` also ``sanity.png``, and ``result.json`` (kind
``project``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convlens.deconv.project import Projection, project_topk
from convlens.deconv.rules import resolve_rule
from convlens.deconv.view import CONTRAST, SHARE, ProjectionView, present, shade

__all__ = ["ProjectSettings", "strongest_channel", "write_projection"]

VIEW = 128  # displayed side of each projection and patch tile, pixels


@dataclass(frozen=True)
class ProjectSettings:
    """What to project: ``layer`` (resolved name), ``channel`` (None: the strongest in the image),
    ``top`` positions, the ``rule`` (``auto``, ``deconvnet``, ``guided``, ``gradient``), and the
    cascading-randomization ``sanity`` check with its ``seed``."""

    layer: str
    channel: int | None = None
    top: int = 9
    rule: str = "auto"
    sanity: bool = False
    seed: int = 0


def strongest_channel(model: torch.nn.Module, x: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the largest activation anywhere in ``x`` (1, 3, H, W).

    Example:
        >>> strongest_channel(model, image[None], "conv5")
    """
    from convlens.core.capture import capture

    act = capture(model, x, [layer])[layer][0]
    return int((act.flatten(1).amax(1) if act.dim() == 3 else act).argmax())


def _grid(proj: Projection, views: list[ProjectionView], image: str) -> torch.Tensor:
    """Projections (left) and patches (right), each as a sqrt(K)-wide block, labelled, as in Fig. 2."""
    from convlens.deconv.blocks import map_block, value_caption

    units = proj.units[0].tolist()
    header = [f"{proj.layer} map {units[0][0]}: top-{len(units)} positions in {image}",
              f"rule: {proj.rule}; left: projections (activation), right: image patches (y, x) of the same boxes",
              f"each cropped to where its projection is; {CONTRAST}"]
    return map_block(torch.stack([v.shown for v in views]), torch.stack([v.patch for v in views]), header,
                     [value_caption(float(v)) for v in proj.values[0]], [f"({y}, {x})" for _, y, x in units])


def _sanity(model: torch.nn.Module, x: torch.Tensor, proj: Projection, s: ProjectSettings, out: Path) -> dict:
    from convlens.deconv.sanity import sanity_check, sanity_figure
    from convlens.io.artifacts import save_png

    k = min(proj.units.shape[1], 5)
    sc = sanity_check(model, x, s.layer, proj.units[:, :k], rule=proj.rule, seed=s.seed)
    save_png(sanity_figure(sc), out / "sanity.png")
    d = sc.to_dict()
    return {"layers": d["layers"], "spearman_mean": d["spearman_mean"], "pearson_mean": d["pearson_mean"], "units": k}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _save_views(proj: Projection, image01: torch.Tensor, out: Path, image_name: str) -> list[ProjectionView]:
    """Per unit the one presentation (cropped to its mass inside its receptive field, beside the same
    image patch, robust contrast); saves the strongest unit's PNGs and the grid."""
    from convlens.io.artifacts import save_png
    from convlens.io.viz import hstack

    views = [present(proj.images[0, k], image01, rf_box=proj.boxes[0, k], size=VIEW)
             for k in range(proj.images.shape[1])]
    best = views[0]
    save_png(image01, out / "image.png")
    save_png(hstack([best.shown, best.patch], pad=4), out / "view.png")
    save_png(shade(proj.images[0, 0], best.scale), out / "projection.png")
    save_png(best.full, out / "projection_rf.png")
    save_png(best.full_patch, out / "patch.png")
    save_png(_grid(proj, views, image_name), out / "grid.png")
    return views


def write_projection(loaded: Any, image: torch.Tensor, out: str | Path, settings: ProjectSettings, *,
                     image_path: str | Path, params: Mapping[str, Any] | None = None) -> list[str]:
    """Project one feature map's strongest activations in ``image`` and write the figures and ``result.json``.

    Args:
        loaded: a :class:`convlens.nets.loading.Loaded` (its model, preprocessing and provenance).
        image: (1, 3, H, W) normalized image on the model's device.
        out: output folder (created).
        settings: the layer, channel, number of units, rule and sanity check (:class:`ProjectSettings`).
        image_path: the image's file (named in the figures and ``result.json``).
        params: recorded first in ``result.json`` ``params`` (e.g. the model's checkpoint, arch, weights).

    Returns:
        The lines to show the user (the rule and its reason, the sanity scores, the activations, the files).

    Example:
        >>> loaded = load_model("runs/zf/checkpoints/last.pt")
        >>> x = loaded.preprocessing.eval_transform()(load_image("dog.jpg"))[None]
        >>> write_projection(loaded, x, "out/project", ProjectSettings("conv5", top=9), image_path="dog.jpg")
    """
    from convlens.io.artifacts import write_result

    s, model, out = settings, loaded.model, Path(out)
    channel = s.channel if s.channel is not None else strongest_channel(model, image, s.layer)
    rule, reason = resolve_rule(model, s.layer, s.rule)
    proj = project_topk(model, image, s.layer, channel, k=s.top, rule=rule)
    image01 = loaded.preprocessing.denormalize(image[0]).cpu()
    proj = type(proj)(proj.images.cpu(), proj.values.cpu(), proj.units.cpu(), proj.boxes.cpu(), proj.layer, proj.rule)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(image_path).name
    views = _save_views(proj, image01, out, name)
    best, unit, lines = views[0], f"{s.layer}:{channel}", [f"rule: {rule} ({reason})"]
    db = list(best.display_box)
    figures = [
        {"path": "grid.png", "group": unit, "caption": f"{unit}: top-{s.top} activations in the image; left: "
         f"{rule} projections cropped to where each is, right: the image patches of the same boxes; {CONTRAST}"},
        {"path": "view.png", "group": unit, "caption": f"{unit}: the strongest activation's projection beside the "
         f"image patch of the same box {db} (y0, x0, y1, x1; {best.share:.0%} of its mass); {CONTRAST}"},
        {"path": "projection.png", "group": unit, "caption": f"{unit}: projection of the strongest activation, "
         "whole image, same contrast"},
        {"path": "projection_rf.png", "group": unit, "caption": "the same, in its whole receptive field "
         f"{list(best.rf_box)}, full size"},
        {"path": "patch.png", "group": unit, "caption": "the image inside that receptive field, full size"},
        {"path": "image.png", "group": unit, "caption": "input image (center crop)"},
    ]
    rows = [[k + 1, *proj.units[0, k].tolist(), round(float(proj.values[0, k]), 4), str(proj.boxes[0, k].tolist()),
             str(list(views[k].display_box))] for k in range(proj.units.shape[1])]
    tables = [{"title": f"{unit}: projected units", "columns": ["rank", "channel", "y", "x", "activation",
                                                              "receptive field box", "display box"], "rows": rows}]
    data: dict[str, Any] = {"layer": s.layer, "channel": channel, "rule": rule, "rule_reason": reason,
                            "rule_requested": s.rule, "image": str(image_path),
                            "units": proj.units[0], "values": proj.values[0], "boxes": proj.boxes[0],
                            "rf_boxes": proj.boxes[0], "views": [v.to_dict() for v in views], "contrast": CONTRAST}
    if s.sanity:
        data["sanity"] = sc = _sanity(model, image, proj, s, out)
        figures.append({"path": "sanity.png", "group": unit, "caption": "sanity check: trained projections (top "
                        "row), then with the weights of " + ", ".join(sc["layers"]) + " re-drawn one by one"})
        scores = [[n, _fmt(a), _fmt(b)] for n, a, b in zip(sc["layers"], sc["spearman_mean"], sc["pearson_mean"],
                                                            strict=True)]
        lines += ["sanity check (Adebayo et al. 2018), similarity to the trained projection:",
                  f"  {'randomized down to':<40} {'Spearman |map|':>15} {'Pearson':>8}"]
        lines += [f"  {n:<40} {a:>15} {b:>8}" for n, a, b in scores]
        tables.append({"title": "Sanity check (Adebayo et al. 2018): similarity to the trained projection",
                       "columns": ["randomized down to", "Spearman |map|", "Pearson"], "rows": scores})
    provenance = {"preprocessing": loaded.provenance.to_dict() if loaded.provenance is not None else None}
    record = {**(params or {}), "image": str(image_path), "layer": s.layer, "channel": channel, "top": s.top,
              "rule": s.rule, "sanity": s.sanity, "seed": s.seed} | provenance
    summary = (f"{rule} projections of the {s.top} strongest activations of {unit} in {name}"
               f" (strongest {float(proj.values[0, 0]):.3g}), each cropped to the box holding {SHARE:.0%} of its "
               f"mass; rule {rule}: {reason}")
    write_result(out, "project", title="Deconvnet projections (Sec. 2.1, Fig. 1)", summary=summary, params=record,
                 figures=figures, tables=tables, data=data)
    return [
        *lines,
        f"{unit}: top-{s.top} activations {', '.join(f'{v:.3g}' for v in proj.values[0].tolist())}",
        f"shown: each projection in the smallest box holding {SHARE:.0%} of its mass plus a margin, beside the same "
        f"image patch (strongest: {db} of receptive field {list(best.rf_box)}); {CONTRAST}",
        f"wrote {out / 'grid.png'} and {out / 'result.json'}"]
