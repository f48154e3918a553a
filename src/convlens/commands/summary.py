"""``convlens summary``: each stage's output shape and parameter count (Fig. 3 at a glance)."""
from __future__ import annotations

import argparse

from ..model import VARIANTS, available_archs, build_model, summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="print each layer's output shape and parameter count",
        description="Print each stage's output shape and parameters, e.g. to check ZFNet's 55/13/6 and 9216.",
        epilog=f"architectures: {', '.join(available_archs())}; variants (arch:variant): {', '.join(VARIANTS)}",
    )
    p.add_argument("--arch", default="zfnet", help="architecture name, e.g. zfnet, alexnet, zfnet-small:no34")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the arch's)")
    p.add_argument("--num-classes", type=int, default=None, help="size of fc8 (default: the arch's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.input_size is not None and args.input_size <= 0:
        raise ValueError(f"--input-size must be a positive integer, got {args.input_size}")
    model = build_model(args.arch, num_classes=args.num_classes)
    try:
        rows = summary(model, args.input_size)
    except RuntimeError as exc:
        raise ValueError(f"--input-size {args.input_size} is too small for {args.arch}: {exc}") from None
    print(f"{'stage':<10} {'output shape':<20} {'params':>12}")
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])  # type: ignore[union-attr]
        print(f"{r['stage']:<10} {shape:<20} {r['params']:>12,}")
    total = sum(int(r["params"]) for r in rows)  # type: ignore[call-overload]
    print(f"{'total':<10} {'':<20} {total:>12,}")
    return 0
