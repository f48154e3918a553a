"""``convlens mine``: top-9 activations of every feature map over a dataset, projected (Fig. 2).

Two passes, each with a progress bar: mining (one streaming pass over the dataset, resumable:
``OUT/mine.state``) and projecting (every map's top-k by default, ``--project all``; ``grid``: the figures' maps only;
``none``: nothing, the explorer projects a map when its page is first opened; per map chunk,
the top-k images are re-read by dataset index; resumable: finished maps are skipped). The rule is
``--rule auto`` by default: the paper's deconvnet where max-pool switches make it follow the image,
guided backprop elsewhere (printed per layer, with the reason, and stored in ``result.json``).

Writes ``OUT/<layer>_grid.png`` (+ ``<layer>_grid_2.png`` ... when ``--maps`` exceeds
``--maps-per-sheet``: labelled Fig. 2 sheets, per map a 3x3 block of projections beside a 3x3 block
of image patches), per-unit PNGs ``OUT/units/<layer>/<map>_<rank>_{proj,patch}.png`` and per-map
``OUT/units/<layer>/<map>.json`` (for the explorer), ``OUT/class_means.npz`` (per layer a float32
(maps, classes) array of the mean per-image ranking statistic per class, plus ``__counts__``),
``OUT/topk.pt`` (the raw top-k tensors) and ``OUT/result.json``, all written by
:func:`convlens.topk.outputs.mine_run`. Under ``torchrun --nproc-per-node P -m convlens mine ...``
the dataset is sharded over P processes and only rank 0 writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convlens.commands._common import add_dataset_args, add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def maps_arg(text: str) -> int | str:
    """argparse ``type`` of ``--maps``: ``all`` or a positive integer."""
    return "all" if text == "all" else positive_int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mine",
        help="top-k activations of every feature map over a dataset, projected to pixels (Fig. 2)",
        description="One streaming pass over a dataset keeps each feature map's k strongest activations "
                    "(one per image); they are projected back to pixels (the deconvnet on the paper's nets, "
                    "guided backprop on nets without max pooling: --rule) and shown beside their image "
                    "patches, as in Fig. 2 of Zeiler & Fergus.",
    )
    add_model_args(p)
    add_dataset_args(p, split="test", batch_size=64, workers=2)
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default: conv1..conv5 of a convlens model, else a few evenly "
                        "spaced blocks; see 'convlens summary')")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random subset of maps shown and of the order among tied activations")
    p.add_argument("--k", type=positive_int, default=9, help="activations kept per map (default 9)")
    p.add_argument("--per-image", type=positive_int, default=1, help="entries one image may give one map (default 1)")
    p.add_argument("--rule", choices=("auto", "deconvnet", "guided", "gradient"), default="auto",
                   help="projection rule (default auto: deconvnet where max-pool switches make it follow the "
                        "image, guided backprop elsewhere)")
    p.add_argument("--maps", type=maps_arg, default=16,
                   help="maps per layer shown in the figures: N (random, seeded) or all (default 16)")
    p.add_argument("--maps-per-sheet", type=positive_int, default=16,
                   help="maps per figure sheet (4 per row; default 16, about 1700 px wide)")
    p.add_argument("--project", choices=["all", "grid", "none"], default="all",
                   help="project every map's top-k (per-unit PNGs for the explorer; default), only the figures' "
                        "maps, or none (fastest: no figures; the explorer projects a map when its page is opened)")
    p.add_argument("--save-every", type=positive_int, default=50, help="save resumable state every N batches")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="mine only the I-th of N contiguous parts of the dataset (0 <= I < N; e.g. one job of a "
                        "SLURM array each); merge the parts with 'convlens merge --out RUN SHARD...'")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import open_dataset_from_args, parse_layers, resolve_device_arg
    from convlens.commands._model import load_model_from_args
    from convlens.topk.outputs import mine_run
    from convlens.topk.shards import parse_shard
    from convlens.training import distributed

    shard = parse_shard(args.shard) if args.shard else None
    device = resolve_device_arg(args)
    info = distributed.setup(device)
    try:
        loaded = load_model_from_args(args, device)
        layers = parse_layers(args.layers, loaded)
        ds = open_dataset_from_args(args, loaded)
        said = mine_run(loaded, ds, layers, Path(args.out), vars(args), device=device, shard=shard, main=info.main)
        if said:
            print(said)
        return 0
    finally:
        distributed.teardown(info)
