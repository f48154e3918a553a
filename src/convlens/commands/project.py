"""``convlens project``: projections of one feature map's strongest units in an image
(Sec. 2.1, Fig. 1; the panels of Fig. 2 for a single image).

``--rule auto`` (default) uses the paper's deconvnet where max-pool switches make it follow the
image and guided backprop elsewhere (:func:`convlens.deconv.rules.resolve_rule`); the rule and the reason
are printed and stored in ``result.json`` (``data.rule``, ``data.rule_reason``).

Every projection is shown the one way of :mod:`convlens.deconv.view`: cropped to the box holding 80%
of its mass (plus a margin, inside the receptive field) beside the image patch of the same box,
contrast from the 99th percentile of |value|, resampled smoothly. Writes into ``--out``:
``image.png`` (the input), ``view.png`` (the strongest unit's projection beside its patch),
``projection.png`` (that projection on the whole image, same contrast), ``projection_rf.png`` and
``patch.png`` (projection and image in the unit's whole receptive field, full size), ``grid.png``
(all ``--top`` units: projections on the left, patches on the right, strongest first), with ``--sanity`` also
``sanity.png`` (rows: trained, then each cascading randomization step, labelled with their
scores, which are also printed) and ``result.json``
(kind ``project``: units, activation values, ``boxes``/``rf_boxes``, ``views`` with each ``display_box``
and contrast scale, sanity scores); all written by :func:`convlens.deconv.outputs.write_projection`.
"""
from __future__ import annotations

import argparse

from convlens.commands._common import add_device_arg, add_out_arg
from convlens.commands._model import add_model_args
from convlens.commands._numbers import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "project",
        help="project a feature map's strongest activations back to pixels (deconvnet, Sec. 2.1)",
        description="Project the --top strongest activations of one feature map in an image back to input "
        "pixels with the deconvnet (or guided backprop / the plain gradient), and save the projections, their "
        "receptive-field crops and the matching image patches.",
        epilog="examples: convlens project --checkpoint runs/zf/checkpoints/last.pt --image dog.jpg --layer conv5 "
        "--channel 42 --out runs/zf/project;  convlens project --arch torchvision:mobilenet_v2 --weights "
        "mobilenet_v2_imagenet.pt --image dog.jpg --layer features.14.conv.0.2 --out out/project",
    )
    add_model_args(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--layer", default=None,
                   help="layer: conv1..conv5 or a stage (convlens models); any module path such as features.14 or "
                   "layer2.1 (see 'convlens summary'). Default: conv5, else the deepest default layer")
    p.add_argument("--channel", type=int, default=None, help="feature map (default: the strongest in the image)")
    p.add_argument("--top", type=positive_int, default=9, help="number of strongest positions to project (default 9)")
    p.add_argument("--rule", choices=("auto", "deconvnet", "guided", "gradient"), default="auto",
                   help="projection rule (default auto: the paper's deconvnet where max-pool switches make it "
                   "follow the image, guided backprop elsewhere; the choice and its reason are printed)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the cascading weight-randomization sanity check (Adebayo et al. 2018)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sanity check's random weights")
    add_device_arg(p)
    add_out_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlens.commands._common import resolve_device_arg
    from convlens.commands._model import load_image_arg, load_model_from_args
    from convlens.deconv.outputs import ProjectSettings, write_projection
    from convlens.nets.layers import feature_map_layer

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    x = load_image_arg(loaded, args.image).to(device)[None]  # (1, 3, H, W)
    settings = ProjectSettings(feature_map_layer(loaded, args.layer), args.channel, args.top, args.rule,
                               args.sanity, args.seed)
    model = {"checkpoint": args.checkpoint, "arch": args.arch or loaded.arch, "weights": args.weights}
    for line in write_projection(loaded, x, args.out, settings, image_path=args.image, params=model):
        print(line)
    return 0
