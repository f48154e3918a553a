"""``convlens correspond``: correspondence analysis of object parts (Table 1, Fig. 8).

Reads images and a landmarks CSV (columns ``file, eye_imgleft_x/y, eye_imgright_x/y, nose_x/y``
in original pixels, ``file`` relative to ``--images``), maps the points through the model's
resize/crop, masks each part with a ``--mask``-pixel grey square and scores the consistency of
the feature change (see :mod:`convlens.correspondence`). Writes ``result.json`` (kind
``correspond``), ``correspondence.md`` (the Table 1 analog) and ``masked_images.png`` (Fig. 8).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import torch

# CSV column prefix -> row name. "imgleft" is the eye on the left of the picture = the dog's right eye.
PARTS = {"eye_imgleft": "right eye", "eye_imgright": "left eye", "nose": "nose"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correspond",
        help="correspondence of object parts across images (Table 1, Fig. 8)",
        description="Mask the same part (eyes, nose) in every image and measure how consistently the features "
        "change (mean feature sign change over image pairs), against random masks on the face.",
        epilog="example: convlens correspond --checkpoint C --images ../shared/data/dog-faces "
        "--landmarks ../shared/data/dog-faces/landmarks.csv --mask 30 --layers conv5,fc7 --out runs/zf/correspond",
    )
    p.add_argument("--checkpoint", default=None, help="a convlens checkpoint")
    p.add_argument("--arch", default=None, help="instead of --checkpoint: torchvision:NAME")
    p.add_argument("--weights", default=None, help="state_dict file for --arch")
    p.add_argument("--images", type=Path, required=True, help="folder the CSV's file paths are relative to")
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks CSV")
    p.add_argument("--mask", type=int, default=30, help="mask side in input pixels (default 30)")
    p.add_argument("--layers", default="conv5,fc7", help="comma-separated feature layers (default conv5,fc7)")
    p.add_argument("--repeats", type=int, default=10, help="random-mask repetitions (default 10)")
    p.add_argument("--margin", type=float, default=0.75, help="face box = part bounding box grown by this x its side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def read_landmarks(csv_path: Path, root: Path) -> tuple[list[Path], torch.Tensor]:
    """(image paths, points (N, 3, 2) (x, y) in original pixels, parts in :data:`PARTS` order)."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"--landmarks not found: {csv_path}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = ["file"] + [f"{p}_{c}" for p in PARTS for c in "xy"]
    if not rows or any(c not in rows[0] for c in need):
        raise ValueError(f"--landmarks {csv_path} must have columns {', '.join(need)}")
    paths, points = [], []
    for r in rows:
        path = root / r["file"]
        if not path.is_file():
            raise FileNotFoundError(f"image {r['file']} of {csv_path} not found under --images {root}")
        paths.append(path)
        points.append([[float(r[f"{p}_x"]), float(r[f"{p}_y"])] for p in PARTS])
    if len(paths) < 2:
        raise ValueError(f"--landmarks needs at least 2 images, got {len(paths)}")
    return paths, torch.tensor(points)


def run(args: argparse.Namespace) -> int:
    from ..artifacts import markdown_table, save_png, write_result
    from ..correspondence import correspondence_score, face_box, random_masks, square_masks, transform_points
    from ..data import load_image
    from ..train import resolve_device
    from .occlude import load

    device = resolve_device(args.device)
    loaded = load(args, device)
    pre = loaded.preprocessing
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    paths, points = read_landmarks(args.landmarks, args.images)
    sizes = torch.tensor([load_image(p).size[::-1] for p in paths])  # (N, 2) (h, w)
    images = torch.stack([pre.load(p) for p in paths]).to(device)
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
    (args.out / "correspondence.md").write_text(f"### {table['title']}\n\n" + markdown_table(cols, rows))
    save_png(_figure(pre, images.cpu(), masks.cpu(), rand.cpu()), args.out / "masked_images.png")
    summary = "; ".join(f"{r[0]}: " + ", ".join(f"{layer} {c.split(' ±')[0]}" for layer, c in zip(layers, r[1:], strict=False))
                        for r in rows)
    data = corr.to_dict()
    data.update(images=[str(p) for p in paths], points=pts.tolist(), mask=args.mask)
    write_result(args.out, "correspond", title="Correspondence analysis (Table 1, Fig. 8)", summary=summary,
                 params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
                 figures=[{"path": "masked_images.png", "caption": "Fig. 8: original, then the right eye, left eye "
                           "and nose masked, then random masks on the face (one row per image)", "group": "masks"}],
                 tables=[table], data=data)
    print(markdown_table(cols, rows))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _figure(pre: Any, images: torch.Tensor, masks: torch.Tensor, rand: torch.Tensor, n_random: int = 3) -> torch.Tensor:
    """Fig. 8 grid: per image, the original, each part masked, then a few random masks."""
    from ..viz import make_grid

    tiles = []
    for i in range(len(images)):
        for m in [None, *masks[i], *rand[i, :n_random]]:
            x = images[i] if m is None else torch.where(m, torch.zeros(()), images[i])
            tiles.append(pre.denormalize(x))
    return make_grid(torch.stack(tiles), nrow=1 + masks.shape[1] + min(n_random, rand.shape[1]), pad=2)
