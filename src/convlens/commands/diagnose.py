"""``convlens diagnose``: Fig. 6 as numbers, for one checkpoint or two side by side.

Writes into ``--out``: ``result.json`` (kind ``diagnose``), ``diagnose.md`` (the comparison
table), and per model ``<tag>_conv1_filters.png`` (each filter contrast-normalized),
``<tag>_conv1_filters_shared.png`` (one scale for all filters: a dominating filter stands out,
Fig. 6a) and ``<tag>_layer2_projections.png`` (deconvnet projections of layer-2 channels, Fig. 6d/e),
all written by :func:`convlens.diagnose.outputs.write_diagnosis`.
"""
from __future__ import annotations

import argparse
from typing import Any

from convlens.commands._common import add_dataset_args, add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="layer-1/2 diagnostics of Fig. 6: dominating, dead and near-zero filters, frequency bands, aliasing",
        description="Measure what Fig. 6 shows: per-filter RMS (one filter dominating), dead filters, the "
        "low/mid/high frequency energy of layer-1 filters, and grid (aliasing) energy of layer-2 deconvnet "
        "projections at the layer-1 stride's frequencies. Layers 1 and 2 are the first two convolutions the "
        "model runs, on any CNN. With --compare, a side-by-side table.",
        epilog="example: convlens diagnose --checkpoint runs/zf/checkpoints/last.pt --compare "
        "runs/alex/checkpoints/last.pt --dataset cifar10 --data-dir ../shared/data/cifar10 --out runs/zf/diagnose",
    )
    add_model_args(p)
    p.add_argument("--compare", default=None, metavar="SPEC",
                   help="a second model to put side by side: a convlens checkpoint or any model spec")
    p.add_argument("--compare-weights", default=None, metavar="FILE", help="state_dict for --compare")
    add_dataset_args(p, split="test", limit=64, batch_size=64)
    p.add_argument("--channels", type=positive_int, default=16, help="layer-2 channels projected (default 16)")
    p.add_argument("--threshold", type=float, default=3.0, help="dominance flag: max RMS / median RMS (default 3)")
    p.add_argument("--dead-eps", type=float, default=1e-3, help="dead: fraction of positive activations below this")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import resolve_device_arg
    from convlens.commands._model import load_model_from_args, model_spec, say_preprocessing
    from convlens.diagnose.outputs import DiagnoseSettings, write_diagnosis
    from convlens.nets.loading import load_model

    device = resolve_device_arg(args)
    if args.compare_weights is not None and args.compare is None:
        raise ValueError("--compare-weights goes with --compare SPEC (the model they fit)")
    models = [load_model_from_args(args, device)]
    specs = [str(model_spec(args))]
    if args.compare is not None:
        models.append(load_model(args.compare, weights=args.compare_weights, normalize=args.normalize,
                                 input_size=args.input_size, map_location=device))
        specs.append(args.compare)
        say_preprocessing(args, models[-1])
    # each model sees the sample through its own preprocessing
    runs = [(loaded, _sample(args, loaded).to(device), spec) for loaded, spec in zip(models, specs, strict=True)]
    settings = DiagnoseSettings(args.channels, args.threshold, args.dead_eps)
    params = {"model": specs[0], "compare": args.compare, "dataset": args.dataset, "split": args.split,
              "limit": args.limit}
    for line in write_diagnosis(args.out, runs, settings, params):
        print(line)
    return 0


def _sample(args: argparse.Namespace, loaded: Any) -> Any:
    """The --limit images of the dataset (spread evenly over the split) as one (N, 3, H, W) batch."""
    from convlens.commands._common import open_dataset_from_args
    from convlens.images.data import collate_skip

    ds = open_dataset_from_args(args, loaded)
    batch = collate_skip([ds[i] for i in range(len(ds))])
    if len(batch[0]) == 0:
        raise ValueError(f"--dataset {args.dataset}: no readable images in the sample")
    return batch[0]
