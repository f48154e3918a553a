"""``convlens compare``: match the units of two mined runs by the correlation of their activations.

Reads the activation tables of two ``convlens mine`` runs over the same dataset and writes
``result.json`` (kind ``compare``: ``data.layers.<layer>.a_to_b`` / ``b_to_a``, lists of
``{"unit", "match", "r"}``) and ``compare.png``; see :mod:`convlens.topk.compare`.
"""
from __future__ import annotations

import argparse

from convlens.commands._common import add_out_arg


def layer_pairs(text: str | None) -> list[tuple[str, str]] | None:
    """``--layers``: ``L1,L2`` (same names in both runs) or ``A_LAYER=B_LAYER,...``."""
    if not text:
        return None
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        a, _, b = part.partition("=")
        if not a.strip() or (_ and not b.strip()):
            raise ValueError(f"--layers must be LAYER or A_LAYER=B_LAYER items separated by commas, got {text!r}")
        pairs.append((a.strip(), (b or a).strip()))
    return pairs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="match the units of two mined runs (two checkpoints or two models) by correlation",
        description="Correlate the per-image maxima of every unit of run A with every unit of run B over the "
                    "images both mined, and give each unit its best match in the other run (Pearson r).",
        epilog="example: convlens compare runs/epoch2/mine runs/epoch30/mine --layers conv5 --out runs/cmp",
    )
    p.add_argument("run_a", metavar="RUN_A", help="the --out folder of a 'convlens mine' run")
    p.add_argument("run_b", metavar="RUN_B", help="the --out folder of another, on the same dataset")
    p.add_argument("--layers", default=None,
                   help="layers to match: L1,L2 (in both runs) or A_LAYER=B_LAYER pairs (default: every layer "
                        "both runs mined)")
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.topk.compare import compare_runs, write_comparison

    matches = compare_runs(args.run_a, args.run_b, layer_pairs(args.layers))
    print(write_comparison(args.out, matches, args.run_a, args.run_b))
    return 0
