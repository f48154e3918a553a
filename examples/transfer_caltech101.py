"""Table 7 analog: linear probes on 7 depths of ImageNet MobileNet-v2, Caltech-101, 30 images/class, 5 folds.

The paper places a linear SVM / softmax on the features of each ZFNet layer (Table 7) and sees
accuracy rise with depth. Here "layers 1..7" are seven MobileNet-v2 blocks from shallow to deep
(the ImageNet model available offline); conv blocks are average-pooled to 3x3 (layer 7, the
1280-d input of the classifier, to 1x1). Also writes the accuracy-vs-n curve (Fig. 9 style).

    .venv/bin/python examples/transfer_caltech101.py [--size 224] [--classes 102] [--out DIR]

Takes ~10-20 min on 2 busy CPU cores at 224 px (feature extraction dominates; cached after).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

from convlens.commands import transfer as cmd
from convlens.transfer import Features, evaluate_probes, extract_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = DATA / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
# shallow -> deep: (block, channels, stride): 1 (16, /2), 3 (24, /4), 6 (32, /8), 10 (64, /16),
# 13 (96, /16), 16 (160, /32), 18 (1280, /32: the classifier's input after global pooling)
LAYERS = ["features.1", "features.3", "features.6", "features.10", "features.13", "features.16", "features.18"]
POOL = {name: 3 for name in LAYERS} | {"features.18": 1}


def use_tf_same_padding(model: torch.nn.Module) -> torch.nn.Module:
    """The weights come from TF-slim: stride-2 convs pad 0 top/left, 1 bottom/right (see README.txt)."""
    import torch.nn.functional as F

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.stride == (2, 2):
            mod.padding = (0, 0)

            def pad(mod: torch.nn.Conv2d, inp: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
                x = inp[0]
                h, w = x.shape[-2:]
                k, s = mod.kernel_size[0], mod.stride[0]
                ph, pw = max((-(-h // s) - 1) * s + k - h, 0), max((-(-w // s) - 1) * s + k - w, 0)
                return (F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),)

            mod.register_forward_pre_hook(pad)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224, help="center crop side (resize = size * 8/7)")
    ap.add_argument("--classes", type=int, default=102, help="use the first N classes (sorted)")
    ap.add_argument("--out", type=Path, default=Path("/work/runs/examples/transfer_caltech101"))
    ap.add_argument("--extract-only", action="store_true", help="fill the feature cache and stop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    tf = transforms.Compose([transforms.Resize(args.size * 8 // 7), transforms.CenterCrop(args.size),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = torchvision.datasets.ImageFolder(str(DATA / "caltech101"), tf)
    keep = [i for i, (_, y) in enumerate(ds.samples) if y < args.classes]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, keep), batch_size=32, num_workers=1)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    use_tf_same_padding(model.eval())

    t0 = time.time()
    feats, hit = cmd.cached_features(
        lambda layers: extract_features(model, loader, layers, pool_size=POOL, progress=True),
        LAYERS, args.out / "cache", model_id=cmd.file_fingerprint(WEIGHTS) + ":tf-same-pad",
        dataset_id=f"{DATA / 'caltech101'}:{len(keep)}", extra={"size": args.size, "pool": POOL})
    t1 = time.time()
    if args.extract_only:
        return
    res = evaluate_probes(feats, n_train=[30], probes=["svm", "softmax"], folds=5, n_test=50, seed=0)
    top = Features({"features.18": feats.features["features.18"]}, feats.labels, feats.indices)
    curve = evaluate_probes(top, n_train=[1, 2, 5, 10, 15, 20, 30], probes=["softmax"], folds=5, seed=0)
    t2 = time.time()
    classes = [c for c in ds.classes][: args.classes]
    cmd.write_transfer_outputs(args.out, res, curve=curve, class_names=classes,
                           params={"model": "mobilenet_v2 (ImageNet, TF-same padding)", "size": args.size,
                                   "classes": len(classes), "images": len(keep), "layers": LAYERS,
                                   "pool": POOL, "extract_seconds": round(t1 - t0, 1),
                                   "cached": hit, "probe_seconds": round(t2 - t1, 1)})
    for layer in LAYERS:
        row = [f"{p} {100 * res.mean_std(layer, p, 30)[0]:.1f} ± {100 * res.mean_std(layer, p, 30)[1]:.1f}"
               for p in ("svm", "softmax")]
        print(layer, *row)
    print(f"extract {t1 - t0:.0f}s, probes {t2 - t1:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
