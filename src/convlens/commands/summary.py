"""``convlens summary``: each layer's output shape and parameter count (Fig. 3 at a glance), any model."""
from __future__ import annotations

import argparse
from typing import Any

from convlens.commands._common import add_out_arg
from convlens.commands._model import add_model_args, preprocessing_params
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="print each layer's output shape and parameter count",
        description="Print each layer's output shape, parameters and receptive field, e.g. to check ZFNet's "
                    "55/13/6 and 9216. Any model spec (default --arch zfnet); a convlens architecture is listed "
                    "stage by stage, any other model by its top-level modules and their direct children "
                    "('convlens layers' lists every module path).",
        epilog="examples: convlens summary --arch zfnet; convlens summary --arch torchvision:mobilenet_v2",
    )
    add_model_args(p, required=False)
    p.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                   help="number of outputs of a fresh model (default: the architecture's)")
    add_out_arg(p, required=False, help="also write DIR/result.json (the report's architecture table)")
    p.set_defaults(func=run)


def load_for_listing(args: argparse.Namespace) -> Any:
    """The model the flags name (``--arch zfnet`` when none), on the CPU; ``--num-classes`` sizes a fresh one."""
    from convlens.commands._model import load_model_from_args, model_spec

    spec = model_spec(args) or "zfnet"
    if getattr(args, "num_classes", None) and args.classes is None:
        args.classes = [str(i) for i in range(args.num_classes)]
    return load_model_from_args(args, "cpu", spec=spec)


def _shape(s: tuple[int, ...] | None) -> str:
    return "x".join(map(str, s)) if s else "-"


def _rf(size: int | None, stride: int | None) -> str:
    if size is None:
        return "-"
    return "whole image" if stride == 0 else f"{size} / {stride}"


def run(args: argparse.Namespace) -> int:
    from convlens.core.layers import list_layers

    loaded = load_for_listing(args)
    model, size = loaded.model, loaded.input_size
    infos = list_layers(model, size)
    if hasattr(model, "stage_names"):  # a convlens ConvNet: its stages, in forward order
        kept_names = list(model.stage_names)
        skip: tuple[str, ...] = ("relu", "drop")
        title_rows = "Stages (ReLU and dropout stages, which keep the shape, left out)"
    else:
        kept_names = [i.name for i in infos if i.name.count(".") <= 1]
        skip = ()
        title_rows = "Top-level modules and their direct children"
    by = {i.name: i for i in infos}
    rows = [by[n] for n in kept_names if n in by]
    total = sum(p.numel() for p in model.parameters())
    width = max([len(r.name) for r in rows] + [10]) + 2
    print(f"{'layer':<{width}} {'type':<22} {'output shape':<16} {'params':>12}  receptive field (size / stride)")
    for r in rows:
        print(f"{r.name:<{width}} {r.type[:22]:<22} {_shape(r.output_shape):<16} {r.params:>12,}  "
              f"{_rf(r.rf_size, r.rf_stride)}")
    print(f"{'total':<{width}} {'':<22} {'':<16} {total:>12,}")
    if args.out:
        from convlens.io.artifacts import write_result

        kept = [[r.name, _shape(r.output_shape), f"{r.params:,}", _rf(r.rf_size, r.rf_stride)]
                for r in rows if not r.name.startswith(skip)]
        write_result(args.out, "summary", title=f"{loaded.arch}: layers, output shapes and parameters (Fig. 3)",
                     summary=f"{loaded.arch} on {size}x{size} inputs, {total:,} parameters, in forward order.",
                     params={"arch": loaded.arch, "input_size": size, "num_classes": len(loaded.class_names)}
                     | preprocessing_params(loaded),
                     tables=[{"title": title_rows,
                              "columns": ["layer", "output shape", "parameters", "receptive field (size / stride)"],
                              "rows": kept}],
                     data={"layers": [r.to_dict() for r in rows]})
    return 0
