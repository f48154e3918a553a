"""``convlens occlude``: occlusion sensitivity of one image (Fig. 7).

Writes into ``--out``: ``occlusion.png`` (the five panels: (a) the image with one grey square,
(b) activity of the strongest layer-5 map over occluder positions, (c) the deconvnet projection
of that map, (d) the correct-class probability, (e) the most probable label with a legend),
``result.json`` (kind ``occlusion``; the grids in ``data``) and ``occlusion.md`` (the labels table).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from convlens.commands._common import add_device_arg, add_model_args, add_out_arg, positive_int


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
    from convlens.commands._common import (
        load_image_arg,
        load_model_from_args,
        resolve_device_arg,
        run_params,
    )
    from convlens.io.artifacts import markdown_table, save_figure, write_result, write_text
    from convlens.nets.layers import feature_map_layer
    from convlens.occlusion.figures import (
        class_name,
        drawn_range,
        label_names,
        label_table,
        occlusion_projection,
        render_occlusion,
    )
    from convlens.occlusion.maps import occlusion_map

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    image = load_image_arg(loaded, args.image, "--image").to(device)
    layer = feature_map_layer(loaded, args.layer, "--layer")
    if args.label is not None and not 0 <= args.label < max(len(loaded.class_names), 1):
        raise ValueError(f"--label {args.label}: expected a class index in 0..{len(loaded.class_names) - 1}")
    t0 = time.perf_counter()
    occ = occlusion_map(loaded.model, image, window=args.window, stride=args.stride, fill=args.fill,
                        target=args.label, layer=layer, channel=args.channel, batch_size=args.batch_size,
                        incremental=not args.no_incremental, approximate=_approximation(args))
    seconds = time.perf_counter() - t0
    from convlens.deconv.rules import resolve_rule

    rule, rule_reason = resolve_rule(loaded.model, occ.layer, args.rule)
    proj01, box = occlusion_projection(loaded.model, image, occ, rule)
    names = loaded.class_names
    args.out.mkdir(parents=True, exist_ok=True)
    fig = render_occlusion(loaded.preprocessing.denormalize(image.cpu()), occ, proj01, box, names, rule=rule,
                           title=f"{Path(args.image).name}: correct class {class_name(occ.target, names)} "
                                 f"(clean p = {float(occ.clean_probs[occ.target]):.3f})")
    save_figure(fig, args.out / "occlusion.png", dpi=80)
    table = label_table(occ, names)
    write_text(args.out / "occlusion.md", f"### {table['title']}\n\n" + markdown_table(table["columns"], table["rows"]))
    data = occ.to_dict()
    data.update(class_names={str(k): v for k, v in label_names(occ.top_label, names).items()}, seconds=seconds,
                image=str(args.image), rule=rule, rule_reason=rule_reason)
    lo, hi = drawn_range(occ.prob_heatmap)
    summary = (f"{occ.window}px grey square, stride {occ.stride}, {occ.target_prob.numel()} positions: "
               f"p({class_name(occ.target, names)}) "
               f"{float(occ.target_prob.min()):.3f}..{float(occ.target_prob.max()):.3f} "
               f"(clean {float(occ.clean_probs[occ.target]):.3f}) per occluder position; panel (d) draws, per pixel, "
               f"the mean over the occluders covering it: {lo:.3f}..{hi:.3f} (its colour bar); "
               f"{occ.layer} map {occ.channel}; {seconds:.1f} s")
    write_result(args.out, "occlusion", title="Occlusion sensitivity (Fig. 7)", summary=summary,
                 params=run_params(args, loaded),
                 figures=[{"path": "occlusion.png", "caption": summary, "group": Path(args.image).stem}],
                 tables=[table], data=data)
    print(summary)
    if occ.quality:
        print("approximate mode: " + ", ".join(f"{k} {v:.4g}" for k, v in occ.quality.items()))
    print(f"panel (c) rule: {rule} ({rule_reason})")
    print(markdown_table(table["columns"], table["rows"]))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _approximation(args: argparse.Namespace) -> Any:
    if args.quality and not args.approximate:
        raise ValueError("--quality compares the approximate map with the exact one; add --approximate")
    if not args.approximate:
        return False
    from convlens.occlusion.maps import Approximation

    return Approximation(quality=args.quality)
