"""The model flag group every command shares: ``--checkpoint C`` or ``--arch SPEC`` (``torchvision:NAME``,
``timm:NAME``, ``file.py:factory``, ``module:factory``, a convlens architecture) with ``--weights``,
``--normalize``, ``--input-size``, ``--classes``; loading prints the preprocessing line
(:func:`say_preprocessing`), and :func:`run_params` records it in ``result.json``.

Nothing here imports torch at module level: building the CLI (``convlens --help``) stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convlens.commands._numbers import positive_int

if TYPE_CHECKING:
    import torch

    from convlens.nets.loading import Loaded

__all__ = ["SPEC_FORMS", "add_model_args", "load_image_arg", "load_model_from_args", "model_spec",
           "preprocessing_params", "run_params", "say_preprocessing"]

SPEC_FORMS = ("torchvision:NAME, timm:NAME, path/to/file.py:factory, package.module:factory "
              "or a convlens architecture (zfnet, zfnet-small, ...)")


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
