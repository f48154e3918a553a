"""``convlens project``: projections of one feature map's strongest units in an image
(Sec. 2.1, Fig. 1; the panels of Fig. 2 for a single image).

``--rule auto`` (default) uses the paper's deconvnet where max-pool switches make it follow the
image and guided backprop elsewhere (:func:`convlens.deconv.rules.resolve_rule`); the rule and the reason
are printed and stored in ``result.json`` (``data.rule``, ``data.rule_reason``).

Every projection is shown the one way of :mod:`convlens.deconv.view`: cropped to the box holding 80%
of its mass (plus a margin, inside the receptive field) beside the image patch of the same box,
contrast from the 99th percentile of |value|, resampled smoothly. Writes into ``--out``:
``image.png`` (the input), ``view.png`` (the strongest unit's projection beside its patch),
``projection.png`` (that projection on the whole image, same contrast), ``projection_rf.png`` and
``patch.png`` (projection and image in the unit's whole receptive field, full size), ``grid.png``
(all ``--top`` units: projections on the left, patches on the right, strongest first), with ``--sanity`` also
``sanity.png`` (rows: trained, then each cascading randomization step, labelled with their
scores, which are also printed) and ``result.json``
(kind ``project``: units, activation values, ``boxes``/``rf_boxes``, ``views`` with each ``display_box``
and contrast scale, sanity scores).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlens.commands._common import add_device_arg, add_model_args, add_out_arg, positive_int
from convlens.commands._lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


VIEW = 128  # displayed side of each projection and patch tile, pixels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "project",
        help="project a feature map's strongest activations back to pixels (deconvnet, Sec. 2.1)",
        description="Project the --top strongest activations of one feature map in an image back to input "
        "pixels with the deconvnet (or guided backprop / the plain gradient), and save the projections, their "
        "receptive-field crops and the matching image patches.",
        epilog="examples: convlens project --checkpoint runs/zf/checkpoints/last.pt --image dog.jpg --layer conv5 "
        "--channel 42 --out runs/zf/project;  convlens project --arch torchvision:mobilenet_v2 --weights "
        "mobilenet_v2_imagenet.pt --image dog.jpg --layer features.14.conv.0.2 --out out/project",
    )
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--layer", default=None,
                   help="layer: conv1..conv5 or a stage (convlens models); any module path such as features.14 or "
                   "layer2.1 (see 'convlens summary'). Default: conv5, else the deepest default layer")
    p.add_argument("--channel", type=int, default=None, help="feature map (default: the strongest in the image)")
    p.add_argument("--top", type=positive_int, default=9, help="number of strongest positions to project (default 9)")
    p.add_argument("--rule", choices=("auto", "deconvnet", "guided", "gradient"), default="auto",
                   help="projection rule (default auto: the paper's deconvnet where max-pool switches make it "
                   "follow the image, guided backprop elsewhere; the choice and its reason are printed)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the cascading weight-randomization sanity check (Adebayo et al. 2018)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sanity check's random weights")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def _strongest_channel(model: torch.nn.Module, x: torch.Tensor, layer: str) -> int:
    from convlens.core.capture import record_activations

    with torch.no_grad(), record_activations(model, [layer]) as acts:
        model(x)
    act = acts[layer][0]
    return int((act.flatten(1).amax(1) if act.dim() == 3 else act).argmax())


def _views(proj: Any, image01: torch.Tensor, size: int) -> list[Any]:
    """Per unit the one presentation (:func:`convlens.deconv.view.present`): cropped to the projection's
    mass inside its receptive field, beside the image patch of the same box, robust contrast."""
    from convlens.deconv.view import present

    return [present(proj.images[0, k], image01, rf_box=proj.boxes[0, k], size=size)
            for k in range(proj.images.shape[1])]


def _grid(proj: Any, views: list[Any], image: str) -> torch.Tensor:
    """Projections (left) and patches (right), each as a sqrt(K)-wide block, labelled, as in Fig. 2."""
    from convlens.deconv.view import CONTRAST
    from convlens.topk.sheets import map_block, value_caption

    units = proj.units[0].tolist()
    header = [f"{proj.layer} map {units[0][0]}: top-{len(units)} positions in {image}",
              f"rule: {proj.rule}; left: projections (activation), right: image patches (y, x) of the same boxes",
              f"each cropped to where its projection is; {CONTRAST}"]
    return map_block(torch.stack([v.shown for v in views]), torch.stack([v.patch for v in views]), header,
                     [value_caption(float(v)) for v in proj.values[0]], [f"({y}, {x})" for _, y, x in units])


def _sanity(model: torch.nn.Module, x: torch.Tensor, proj: Any, args: argparse.Namespace, out: Path) -> dict:
    from convlens.deconv.sanity import sanity_check, sanity_figure
    from convlens.io.artifacts import save_png

    k = min(proj.units.shape[1], 5)
    sc = sanity_check(model, x, args.layer, proj.units[:, :k], rule=proj.rule, seed=args.seed)
    save_png(sanity_figure(sc), out / "sanity.png")
    d = sc.to_dict()
    return {"layers": d["layers"], "spearman_mean": d["spearman_mean"], "pearson_mean": d["pearson_mean"], "units": k}


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import (
        load_image_arg,
        load_model_from_args,
        preprocessing_params,
        resolve_device_arg,
    )
    from convlens.deconv.project import project_topk, resolve_rule
    from convlens.io.artifacts import save_png, write_result
    from convlens.nets.layers import feature_map_layer

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    model = loaded.model
    x = load_image_arg(loaded, args.image).to(device)[None]  # (1, 3, H, W)
    args.layer = feature_map_layer(loaded, args.layer)
    channel = args.channel if args.channel is not None else _strongest_channel(model, x, args.layer)
    rule, reason = resolve_rule(model, args.layer, args.rule)
    print(f"rule: {rule} ({reason})")
    proj = project_topk(model, x, args.layer, channel, k=args.top, rule=rule)
    image01 = loaded.preprocessing.denormalize(x[0]).cpu()
    proj = type(proj)(proj.images.cpu(), proj.values.cpu(), proj.units.cpu(), proj.boxes.cpu(), proj.layer, proj.rule)

    from convlens.deconv.view import CONTRAST, SHARE, shade
    from convlens.io.viz import hstack

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    views = _views(proj, image01, VIEW)
    best = views[0]
    save_png(image01, out / "image.png")
    save_png(hstack([best.shown, best.patch], pad=4), out / "view.png")
    save_png(shade(proj.images[0, 0], best.scale), out / "projection.png")
    save_png(best.full, out / "projection_rf.png")
    save_png(best.full_patch, out / "patch.png")
    save_png(_grid(proj, views, Path(args.image).name), out / "grid.png")
    unit = f"{args.layer}:{channel}"
    db = list(best.display_box)
    figures = [
        {"path": "grid.png", "group": unit, "caption": f"{unit}: top-{args.top} activations in the image; left: "
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
    data: dict[str, Any] = {"layer": args.layer, "channel": channel, "rule": rule, "rule_reason": reason,
                            "rule_requested": args.rule, "image": str(args.image),
                            "units": proj.units[0], "values": proj.values[0], "boxes": proj.boxes[0],
                            "rf_boxes": proj.boxes[0], "views": [v.to_dict() for v in views], "contrast": CONTRAST}
    if args.sanity:
        data["sanity"] = s = _sanity(model, x, proj, args, out)
        figures.append({"path": "sanity.png", "group": unit, "caption": "sanity check: trained projections (top "
                        "row), then with the weights of " + ", ".join(s["layers"]) + " re-drawn one by one"})
        print("sanity check (Adebayo et al. 2018), similarity to the trained projection:")
        print(f"  {'randomized down to':<40} {'Spearman |map|':>15} {'Pearson':>8}")
        for n, a, c in zip(s["layers"], s["spearman_mean"], s["pearson_mean"], strict=True):
            print(f"  {n:<40} {_fmt(a):>15} {_fmt(c):>8}")
        tables.append({"title": "Sanity check (Adebayo et al. 2018): similarity to the trained projection",
                       "columns": ["randomized down to", "Spearman |map|", "Pearson"],
                       "rows": [[n, _fmt(a), _fmt(b)] for n, a, b in zip(s["layers"], s["spearman_mean"],
                                                                          s["pearson_mean"], strict=False)]})
    params = {"checkpoint": args.checkpoint, "arch": args.arch or loaded.arch, "weights": args.weights,
              "image": str(args.image), "layer": args.layer, "channel": channel, "top": args.top, "rule": args.rule,
              "sanity": args.sanity, "seed": args.seed} | preprocessing_params(loaded)
    summary = (f"{rule} projections of the {args.top} strongest activations of {unit} in {Path(args.image).name}"
               f" (strongest {float(proj.values[0, 0]):.3g}), each cropped to the box holding {SHARE:.0%} of its "
               f"mass; rule {rule}: {reason}")
    write_result(out, "project", title="Deconvnet projections (Sec. 2.1, Fig. 1)", summary=summary, params=params,
                 figures=figures, tables=tables, data=data)
    print(f"{unit}: top-{args.top} activations {', '.join(f'{v:.3g}' for v in proj.values[0].tolist())}")
    print(f"shown: each projection in the smallest box holding {SHARE:.0%} of its mass plus a margin, beside the same "
          f"image patch (strongest: {db} of receptive field {list(best.rf_box)}); {CONTRAST}")
    print(f"wrote {out / 'grid.png'} and {out / 'result.json'}")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
