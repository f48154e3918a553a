"""Flag groups every command shares, written once: the dataset, the device, the output folder.

Nothing here imports torch at module level: building the CLI (``convlens --help``) stays fast.

- the model flags: :mod:`convlens.commands._model`; the number flags: :mod:`convlens.commands._numbers`.
- :func:`add_dataset_args` / :func:`open_dataset_from_args`: ``--dataset``, ``--data-dir``,
  ``--split``, ``--limit`` (always: N images spread evenly over the split, so every class of a
  class-sorted folder is kept; no randomness), ``--batch-size``, ``--workers``.
- :func:`add_device_arg`: ``--device`` (default ``auto``), resolved by :func:`convlens.nets.device.resolve_device`.
- :func:`add_out_arg`: ``--out`` (a folder; an existing *file* there is refused while parsing).
- :func:`parse_layers`: ``--layers`` checked against the model, and defaults that fit the model
  (:func:`convlens.nets.layers.default_layers`: never ``conv5`` on a model without it).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from convlens.commands._numbers import positive_int

if TYPE_CHECKING:
    import torch

    from convlens.images.data import TransformedDataset
    from convlens.nets.loading import Loaded

__all__ = ["add_dataset_args", "add_device_arg", "add_out_arg", "open_dataset_from_args", "out_dir", "parse_layers",
           "resolve_device_arg"]


def out_dir(text: str) -> Path:
    """argparse ``type`` of ``--out``: a folder path (it may exist; an existing file is refused)."""
    path = Path(text)
    long = [part for part in path.parts if len(part.encode()) > 255]
    if long:
        raise argparse.ArgumentTypeError(f"a folder name in it is {len(long[0].encode())} bytes long; file systems "
                                         "allow at most 255: give a shorter path")
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be used: {exc.strerror or exc}") from None
    if exists and not is_dir:
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file; expected a folder (new or existing): "
                                         "give another path")
    return path


# ----------------------------------------------------------------------------- model


def add_dataset_args(p: argparse.ArgumentParser, *, required: bool = True, split: str = "test",
                     limit: int | None = None, batch_size: int = 64, workers: int = 0) -> None:
    """``--dataset``, ``--data-dir``, ``--split``, ``--limit``, ``--batch-size``, ``--workers``."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=required, default=None,
                   help="fashion-mnist, cifar10, or an ImageFolder directory (one sub-folder per class)")
    g.add_argument("--data-dir", default=None, help="where a named dataset lives (cifar10: DIR/train, DIR/test)")
    g.add_argument("--split", default=split, choices=("train", "test", "val"), help=f"split to read (default {split})")
    g.add_argument("--limit", type=positive_int, default=limit, metavar="N",
                   help="use N images spread evenly over the split (every class of a sorted folder) "
                        f"(default {'all' if limit is None else limit})")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"default {batch_size}")
    g.add_argument("--workers", type=int, default=workers, help=f"DataLoader worker processes (default {workers})")


def open_dataset_from_args(args: argparse.Namespace, loaded: Loaded, *, mode: str = "eval",
                           split: str | None = None, check_classes: bool = False) -> TransformedDataset:
    """The dataset the flags name, through the model's preprocessing.

    ``check_classes``: the labels are compared with the model's outputs (evaluation), so the dataset may
    not have more classes than the model has outputs.

    Raises:
        ValueError: an empty dataset, or (``check_classes``) more classes than the model has outputs.
    """
    from convlens.images.data import open_dataset

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    ds = open_dataset(args.dataset, split or args.split, loaded.preprocessing, data_dir=args.data_dir, mode=mode,
                      limit=args.limit)
    if len(ds) == 0:
        raise ValueError(f"--dataset {args.dataset}: no images in its {split or args.split} split")
    outputs = len(loaded.class_names)
    if check_classes and ds.classes and outputs and len(ds.classes) > outputs:
        raise ValueError(f"--dataset {args.dataset} has {len(ds.classes)} classes but the model ({loaded.arch}) has "
                         f"{outputs} outputs; give a dataset with at most {outputs} classes, or a model trained on it")
    return ds


# ----------------------------------------------------------------------------- device and output


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``: CUDA when available, else CPU)."""
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA when available, else CPU), cpu, cuda, cuda:N or mps")


def resolve_device_arg(args: argparse.Namespace) -> torch.device:
    """``--device`` as a ``torch.device`` (ValueError naming the fix when it is not available)."""
    from convlens.nets.device import resolve_device

    return resolve_device(getattr(args, "device", "auto"))


def add_out_arg(p: argparse.ArgumentParser, *, required: bool = True, help: str = "output folder") -> None:
    """``--out DIR`` (an existing file is refused while parsing)."""
    p.add_argument("--out", type=out_dir, required=required, default=None, metavar="DIR", help=help)


# ----------------------------------------------------------------------------- layers


def parse_layers(text: str | None, loaded: Loaded, *, flag: str = "--layers", default: int | None = None) -> list[str]:
    """Comma-separated layer names checked against the model; ``None`` -> :func:`convlens.nets.layers.default_layers`.

    Raises:
        ValueError: an empty list or an unknown name (with the closest names).
    """
    from convlens.nets.layers import check_layers, default_layers

    if text is None:
        return default_layers(loaded, default)
    layers = [s.strip() for s in text.split(",") if s.strip()]
    if not layers:
        raise ValueError(f"{flag} is empty; expected comma-separated layer names (see 'convlens summary')")
    return check_layers(loaded, layers, flag=flag)
