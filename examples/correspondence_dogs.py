"""Table 1 / Fig. 8 with an ImageNet MobileNet-v2: the five frontal dog faces of ../shared/data/dog-faces.

Run:  .venv/bin/python examples/correspondence_dogs.py [--mask 30] [--out runs/examples/correspond]
Layers (MobileNet-v2 has no fc6/fc7): ``features.13`` (last 14x14 block, 96 maps: a mid/high conv
layer like ZFNet's 13x13 layer 5), ``features.18`` (last conv, 1280 maps of 7x7) and
``classifier.0`` (the 1280-d pooled vector fed to the classifier: the analog of layer 7).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from occlusion_mobilenet import SHARED, mobilenet

from convlens.correspondence.analysis import (
    correspondence_score,
    face_box,
    random_masks,
    square_masks,
    transform_points,
)
from convlens.correspondence.landmarks import PARTS, masked_images_grid, read_landmarks
from convlens.images.data import imagenet_mobilenet_preprocessing, load_image
from convlens.io.artifacts import markdown_table, save_png, write_result

LAYERS = ["features.13", "features.18", "classifier.0"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/examples/correspond"))
    ap.add_argument("--mask", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    model, _ = mobilenet()
    pre = imagenet_mobilenet_preprocessing()
    root = SHARED / "dog-faces"
    paths, points = read_landmarks(root / "landmarks.csv", root)
    sizes = torch.tensor([load_image(p).size[::-1] for p in paths])
    images = torch.stack([pre.load(p) for p in paths])
    pts = transform_points(points, sizes, pre.resize, pre.crop)
    names = list(PARTS.values())
    masks = square_masks(pts, args.mask, 224, 224, names=names)
    rand = random_masks(face_box(pts), args.mask, 224, 224, args.repeats, seed=0)
    corr = correspondence_score(model, images, masks, LAYERS, part_names=names, random=rand)
    cols, rows = corr.table()
    args.out.mkdir(parents=True, exist_ok=True)
    save_png(masked_images_grid(pre, images, masks, rand), args.out / "masked_images.png")
    md = markdown_table(cols, rows)
    (args.out / "correspondence.md").write_text(md)
    write_result(args.out, "correspond", title="Correspondence analysis (Table 1, Fig. 8), MobileNet-v2",
                 summary=f"5 dog faces, {args.mask}px masks, random: {args.repeats} draws inside the face box",
                 params={"mask": args.mask, "repeats": args.repeats, "layers": LAYERS},
                 figures=[{"path": "masked_images.png", "caption": "original, right eye, left eye, nose, random"}],
                 tables=[{"title": "Mean feature sign change", "columns": cols, "rows": rows}], data=corr.to_dict())
    print(md)


if __name__ == "__main__":
    main()
