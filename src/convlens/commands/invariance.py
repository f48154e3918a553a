"""``convlens invariance``: feature invariance to vertical translation, scale and rotation (Fig. 5).

Writes into ``--out``: ``invariance.png`` (rows: translate, scale, rotate; columns: example
transformed images, the feature distance of each ``--layers`` layer, the probability of the
``--labels`` class, or without ``--labels`` of the class predicted for the untransformed image,
named "predicted class", never "true label"; one curve per image), ``result.json`` (kind
``invariance``, all curves in ``data``) and ``invariance.md``, all written by
:func:`convlens.invariance.outputs.write_invariance`.
"""
from __future__ import annotations

import argparse
from typing import Any

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._model import add_model_args


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

    from convlens.commands._common import resolve_device_arg
    from convlens.commands._model import load_image_arg, load_model_from_args, run_params
    from convlens.invariance.outputs import write_invariance

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    images = torch.stack([load_image_arg(loaded, p, "--images") for p in args.images]).to(device)
    layers = _layers(args.layers, loaded)
    labels = [int(v) for v in _floats(args.labels, "--labels")] if args.labels else None
    sweeps = {"scale": _floats(args.scale, "--scale"), "rotate": _floats(args.rotate, "--rotate")}
    if args.translate:
        sweeps["translate"] = _floats(args.translate, "--translate")
    for line in write_invariance(loaded, images, args.out, layers=layers, image_paths=args.images, sweeps=sweeps,
                                 labels=labels, params=run_params(args, loaded)):
        print(line)
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
