"""``convlens occlude``: occlusion sensitivity of one image (Fig. 7).

Writes into ``--out``: ``occlusion.png`` (the five panels: (a) the image with one grey square,
(b) activity of the strongest layer-5 map over occluder positions, (c) the deconvnet projection
of that map, (d) the correct-class probability, (e) the most probable label with a legend),
``result.json`` (kind ``occlusion``; the grids in ``data``) and ``occlusion.md`` (the labels table),
all written by :func:`convlens.occlusion.outputs.write_occlusion`.
"""
from __future__ import annotations

import argparse
from typing import Any

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "occlude",
        help="occlusion sensitivity maps of one image (Fig. 7)",
        description="Slide a grey square (the training mean) over an image and map, per occluder position, "
        "the total activity of the strongest map of a deep layer, the correct-class probability and the most "
        "probable label; also the projection of that map.",
        epilog="examples: convlens occlude --checkpoint runs/zf/checkpoints/last.pt --image dog.jpg --window 50 "
        "--stride 8 --out runs/zf/occlusion;  convlens occlude --arch torchvision:resnet18 --weights r18.pt "
        "--image dog.jpg --layer layer4 --out out/occlusion",
    )
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--label", type=int, default=None, help="correct class index (default: the predicted class)")
    p.add_argument("--window", type=positive_int, default=50, help="occluder side in pixels (default 50)")
    p.add_argument("--stride", type=positive_int, default=8, help="occluder step in pixels (default 8)")
    p.add_argument("--fill", type=float, default=0.0, help="occluder value in normalized space (0 = the mean)")
    p.add_argument("--layer", default=None,
                   help="feature-map layer (default: conv5 of a convlens model, else the deepest default layer; "
                        "see 'convlens summary')")
    p.add_argument("--channel", type=int, default=None, help="map of --layer (default: strongest in the image)")
    p.add_argument("--approximate", action="store_true",
                   help="approximate mode (Krypton's adaptive drill-down: every 3rd position per axis first, "
                   "then the closest 10%% of the others to the largest changes, the rest interpolated; about a "
                   "quarter of the work); off by default")
    p.add_argument("--quality", action="store_true",
                   help="with --approximate: also compute the exact map and report SSIM and the largest "
                   "probability difference against it (costs an exact run)")
    p.add_argument("--rule", choices=("auto", "deconvnet", "guided", "gradient"), default="auto",
                   help="projection rule of panel (c) (default auto: the paper's deconvnet where max-pool "
                   "switches make it follow the image, guided backprop elsewhere)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="occluders per batch (default: chosen per model)")
    p.add_argument("--no-incremental", action="store_true", help="plain batched forwards (for comparison)")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import resolve_device_arg
    from convlens.commands._model import load_image_arg, load_model_from_args, run_params
    from convlens.nets.layers import feature_map_layer
    from convlens.occlusion.outputs import OcclusionSettings, write_occlusion

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    image = load_image_arg(loaded, args.image, "--image").to(device)
    settings = OcclusionSettings(feature_map_layer(loaded, args.layer, "--layer"), args.label, args.window,
                                 args.stride, args.fill, args.channel, args.rule, _approximation(args),
                                 args.batch_size, not args.no_incremental)
    for line in write_occlusion(loaded, image, args.out, settings, image_path=args.image,
                                params=run_params(args, loaded)):
        print(line)
    return 0


def _approximation(args: argparse.Namespace) -> Any:
    if args.quality and not args.approximate:
        raise ValueError("--quality compares the approximate map with the exact one; add --approximate")
    if not args.approximate:
        return False
    from convlens.occlusion.maps import Approximation

    return Approximation(quality=args.quality)
