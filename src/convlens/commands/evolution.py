"""``convlens evolution``: how chosen feature maps change over training (Fig. 4).

Reads ``RUN/checkpoints/epoch_NNN.pt`` (all of them when there are at most 8, else the paper's
epochs 1, 2, 5, 10, 20, 30, 40, 64 that exist, or 8 spread over the run), mines the strongest
activation of each chosen map
over the training set at each checkpoint, projects it, and writes per layer
``OUT/<layer>_evolution.png`` (rows = maps, columns = epochs, with the mean correlation of
consecutive columns underneath) and ``OUT/result.json``, all written by
:func:`convlens.evolution.outputs.write_evolution`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convlens.commands._common import add_dataset_args, add_device_arg, add_out_arg
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evolution",
        help="strongest activation of chosen maps at each training checkpoint, projected (Fig. 4)",
        description="For each checkpoint of a training run, find each chosen map's strongest activation over "
                    "the training set and project it with the deconvnet: Fig. 4 of Zeiler & Fergus, with a "
                    "per-layer number for when the features stop changing.",
    )
    p.add_argument("--run", required=True, help="run directory with checkpoints/epoch_NNN.pt")
    add_dataset_args(p, split="train", batch_size=64, workers=2)
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (default conv1..conv5 of a convlens model; see 'convlens summary')")
    p.add_argument("--seed", type=int, default=0, help="seed of the random maps shown")
    p.add_argument("--maps", type=positive_int, default=8, help="random maps per layer (seeded)")
    p.add_argument("--epochs", default=None,
                   help="comma-separated epochs "
                   "(default: all if <= 8, else the paper's 1,2,5,10,20,30,40,64 that exist)")
    p.add_argument("--threshold", type=float, default=0.9, help="correlation that counts as 'stopped changing'")
    add_device_arg(p)
    add_out_arg(p, required=False, help="output folder (default RUN/evolution)")
    p.set_defaults(func=run)


def _epochs(args: argparse.Namespace, available: dict[int, Path]) -> list[int]:
    from convlens.evolution.analysis import pick_epochs

    if args.epochs is None:
        return pick_epochs(list(available))
    try:
        wanted = [int(e) for e in args.epochs.split(",") if e.strip()]
    except ValueError:
        raise ValueError(f"--epochs must be comma-separated integers, got {args.epochs!r}") from None
    missing = [e for e in wanted if e not in available]
    if missing or not wanted:
        raise ValueError(f"--epochs {args.epochs}: no checkpoint for {missing or 'any'}; "
                         f"available: {', '.join(map(str, available))}")
    return wanted


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from convlens.commands._common import open_dataset_from_args, parse_layers, resolve_device_arg
    from convlens.commands._model import preprocessing_params, say_preprocessing
    from convlens.evolution.analysis import find_checkpoints
    from convlens.evolution.outputs import random_maps, write_evolution
    from convlens.images.data import collate_skip
    from convlens.nets.loading import load_model

    checkpoints = find_checkpoints(args.run)
    epochs = _epochs(args, checkpoints)
    last = load_model(checkpoints[epochs[-1]], map_location=resolve_device_arg(args))
    say_preprocessing(args, last)  # every checkpoint of a run shares its preprocessing
    layers = parse_layers(args.layers, last)
    ds = open_dataset_from_args(args, last)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_skip)
    maps = random_maps(last, layers, args.maps, args.seed)
    params = {"run": str(args.run), "dataset": args.dataset, "split": args.split, "layers": list(maps),
              "maps": args.maps, "epochs": epochs, "limit": args.limit, "seed": args.seed,
              "threshold": args.threshold} | preprocessing_params(last)
    print(write_evolution(Path(args.out or Path(args.run) / "evolution"), {e: checkpoints[e] for e in epochs}, last,
                          loader, ds, maps, threshold=args.threshold, split=args.split, params=params))
    return 0
