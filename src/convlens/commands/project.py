"""``convlens project``: projections of one feature map's strongest units in an image
(Sec. 2.1, Fig. 1; the panels of Fig. 2 for a single image).

``--rule auto`` (default) uses the paper's deconvnet where max-pool switches make it follow the
image and guided backprop elsewhere (:func:`convlens.rules.resolve_rule`); the rule and the reason
are printed and stored in ``result.json`` (``data.rule``, ``data.rule_reason``).

Writes into ``--out``: ``image.png`` (the input), ``projection.png`` (the strongest unit's
projection, contrast-normalized), ``projection_rf.png`` (the same cropped to the unit's receptive
field), ``patch.png`` (the image inside that field), ``grid.png`` (all ``--top`` units: cropped
projections on the left, image patches on the right, strongest first), with ``--sanity`` also
``sanity.png`` (rows: trained, then each cascading randomization step, labelled with their
scores, which are also printed) and ``result.json``
(kind ``project``: units, activation values, boxes, sanity scores).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import add_device_arg, add_model_args, add_out_arg, positive_int
from ._lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


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
    from ..hooks import record_activations

    with torch.no_grad(), record_activations(model, [layer]) as acts:
        model(x)
    act = acts[layer][0]
    return int((act.flatten(1).amax(1) if act.dim() == 3 else act).argmax())


def _crops(proj: Any, image01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit: its projection and the image, both cropped to the unit's receptive field and padded
    to one side (K, 3, S, S); the projections contrast-normalized."""
    from ..viz import crop_box, normalize_for_display, pad_to

    boxes = proj.boxes[0].tolist()
    side = max(max(b[2] - b[0], b[3] - b[1]) for b in boxes)
    crops = [pad_to(normalize_for_display(crop_box(proj.images[0, k], b)), side, side) for k, b in enumerate(boxes)]
    patches = [pad_to(crop_box(image01, b), side, side) for b in boxes]
    return torch.stack(crops), torch.stack(patches)


def _grid(proj: Any, crops: torch.Tensor, patches: torch.Tensor, image: str) -> torch.Tensor:
    """Projections (left) and patches (right), each as a sqrt(K)-wide block, labelled, as in Fig. 2."""
    from ..fig2 import map_block, value_caption
    from ..viz import resize_tile

    tile = max(64, min(128, crops.shape[-1]))
    units = proj.units[0].tolist()
    header = [f"{proj.layer} map {units[0][0]}: top-{len(units)} positions in {image}",
              f"rule: {proj.rule}; left: projections (activation), right: image patches (y, x)"]
    return map_block(resize_tile(crops, tile), resize_tile(patches, tile), header,
                     [value_caption(float(v)) for v in proj.values[0]], [f"({y}, {x})" for _, y, x in units])


def _sanity(model: torch.nn.Module, x: torch.Tensor, proj: Any, args: argparse.Namespace, out: Path) -> dict:
    from ..artifacts import save_png
    from ..sanity import sanity_check, sanity_figure

    k = min(proj.units.shape[1], 5)
    sc = sanity_check(model, x, args.layer, proj.units[:, :k], rule=proj.rule, seed=args.seed)
    save_png(sanity_figure(sc), out / "sanity.png")
    d = sc.to_dict()
    return {"layers": d["layers"], "spearman_mean": d["spearman_mean"], "pearson_mean": d["pearson_mean"], "units": k}


def run(args: argparse.Namespace) -> int:
    from ..artifacts import save_png, write_result
    from ..deconv import project_topk, resolve_rule
    from ._common import (
        feature_map_layer,
        load_image_arg,
        load_model_from_args,
        preprocessing_params,
        resolve_device_arg,
    )

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

    from ..viz import normalize_for_display

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    crops, patches = _crops(proj, image01)
    b = proj.boxes[0, 0].tolist()
    save_png(image01, out / "image.png")
    save_png(normalize_for_display(proj.images[0, 0]), out / "projection.png")
    save_png(normalize_for_display(proj.images[0, 0, :, b[0]:b[2], b[1]:b[3]]), out / "projection_rf.png")
    save_png(image01[:, b[0]:b[2], b[1]:b[3]], out / "patch.png")
    save_png(_grid(proj, crops, patches, Path(args.image).name), out / "grid.png")
    unit = f"{args.layer}:{channel}"
    figures = [
        {"path": "grid.png", "group": unit, "caption": f"{unit}: top-{args.top} activations in the image; left: "
         f"{rule} projections cropped to the receptive field, right: the image patches"},
        {"path": "projection.png", "group": unit, "caption": f"{unit}: projection of the strongest activation"},
        {"path": "projection_rf.png", "group": unit, "caption": "the same, cropped to its receptive field"},
        {"path": "patch.png", "group": unit, "caption": "the image inside that receptive field"},
        {"path": "image.png", "group": unit, "caption": "input image (center crop)"},
    ]
    rows = [[k + 1, *proj.units[0, k].tolist(), round(float(proj.values[0, k]), 4), str(proj.boxes[0, k].tolist())]
            for k in range(proj.units.shape[1])]
    tables = [{"title": f"{unit}: projected units", "columns": ["rank", "channel", "y", "x", "activation", "box"],
               "rows": rows}]
    data: dict[str, Any] = {"layer": args.layer, "channel": channel, "rule": rule, "rule_reason": reason,
                            "rule_requested": args.rule, "image": str(args.image),
                            "units": proj.units[0], "values": proj.values[0], "boxes": proj.boxes[0]}
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
               f" (strongest {float(proj.values[0, 0]):.3g}), cropped to their receptive fields; rule {rule}: {reason}")
    write_result(out, "project", title="Deconvnet projections (Sec. 2.1, Fig. 1)", summary=summary, params=params,
                 figures=figures, tables=tables, data=data)
    print(f"{unit}: top-{args.top} activations {', '.join(f'{v:.3g}' for v in proj.values[0].tolist())}")
    print(f"wrote {out / 'grid.png'} and {out / 'result.json'}")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
