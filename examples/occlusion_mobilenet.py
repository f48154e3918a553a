"""Fig. 7 with an ImageNet MobileNet-v2: occlusion maps of three imagenet-sample images.

Run:  .venv/bin/python examples/occlusion_mobilenet.py [--out runs/examples/occlusion]
Needs ../shared/data (imagenet-sample, models/mobilenet_v2_imagenet). The layer-5 analog is
``features.18`` (MobileNet-v2's last conv, 1280 maps of 7x7). MobileNet is not a ConvNet, so
this uses plain batched forwards (no incremental inference). Panel (c) uses the guided rule.
The converted TF weights need TF
"SAME" padding on the stride-2 convs (see the model's README.txt); ``mobilenet()`` adds it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from convlens.images.data import imagenet_mobilenet_preprocessing
from convlens.io.artifacts import write_result
from convlens.nets.loading import load_model
from convlens.occlusion.figures import label_table, occlusion_projection, render_occlusion
from convlens.occlusion.maps import occlusion_map

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_DIR = SHARED / "models" / "mobilenet_v2_imagenet"
# MobileNet's stride-2 depthwise convs turn deconvnet projections into a checkerboard; the guided
# rule (deconvnet + the forward ReLU gates) shows structure, unless the unit is clipped at ReLU6's
# 6 (then its signal is exactly zero and panel (c) says so).
RULE = "guided"
IMAGES = ["n02112018/n02112018_Pomeranian.JPEG", "n04285008/n04285008_sports_car.JPEG",
          "n02088094/n02088094_Afghan_hound.JPEG"]


def mobilenet() -> tuple[torch.nn.Module, list[str]]:
    """The converted TF MobileNet-v2 (load_model adds its TF 'SAME' padding from meta.json) and class names."""
    loaded = load_model("torchvision:mobilenet_v2", weights=MODEL_DIR / "mobilenet_v2_imagenet.pt")
    return loaded.model, loaded.class_names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/examples/occlusion"))
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--stride", type=int, default=8)
    args = ap.parse_args()
    model, names = mobilenet()
    pre = imagenet_mobilenet_preprocessing()
    wnids = sorted(p.name for p in (SHARED / "imagenet-sample").iterdir() if p.is_dir())
    for rel in IMAGES:
        label = wnids.index(rel.split("/")[0])
        image = pre.load(SHARED / "imagenet-sample" / rel)
        t = time.perf_counter()
        occ = occlusion_map(model, image, window=args.window, stride=args.stride, target=label,
                            layer="features.18", batch_size=64)
        sec = time.perf_counter() - t
        proj, box = occlusion_projection(model, image, occ, RULE)
        out = args.out / Path(rel).stem
        out.mkdir(parents=True, exist_ok=True)
        clean = float(occ.clean_probs[label])
        title = (f"{Path(rel).name}: true class {names[label]} (clean p = {clean:.3f}, "
                 f"predicted {names[int(occ.clean_probs.argmax())]}); {sec:.0f} s")
        fig = render_occlusion(pre.denormalize(image), occ, proj, box, names, title=title, rule=RULE)
        fig.savefig(out / "occlusion.png", dpi=80)
        table = label_table(occ, names)
        summary = (f"p({names[label]}) {float(occ.target_prob.min()):.3f}..{float(occ.target_prob.max()):.3f} "
                   f"(clean {clean:.3f}); features.18 map {occ.channel}; "
                   f"{occ.target_prob.numel()} positions, {sec:.0f} s")
        write_result(out, "occlusion", title="Occlusion sensitivity (Fig. 7), MobileNet-v2", summary=summary,
                     params={"image": rel, "window": args.window, "stride": args.stride, "layer": "features.18"},
                     figures=[{"path": "occlusion.png", "caption": title}], tables=[table], data=occ.to_dict())
        print(summary)
        for row in table["rows"][:4]:
            print("   ", row)


if __name__ == "__main__":
    main()
