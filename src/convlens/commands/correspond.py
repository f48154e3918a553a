"""``convlens correspond``: correspondence analysis of object parts (Table 1, Fig. 8).

Reads images and a landmarks CSV (columns ``file, eye_imgleft_x/y, eye_imgright_x/y, nose_x/y``
in original pixels, ``file`` relative to ``--images``), maps the points through the model's
resize/crop, masks each part with a ``--mask``-pixel grey square and scores the consistency of
the feature change (see :mod:`convlens.correspondence.analysis`). Writes ``result.json`` (kind
``correspond``), ``correspondence.md`` (the Table 1 analog) and ``masked_images.png`` (Fig. 8).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convlens.commands._common import add_device_arg, add_model_args, add_out_arg, positive_int


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

    from convlens.commands._common import (
        load_image_arg,
        load_model_from_args,
        parse_layers,
        resolve_device_arg,
        run_params,
    )
    from convlens.correspondence.analysis import (
        correspondence_score,
        face_box,
        random_masks,
        square_masks,
        transform_points,
    )
    from convlens.correspondence.landmarks import PARTS, masked_images_grid, read_landmarks
    from convlens.images.data import load_image
    from convlens.io.artifacts import markdown_table, save_png, write_result, write_text
    from convlens.nets.layers import default_layers

    device = resolve_device_arg(args)
    loaded = load_model_from_args(args, device)
    pre = loaded.preprocessing
    if args.layers is None and hasattr(loaded.model, "layer_names"):
        layers = parse_layers("conv5,fc7", loaded)
    else:
        layers = parse_layers(args.layers, loaded) if args.layers is not None else default_layers(loaded, 2)
    paths, points = read_landmarks(args.landmarks, args.images)
    images = torch.stack([load_image_arg(loaded, p, "--landmarks image") for p in paths]).to(device)
    sizes = torch.tensor([load_image(p).size[::-1] for p in paths])  # (N, 2) (h, w)
    H, W = images.shape[-2:]
    pts = transform_points(points, sizes, pre.resize, pre.crop)
    names = list(PARTS.values())
    masks = square_masks(pts, args.mask, H, W, names=names).to(device)
    rand = random_masks(face_box(pts, args.margin), args.mask, H, W, args.repeats, seed=args.seed).to(device)
    corr = correspondence_score(loaded.model, images, masks, layers, part_names=names, random=rand)
    cols, rows = corr.table()
    table = {"title": f"Mean feature sign change over {len(paths) * (len(paths) - 1) // 2} image pairs "
                      f"(Table 1 analog; {args.mask}px masks, random: {args.repeats} draws)",
             "columns": cols, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "correspondence.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    save_png(masked_images_grid(pre, images.cpu(), masks.cpu(), rand.cpu()), args.out / "masked_images.png")
    summary = "; ".join(f"{r[0]}: "
                        + ", ".join(f"{layer} {c.split(' ±')[0]}" for layer, c in zip(layers, r[1:], strict=False))
                        for r in rows)
    data = corr.to_dict()
    data.update(images=[str(p) for p in paths], points=pts.tolist(), mask=args.mask)
    write_result(args.out, "correspond", title="Correspondence analysis (Table 1, Fig. 8)", summary=summary,
                 params=run_params(args, loaded) | {"layers": layers},
                 figures=[{"path": "masked_images.png", "caption": "Fig. 8: original, then the right eye, left eye "
                           "and nose masked, then random masks on the face (one row per image)", "group": "masks"}],
                 tables=[table], data=data)
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0
