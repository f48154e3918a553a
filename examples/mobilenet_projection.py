"""Project the strongest units of an ImageNet MobileNet-v2 back to pixels (Sec. 2.1 on a modern CNN).

Uses the generic autograd path of :mod:`convlens.deconv.project` on torchvision's ``mobilenet_v2`` with
the ImageNet weights in ``../shared/data/models/mobilenet_v2_imagenet`` (input x = pixel/127.5 - 1,
TF "SAME" padding restored with the hook from that folder's README) and a few images of
``../shared/data/imagenet-sample``. For the 4 strongest channels of a middle layer in each image it
shows the image patch under the unit's receptive field and the unit's projection with the three
rules: ``deconvnet`` (the paper), ``guided`` and ``gradient``.

What to expect: MobileNet-v2 has no max pooling, so the deconvnet has no switches and its
projection does not depend on the image (a fixed pattern per unit position, mostly the stride-2
checkerboard); guided backprop keeps the forward relu gates and shows the image structure that
drives the unit. This is the practical reason to offer ``guided`` next to the paper's rule.

Run:  .venv/bin/python examples/mobilenet_projection.py [--layer features.10.conv.0.2] [--out DIR]
Writes DIR/mobilenet_projections.png (rows: image x channel; columns: patch, deconvnet, guided,
gradient, each cropped to the receptive field) and DIR/mobilenet_full.png (first image, full size).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from convlens.deconv.project import RULES, _top_units, project_units
from convlens.deconv.view import CONTRAST, contrast_scale, present, render, shade
from convlens.io.artifacts import save_png
from convlens.io.viz import make_grid
from convlens.nets.loading import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = ("n02085620", "n01440764", "n02690373")  # chihuahua, tench, airliner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="features.10.conv.0.2", help="a ReLU6 module of mobilenet_v2")
    ap.add_argument("--channels", type=int, default=4, help="strongest channels per image")
    ap.add_argument("--out", type=Path, default=Path("runs/examples/mobilenet_projection"))
    args = ap.parse_args()

    folder = SHARED / "models" / "mobilenet_v2_imagenet"
    # load_model reads meta.json beside the weights: x = pixel/127.5 - 1, class names, TF "SAME" padding
    loaded = load_model("torchvision:mobilenet_v2", weights=folder / "mobilenet_v2_imagenet.pt")
    model, names, pre = loaded.model, loaded.class_names, loaded.preprocessing
    paths = [next((SHARED / "imagenet-sample" / wnid).glob("*")) for wnid in IMAGES]
    x = torch.stack([pre.load(p) for p in paths])  # (N, 3, 224, 224)
    with torch.no_grad():
        print("predictions:", ", ".join(names[int(i)] for i in model(x).argmax(1)))

    # the strongest channels of each image (the same channels are projected with every rule)
    from convlens.core.capture import record_activations

    with torch.no_grad(), record_activations(model, [args.layer]) as acts:
        model(x)
    act = acts[args.layer]
    chans = act.flatten(2).amax(-1).topk(args.channels, dim=1).indices  # (N, C')
    units = torch.stack([_top_units(act[n : n + 1], chans[n].tolist(), 1, args.layer)[0] for n in range(len(x))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ReLU6-as-rectifier note
        projs = {rule: project_units(model, x, args.layer, units, rule=rule) for rule in RULES}
    boxes = projs["deconvnet"].boxes
    pixels = pre.denormalize(x)
    side = 128
    tiles = []
    for n in range(len(x)):
        for k in range(args.channels):
            # one box per unit (where the guided projection is), the same for every rule and the patch
            view = present(projs["guided"].images[n, k], pixels[n], rf_box=boxes[n, k], size=side)
            box = list(view.display_box)
            tiles.append(view.patch)
            tiles += [render(projs[r].images[n, k], box, side) for r in RULES]
            c, yy, xx = units[n, k].tolist()
            print(f"{paths[n].name:<32} channel {c:>3} at ({yy},{xx}) = {float(projs['guided'].values[n, k]):6.2f} "
                  f"box {box}")
    args.out.mkdir(parents=True, exist_ok=True)
    grid = make_grid(torch.stack(tiles), nrow=1 + len(RULES), pad=4)
    save_png(grid, args.out / "mobilenet_projections.png")
    full = [pixels[0]] + [shade(projs[r].images[0, 0], contrast_scale(projs[r].images[0, 0])) for r in RULES]
    save_png(make_grid(torch.stack(full), nrow=4, pad=4), args.out / "mobilenet_full.png")
    print(f"layer {args.layer}: columns = image patch, {', '.join(RULES)} (each unit's box: where its guided "
          f"projection is; {CONTRAST}); wrote {args.out}/mobilenet_projections.png "
          f"and mobilenet_full.png")


if __name__ == "__main__":
    main()
