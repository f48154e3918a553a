"""``convlens merge``: merge the shards of ``convlens mine --shard I/N`` into one mined run.

The shards' top-k, class statistics and activation tables are merged exactly
(:func:`convlens.topk.shards.merge_shards`); then the merged run is projected and written like
``convlens mine`` writes it (the model and dataset are opened again from the shards' settings),
so the result equals a one-process run over the whole dataset.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convlens.commands._common import add_device_arg, add_out_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge the shards of 'convlens mine --shard I/N' into one mined run",
        description="Merge disjoint shards mined with 'convlens mine ... --shard I/N' (every part 0..N-1 once, "
                    "same model, dataset and settings) into the run one process would have written.",
        epilog="example: convlens merge --out runs/m runs/m.part0 runs/m.part1 runs/m.part2",
    )
    p.add_argument("shards", nargs="+", type=Path, metavar="SHARD_RUN", help="the --out folders of the shards")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import open_dataset_from_args, resolve_device_arg
    from convlens.commands._model import load_model_from_args
    from convlens.topk.outputs import write_merged_run
    from convlens.topk.shards import merge_shards

    out = Path(args.out)
    merged = merge_shards(out, args.shards)
    device = resolve_device_arg(args)
    margs = argparse.Namespace(**{**merged.settings, "out": out, "device": args.device, "workers": 0})
    loaded = load_model_from_args(margs, device)
    ds = open_dataset_from_args(margs, loaded)
    print(write_merged_run(out, loaded, ds, merged))
    return 0
