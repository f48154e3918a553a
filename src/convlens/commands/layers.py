"""``convlens layers``: every module path of a model with its output shape, channels and receptive field."""
from __future__ import annotations

import argparse

from convlens.commands._common import add_out_arg
from convlens.commands._model import add_model_args, preprocessing_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "layers",
        help="list every layer name of a model (shape, channels, receptive field)",
        description="List every module path of a model (leaves and blocks: the names --layer/--layers accept "
                    "in every command) with its output shape, channels and receptive field size/stride in input "
                    "pixels; '*' marks the layers the commands use by default. Default model: --arch zfnet.",
        epilog="examples: convlens layers --arch torchvision:resnet18; "
               "convlens layers --arch timm:efficientnet_b0 --depth 2; convlens layers --checkpoint runs/c10/last.pt",
    )
    add_model_args(p, required=False)
    p.add_argument("--depth", type=int, default=None, metavar="N",
                   help="only module paths with at most N parts (layer2 = 1, layer2.1 = 2; default: all)")
    add_out_arg(p, required=False, help="also write DIR/result.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands.summary import _rf, _shape, load_for_listing
    from convlens.core.layers import default_layers, list_layers

    if args.depth is not None and args.depth < 1:
        raise ValueError(f"--depth must be >= 1 (module path parts), got {args.depth}")
    loaded = load_for_listing(args)
    model, size = loaded.model, loaded.input_size
    infos = list_layers(model, size)
    try:
        defaults = default_layers(model, size)
    except ValueError:
        defaults = []
    # on a ConvNet conv3 means relu3's output: mark that row
    marked = {model.resolve(n) for n in defaults} if hasattr(model, "resolve") else set(defaults)
    rows = [i for i in infos if args.depth is None or i.name.count(".") < args.depth]
    width = max([len(r.name) for r in rows] + [10]) + 4
    print(f"{loaded.arch} on {size}x{size} inputs: {len(infos)} layers")
    print(f"  {'layer':<{width}} {'type':<24} {'output shape':<16} {'channels':>8}  receptive field (size / stride)")
    for r in rows:
        mark = "*" if r.name in marked else " "
        print(f"{mark} {r.name:<{width}} {r.type[:24]:<24} {_shape(r.output_shape):<16} "
              f"{r.channels if r.channels is not None else '-':>8}  {_rf(r.rf_size, r.rf_stride)}")
    print(f"default layers: {', '.join(defaults) or 'none (no spatial layer output larger than 1x1)'}")
    if hasattr(model, "resolve"):
        print("on this convlens model conv1 ... conv5, fc6, fc7 name the rectified outputs (relu1 ...)")
    if args.out:
        from convlens.io.artifacts import write_result

        write_result(args.out, "layers", title=f"{loaded.arch}: layer names",
                     summary=f"{len(infos)} module paths of {loaded.arch} on {size}x{size} inputs; default layers "
                             f"{', '.join(defaults) or 'none'}.",
                     params={"arch": loaded.arch, "input_size": size, "depth": args.depth}
                     | preprocessing_params(loaded),
                     tables=[{"title": "Layers", "columns": ["layer", "type", "output shape", "channels",
                                                             "receptive field (size / stride)"],
                              "rows": [[r.name, r.type, _shape(r.output_shape), r.channels,
                                        _rf(r.rf_size, r.rf_stride)] for r in rows]}],
                     data={"default_layers": defaults, "layers": [r.to_dict() for r in rows]})
    return 0
