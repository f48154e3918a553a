"""``convlens correspond``: correspondence analysis of object parts (Table 1, Fig. 8).

Reads images and a landmarks CSV (columns ``file, eye_imgleft_x/y, eye_imgright_x/y, nose_x/y``
in original pixels, ``file`` relative to ``--images``), maps the points through the model's
resize/crop, masks each part with a ``--mask``-pixel grey square and scores the consistency of
the feature change (see :mod:`convlens.correspondence.analysis`). Writes ``result.json`` (kind
``correspond``), ``correspondence.md`` (the Table 1 analog) and ``masked_images.png`` (Fig. 8), all
written by :func:`convlens.correspondence.outputs.write_correspondence`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correspond",
        help="correspondence of object parts across images (Table 1, Fig. 8)",
        description="Mask the same part (eyes, nose) in every image and measure how consistently the features "
        "change (mean feature sign change over image pairs), against random masks on the face.",
        epilog="example: convlens correspond --checkpoint C --images ../shared/data/dog-faces "
        "--landmarks ../shared/data/dog-faces/landmarks.csv --mask 30 --layers conv5,fc7 --out runs/zf/correspond",
    )
    add_model_args(p)
    p.add_argument("--images", type=Path, required=True, help="folder the CSV's file paths are relative to")
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks CSV")
    p.add_argument("--mask", type=positive_int, default=30, help="mask side in input pixels (default 30)")
    p.add_argument("--layers", default=None,
                   help="comma-separated feature layers (default conv5,fc7 of a convlens model, else the last two "
                        "default layers; see 'convlens summary')")
    p.add_argument("--repeats", type=positive_int, default=10, help="random-mask repetitions (default 10)")
    p.add_argument("--margin", type=float, default=0.75, help="face box = part bounding box grown by this x its side")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from convlens.commands._common import parse_layers, resolve_device_arg
    from convlens.commands._model import load_image_arg, load_model_from_args, run_params
    from convlens.correspondence.landmarks import read_landmarks
    from convlens.correspondence.outputs import CorrespondSettings, write_correspondence
    from convlens.nets.layers import default_layers

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    if args.layers is None and hasattr(loaded.model, "layer_names"):
        layers = parse_layers("conv5,fc7", loaded)
    else:
        layers = parse_layers(args.layers, loaded) if args.layers is not None else default_layers(loaded, 2)
    paths, points = read_landmarks(args.landmarks, args.images)
    images = torch.stack([load_image_arg(loaded, p, "--landmarks image") for p in paths]).to(device)
    settings = CorrespondSettings(tuple(layers), args.mask, args.margin, args.repeats, args.seed)
    for line in write_correspondence(loaded, images, args.out, settings, paths=paths, points=points,
                                     params=run_params(args, loaded)):
        print(line)
    return 0
