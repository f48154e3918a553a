"""``convlens featvis``: images optimized to excite units (feature visualization, Olah et al. 2017).

Writes into ``--out``: ``<layer>/unit_<u>.png`` and ``.json`` per unit (resumable: a rerun with the
same settings skips done units), ``featvis_<layer>.png`` (the contact sheet: unit, activation,
ratio to the mined top-1) and ``result.json`` (kind ``featvis``). See :mod:`convlens.featvis`.
"""
from __future__ import annotations

import argparse

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "featvis",
        help="images optimized to excite each unit of a layer (feature visualization), with a sanity ratio",
        description="Optimize one image per unit to excite it (Lucid/Lucent recipe: Fourier parameterization, "
        "decorrelated colour, per-image transforms, Adam), all units of the layer in one batch, the model run only "
        "up to the layer. Beside each image: its activation, read back from the saved PNG, relative to the unit's "
        "strongest mined image (--run). The natural top-9 (convlens mine) remain the primary view.",
        epilog="example: convlens featvis --arch torchvision:mobilenet_v2 --weights w.pt --layer features.13 "
        "--units 0-15 --out runs/fv",
    )
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer (module path, e.g. features.13; see 'convlens layers')")
    p.add_argument("--units", default="0-15", help="channels: ranges and lists, e.g. 0-63 or 3,7,10-12 (default 0-15)")
    p.add_argument("--steps", type=positive_int, default=512, help="Adam steps (default 512, Lucent's)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default 128, Lucent's)")
    p.add_argument("--seed", type=int, default=0, help="unit u's start and transforms are drawn from (seed, u)")
    p.add_argument("--objective", choices=("channel", "neuron"), default="channel",
                   help="channel: the map's mean (default); neuron: its centre position")
    p.add_argument("--diverse", type=positive_int, default=1, help="images per unit, with Lucid's diversity term")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05, Lucent's)")
    p.add_argument("--run", default=None, metavar="RUN",
                   help="a 'convlens mine' output: its top-1 per unit gives the sanity ratio (absent without it)")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def parse_units(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``.

    Raises:
        ValueError: not ranges/integers >= 0.
    """
    units: list[int] = []
    for part in (s.strip() for s in text.split(",")):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise ValueError(f"--units {text!r}: expected channel indices and ranges such as 0-63 or 3,7,10-12")
        units += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return list(dict.fromkeys(units))


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import resolve_device_arg
    from convlens.commands._model import load_model_from_args, run_params
    from convlens.featvis import FeatvisConfig, write_featvis

    units = parse_units(args.units)
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}; Lucent's default is 0.05")
    config = FeatvisConfig(steps=args.steps, size=args.size, lr=args.lr, seed=args.seed, objective=args.objective,
                           diverse=args.diverse)
    loaded = load_model_from_args(args, resolve_device_arg(args))
    data = write_featvis(loaded, args.layer, units, args.out, config=config, run=args.run, progress=True,
                         params=run_params(args, loaded))
    for rec in data["units"]:
        ratio = ", ".join(f"{r:.2f}" for r in rec["ratio"]) if rec["ratio"] else "n/a"
        print(f"unit {rec['unit']:>4}  activation {max(rec['activation']):8.4g}  peak / top-1 {ratio}")
    if data["note"]:
        print(data["note"])
    print(f"wrote {args.out / 'result.json'}")
    return 0
