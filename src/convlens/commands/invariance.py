"""``convlens invariance``: feature invariance to vertical translation, scale and rotation (Fig. 5).

Writes into ``--out``: ``invariance.png`` (rows: translate, scale, rotate; columns: example
transformed images, the feature distance of each ``--layers`` layer, the probability of the
``--labels`` class, or without ``--labels`` of the class predicted for the untransformed image,
named "predicted class", never "true label"; one curve per image), ``result.json`` (kind
``invariance``, all curves in ``data``) and ``invariance.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlens.commands._common import add_device_arg, add_model_args, add_out_arg

if TYPE_CHECKING:
    import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invariance",
        help="feature distances and class probability under translation, scale, rotation (Fig. 5)",
        description="Translate (vertically), scale and rotate each image; plot the Euclidean distance between the "
        "feature vectors of the transformed and the original image at each layer, and the probability of the "
        "image's class: its true label (--labels), else the class predicted for the untransformed image.",
        epilog="example: convlens invariance --checkpoint C --images a.jpg b.jpg --layers conv1,fc7 "
        "--out runs/zf/invariance",
    )
    add_model_args(p)
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--labels", default=None, help="comma-separated true class per image (default: predicted)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default conv1,fc7 of a convlens model, else the first and last "
                        "default layers; see 'convlens summary')")
    p.add_argument("--translate", default=None,
                   help="vertical shifts in pixels, comma-separated "
                   "(default: -60..60 step 10, scaled to the input size)")
    p.add_argument("--scale", default="0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8", help="scale factors")
    p.add_argument("--rotate", default=",".join(str(a) for a in range(0, 361, 15)), help="rotation angles in degrees")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{flag} needs at least one value")
    return vals


def run(args: argparse.Namespace) -> int:
    import torch

    from convlens.commands._common import load_image_arg, load_model_from_args, resolve_device_arg, run_params
    from convlens.invariance.analysis import invariance_curves, transform_images
    from convlens.invariance.figures import example_params, render_invariance
    from convlens.io.artifacts import markdown_table, save_figure, write_result, write_text

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    pre = loaded.preprocessing
    images = torch.stack([load_image_arg(loaded, p, "--images") for p in args.images]).to(device)
    layers = _layers(args.layers, loaded)
    labels = [int(v) for v in _floats(args.labels, "--labels")] if args.labels else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"--labels has {len(labels)} values for {len(images)} images; give one class index per image")
    n_out = len(loaded.class_names)
    if labels is not None and any(not 0 <= v < n_out for v in labels):
        raise ValueError(f"--labels {args.labels}: expected class indices in 0..{n_out - 1}")
    H = images.shape[-2]
    translate = _floats(args.translate, "--translate") if args.translate else \
        [float(round(v * H / 224)) for v in range(-60, 61, 10)]
    sweeps = {"translate": translate, "scale": _floats(args.scale, "--scale"),
              "rotate": _floats(args.rotate, "--rotate")}
    curves = {t: invariance_curves(loaded.model, images, transform=t, params=v, layers=layers, labels=labels)
              for t, v in sweeps.items()}
    examples = {t: torch.stack([pre.denormalize(transform_images(images[:1], t, v)[0].cpu())
                                for v in example_params(c.params)]) for t, c in curves.items()}
    names = [Path(p).stem[:24] for p in args.images]
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(render_invariance(curves, examples, names, layers), args.out / "invariance.png", dpi=80)
    cls = loaded.class_names
    first = curves["translate"].labels
    kind, short = ("true label", "true") if labels is not None else ("predicted class", "predicted")
    cols = ["image", kind, f"clean P({short})"] \
        + [f"max {t} distance {layer}" for t in sweeps for layer in layers[-1:]] \
        + [f"min P({short}) under {t}" for t in sweeps]
    ident = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
    rows = []
    for i, n in enumerate(names):
        clean = _clean_prob(loaded.model, images[i:i + 1], int(first[i]))
        rows.append([n, cls[int(first[i])] if int(first[i]) < len(cls) else str(int(first[i])), f"{clean:.3f}"]
                    + [f"{float(curves[t].distances[layers[-1]][i].max()):.3g}" for t in sweeps]
                    + [f"{float(curves[t].probs[i].min()):.3f}" for t in sweeps])
    table = {"title": "Invariance summary (Fig. 5)", "columns": cols, "rows": rows}
    write_text(args.out / "invariance.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    summary = (f"{len(images)} images; translate {min(translate):g}..{max(translate):g} px, scale "
               f"{min(sweeps['scale']):g}..{max(sweeps['scale']):g}, rotate {min(sweeps['rotate']):g}.."
               f"{max(sweeps['rotate']):g} deg; distances at {', '.join(layers)}; fill = mean (0); probability of "
               + ("the true label (--labels)" if labels is not None else
                  "the class predicted for each untransformed image (no --labels)"))
    write_result(args.out, "invariance", title="Feature invariance (Fig. 5)", summary=summary,
                 params=run_params(args, loaded) | {"identity": ident, "layers": layers},
                 figures=[{"path": "invariance.png", "caption": "rows: vertical translation, scale, rotation; columns: "
                           f"first image transformed, feature distance per layer, P({kind}); one curve per image",
                           "group": "invariance"}],
                 tables=[table], data={"curves": {t: c.to_dict() for t, c in curves.items()}, "images": args.images})
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _layers(text: str | None, loaded: Any) -> list[str]:
    """--layers, or conv1,fc7 (the paper's) on a convlens model, else the first and last default layers."""
    from convlens.commands._common import parse_layers
    from convlens.nets.layers import default_layers

    if text is None and hasattr(loaded.model, "layer_names"):
        return parse_layers("conv1,fc7", loaded)
    if text is None:
        names = default_layers(loaded)
        return [names[0], names[-1]] if len(names) > 1 else names
    return parse_layers(text, loaded)


def _clean_prob(model: Any, x: torch.Tensor, label: int) -> float:
    import torch

    with torch.no_grad():
        return float(model(x).softmax(1)[0, label])
