"""``convlens summary``: each stage's output shape and parameter count (Fig. 3 at a glance)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="print each layer's output shape and parameter count",
        description="Print each stage's output shape and parameters, e.g. to check ZFNet's 55/13/6 and 9216.",
        epilog="architectures: zfnet, alexnet, zfnet-small, alexnet-small, zfnet-tiny; variants (arch:variant): "
               "no34, no7, no67, no3467, fc-x0.5, fc-x2, wide345",
    )
    p.add_argument("--arch", default="zfnet", help="architecture name, e.g. zfnet, alexnet, zfnet-small:no34")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the arch's)")
    p.add_argument("--num-classes", type=int, default=None, help="size of fc8 (default: the arch's)")
    p.add_argument("--out", default=None, help="also write DIR/result.json (the report's architecture table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model import build_model, summary

    if args.input_size is not None and args.input_size <= 0:
        raise ValueError(f"--input-size must be a positive integer, got {args.input_size}")
    model = build_model(args.arch, num_classes=args.num_classes)
    size = args.input_size or model.cfg.input_size
    try:
        stages = summary(model, size)
    except RuntimeError as exc:
        raise ValueError(f"--input-size {args.input_size} is too small for {args.arch}: {exc}") from None
    rows = [(str(r["stage"]), "x".join(str(s) for s in r["shape"]), int(r["params"]))  # type: ignore[attr-defined, call-overload]
            for r in stages]
    print(f"{'stage':<10} {'output shape':<20} {'params':>12}")
    for stage, shape, params in rows:
        print(f"{stage:<10} {shape:<20} {params:>12,}")
    total = sum(r[2] for r in rows)
    print(f"{'total':<10} {'':<20} {total:>12,}")
    if args.out:
        from ..artifacts import write_result

        kept = [[s, shape, f"{p:,}"] for s, shape, p in rows if not s.startswith(("relu", "drop"))]
        write_result(args.out, "summary", title=f"{args.arch}: layers, output shapes and parameters (Fig. 3)",
                     summary=f"{args.arch} on {size}x{size} inputs, {total:,} parameters, stages in forward order.",
                     params={"arch": args.arch, "input_size": size, "num_classes": model.cfg.num_classes},
                     tables=[{"title": "Stages (ReLU and dropout stages, which keep the shape, left out)",
                              "columns": ["stage", "output shape", "parameters"], "rows": kept}])
    return 0
