"""Fig. 5 with an ImageNet MobileNet-v2: five images translated, scaled and rotated.

Run:  .venv/bin/python examples/invariance_curves.py [--out runs/examples/invariance]
The paper's five classes (lawn mower, Shih-Tzu, African crocodile, African grey, entertainment
center) from ../shared/data/imagenet-sample. Layers: ``features.0`` (the first conv block: the
analog of layer 1) and ``classifier.0`` (the pooled 1280-d vector before the classifier: layer 7).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from occlusion_mobilenet import SHARED, mobilenet

from convlens.images.data import imagenet_mobilenet_preprocessing
from convlens.invariance.analysis import invariance_curves, transform_images
from convlens.invariance.figures import example_params, render_invariance
from convlens.io.artifacts import markdown_table, write_result

IMAGES = ["n03649909/n03649909_lawn_mower.JPEG", "n02086240/n02086240_Shih-Tzu.JPEG",
          "n01697457/n01697457_African_crocodile.JPEG", "n01817953/n01817953_African_grey.JPEG",
          "n03290653/n03290653_entertainment_center.JPEG"]
LAYERS = ["features.0", "classifier.0"]
SWEEPS = {"translate": list(range(-60, 61, 10)), "scale": [round(0.6 + 0.1 * i, 1) for i in range(13)],
          "rotate": list(range(0, 361, 15))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/examples/invariance"))
    args = ap.parse_args()
    model, names = mobilenet()
    pre = imagenet_mobilenet_preprocessing()
    wnids = sorted(p.name for p in (SHARED / "imagenet-sample").iterdir() if p.is_dir())
    labels = [wnids.index(r.split("/")[0]) for r in IMAGES]
    images = torch.stack([pre.load(SHARED / "imagenet-sample" / r) for r in IMAGES])
    curves = {t: invariance_curves(model, images, transform=t, params=v, layers=LAYERS, labels=labels)
              for t, v in SWEEPS.items()}
    examples = {t: torch.stack([pre.denormalize(transform_images(images[:1], t, v)[0])
                                for v in example_params(c.params)]) for t, c in curves.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    short = [names[i] for i in labels]
    render_invariance(curves, examples, short, LAYERS).savefig(args.out / "invariance.png", dpi=80)
    cols = ["image", "P(true) clean"] + [f"P(true) min under {t}" for t in SWEEPS] + \
           [f"{LAYERS[-1]} dist @ {t} {v}" for t, v in (("translate", 60), ("scale", 1.8), ("rotate", 90))]
    rows = []
    for i, n in enumerate(short):
        idx = {t: SWEEPS[t].index(v) for t, v in (("translate", 60), ("scale", 1.8), ("rotate", 90))}
        rows.append([n, f"{float(curves['rotate'].probs[i, 0]):.3f}"]
                    + [f"{float(curves[t].probs[i].min()):.3f}" for t in SWEEPS]
                    + [f"{float(curves[t].distances[LAYERS[-1]][i, j]):.2f}" for t, j in idx.items()])
    md = markdown_table(cols, rows)
    (args.out / "invariance.md").write_text(md)
    write_result(args.out, "invariance", title="Feature invariance (Fig. 5), MobileNet-v2",
                 summary="5 images; vertical translation -60..60 px, scale 0.6..1.8, rotation 0..360 deg",
                 params={"layers": LAYERS, "sweeps": SWEEPS}, figures=[{"path": "invariance.png", "caption": "Fig. 5"}],
                 tables=[{"title": "Invariance summary", "columns": cols, "rows": rows}],
                 data={t: c.to_dict() for t, c in curves.items()})
    print(md)


if __name__ == "__main__":
    main()
