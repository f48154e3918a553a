"""Flag groups every command shares, written once: the model, the dataset, the device, the output folder.

Nothing here imports torch at module level: building the CLI (``convlens --help``) stays fast.

- :func:`add_model_args` / :func:`load_model_from_args`: ``--checkpoint C`` or ``--arch SPEC``
  (``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``, ``module:factory``, a convlens
  architecture) with ``--weights``, ``--normalize``, ``--input-size``, ``--classes``; loading prints the
  preprocessing line (:func:`say_preprocessing`), and :func:`run_params` records it in ``result.json``.
- :func:`add_dataset_args` / :func:`open_dataset_from_args`: ``--dataset``, ``--data-dir``,
  ``--split``, ``--limit`` (always: N images spread evenly over the split, so every class of a
  class-sorted folder is kept; no randomness), ``--batch-size``, ``--workers``.
- :func:`add_device_arg`: ``--device`` (default ``auto``), resolved by :func:`convlens.nets.device.resolve_device`.
- :func:`add_out_arg`: ``--out`` (a folder; an existing *file* there is refused while parsing).
- :func:`parse_layers` / :func:`default_layers`: ``--layers`` checked against the model, and
  defaults that fit the model (never ``conv5`` on a model without it).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from convlens.images.data import TransformedDataset
    from convlens.nets.loading import Loaded

__all__ = [
    "add_dataset_args",
    "add_device_arg",
    "add_model_args",
    "add_out_arg",
    "count_int",
    "finite_float",
    "harden_number_flags",
    "load_model_from_args",
    "model_spec",
    "open_dataset_from_args",
    "out_dir",
    "parse_layers",
    "positive_float",
    "positive_int",
    "preprocessing_params",
    "resolve_device_arg",
    "say_preprocessing",
    "seed_int",
]

SPEC_FORMS = ("torchvision:NAME, timm:NAME, path/to/file.py:factory, package.module:factory "
              "or a convlens architecture (zfnet, zfnet-small, ...)")


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


SEED_MAX = 2**32 - 1
"""Largest ``--seed`` (numpy's generators take 32-bit seeds)."""
INT_MAX = 2**63 - 1


def finite_float(text: str) -> float:
    """argparse ``type`` of every float flag: a finite number (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0 (a learning rate, a radius)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def count_int(text: str) -> int:
    """argparse ``type`` of every integer flag: an integer >= 0 (epochs, indices, sizes, ports)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number up to {INT_MAX}, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse ``type`` of ``--seed``: an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEED_MAX}, got {text!r}")
    return value


def harden_number_flags(parser: argparse.ArgumentParser) -> None:
    """Give every plain ``type=float`` / ``type=int`` flag of ``parser`` and its subcommands the checked
    types above (finite floats; integers >= 0; 32-bit seeds), so no command takes ``--lr inf``,
    ``--fill nan``, ``--warmup-epochs -3`` or a seed no generator accepts."""
    for action in parser._actions:
        if action.type is float:
            action.type = finite_float
        elif action.type is int:
            action.type = seed_int if action.dest == "seed" else count_int
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                harden_number_flags(sub)


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


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True, multiple: bool = False) -> None:
    """``--checkpoint`` | ``--arch`` (+ ``--weights``, ``--normalize``, ``--input-size``, ``--classes``).

    ``required=False``: the command has its own default model (e.g. a run's last checkpoint).
    ``multiple=True``: ``--checkpoint`` takes several files (ensembles).
    """
    from convlens.nets.meta import NORMALIZE_HELP

    g = p.add_argument_group("model", "a convlens checkpoint (--checkpoint), or any model spec (--arch) with "
                                      "optional --weights; see 'Model specs' in the README")
    g.add_argument("--checkpoint", nargs="+" if multiple else None, default=None, metavar="FILE",
                   help="convlens checkpoint file" + ("(s)" if multiple else "") + " (from convlens train)")
    g.add_argument("--arch", default=None, metavar="SPEC", help=f"instead of --checkpoint: {SPEC_FORMS}")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="state_dict for --arch: a .pt (torch.save(model.state_dict())) or .safetensors file")
    g.add_argument("--normalize", default=None, metavar="NORM",
                   help=f"input normalization: {NORMALIZE_HELP} (default: meta.json beside the weights, else the "
                        "checkpoint's / the model's, else imagenet)")
    g.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                   help="network input side in pixels (default: meta.json, else the model's, else 224)")
    g.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line in output order (default: meta.json / classes.txt beside the "
                        "weights, else the checkpoint's, else indices)")
    p.set_defaults(_model_required=required)


def model_spec(args: argparse.Namespace) -> str | None:
    """The one model spec the flags name (None when optional and absent).

    Raises:
        ValueError: both or (when required) neither of --checkpoint and --arch; --weights with --checkpoint.
    """
    ckpt, arch = getattr(args, "checkpoint", None), getattr(args, "arch", None)
    if isinstance(ckpt, list):
        ckpt = ckpt[0] if len(ckpt) == 1 else ckpt
    if ckpt is not None and arch is not None:
        raise ValueError("--checkpoint and --arch both given; expected one of them: --checkpoint FILE (a convlens "
                         "checkpoint) or --arch SPEC [--weights FILE]")
    if ckpt is None and arch is None:
        if getattr(args, "_model_required", True):
            raise ValueError(f"no model given; expected --checkpoint FILE (a convlens checkpoint) or --arch SPEC "
                             f"({SPEC_FORMS}) [--weights FILE]")
        return None
    if arch is None and getattr(args, "weights", None) is not None:
        raise ValueError("--weights goes with --arch SPEC (the architecture they fit), not with --checkpoint; "
                         "e.g. --arch torchvision:resnet18 --weights FILE")
    return str(arch if arch is not None else ckpt)


def load_model_from_args(args: argparse.Namespace, device: torch.device | str = "cpu",
                         spec: str | None = None) -> Loaded:
    """:func:`convlens.nets.loading.load_model` with the model flags (``spec`` overrides the spec they name)."""
    from convlens.nets.loading import load_model

    spec = spec if spec is not None else model_spec(args)
    if spec is None:
        raise ValueError("no model given; expected --checkpoint FILE or --arch SPEC [--weights FILE]")
    loaded = load_model(spec, weights=getattr(args, "weights", None) if getattr(args, "arch", None) else None,
                        normalize=getattr(args, "normalize", None), input_size=getattr(args, "input_size", None),
                        classes=getattr(args, "classes", None), map_location=device)
    say_preprocessing(args, loaded)
    return loaded


def say_preprocessing(args: argparse.Namespace, loaded: Loaded) -> None:
    """Print the preprocessing ``loaded`` applies and where each part came from, once per command (a
    second model with the same preprocessing prints nothing; one with another prints its own line)."""
    if loaded.provenance is None:
        return
    line = loaded.provenance.line()
    seen: set[str] = getattr(args, "_preprocessing_said", set())
    if line not in seen:
        print(line if len(seen) == 0 else f"{line} ({loaded.arch})")
        args._preprocessing_said = seen | {line}


def load_image_arg(loaded: Loaded, path: str | Path, flag: str = "--image") -> torch.Tensor:
    """An image file through the model's preprocessing: (3, S, S).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; expected an image file (JPEG, PNG, ...)")
    try:
        return loaded.preprocessing.load(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{flag} {path}: cannot read it as an image ({type(exc).__name__}: {exc}); expected a "
                         "JPEG, PNG or other image file") from None


def run_params(args: argparse.Namespace, loaded: Loaded | None = None) -> dict[str, Any]:
    """The command's flags for ``result.json`` ``params`` (paths as text; the model's resolved name and
    :func:`preprocessing_params` added)."""
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k != "func" and not k.startswith("_")}
    if loaded is not None:
        out["model"] = loaded.arch
        out["input_size"] = loaded.input_size
        out |= preprocessing_params(loaded)
    return out


def preprocessing_params(loaded: Loaded) -> dict[str, Any]:
    """``{"preprocessing": {...}}``: what the model's inputs went through and where each part came from
    (:meth:`convlens.nets.meta.PreprocessingProvenance.to_dict`), for ``result.json`` ``params``."""
    return {"preprocessing": loaded.provenance.to_dict() if loaded.provenance is not None else None}


# ----------------------------------------------------------------------------- dataset


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
