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

from convlens.nets.loading import load_model
from convlens.transfer import feature_cache
from convlens.transfer import report as transfer_report
from convlens.transfer.probes import Features, ProtocolResult, evaluate_probes, extract_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = DATA / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
# shallow -> deep: (block, channels, stride): 1 (16, /2), 3 (24, /4), 6 (32, /8), 10 (64, /16),
# 13 (96, /16), 16 (160, /32), 18 (1280, /32: the classifier's input after global pooling)
LAYERS = ["features.1", "features.3", "features.6", "features.10", "features.13", "features.16", "features.18"]
POOL = {name: 3 for name in LAYERS} | {"features.18": 1}
CURVE_N = [1, 3, 10, 30]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224, help="center crop side (resize = size * 8/7)")
    ap.add_argument("--classes", type=int, default=102, help="use the first N classes (sorted)")
    ap.add_argument("--out", type=Path, default=Path("runs/examples/transfer_caltech101"))
    ap.add_argument("--stage", default="all",
                    choices=("extract", "svm", "svm-sgd", "softmax", "logreg", "curve", "write", "all"),
                    help="extract: fill the feature cache; svm/softmax/curve: run one part and save it; "
                    "write: merge the saved parts into result.json; all: everything in one process")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    tf = transforms.Compose([transforms.Resize(args.size * 8 // 7), transforms.CenterCrop(args.size),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = torchvision.datasets.ImageFolder(str(DATA / "caltech101"), tf)
    keep = [i for i, (_, y) in enumerate(ds.samples) if y < args.classes]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, keep), batch_size=32, num_workers=1)
    model = load_model("torchvision:mobilenet_v2", weights=WEIGHTS).model  # TF "SAME" padding from meta.json

    t0 = time.time()
    feats, hit = feature_cache.cached_features(
        lambda layers: extract_features(model, loader, layers, pool_size=POOL, progress=True),
        LAYERS, args.out / "cache", model_id=feature_cache.file_fingerprint(WEIGHTS) + ":tf-same-pad",
        dataset_id=f"{DATA / 'caltech101'}:{len(keep)}", extra={"size": args.size, "pool": POOL})
    t1 = time.time()
    if args.stage == "extract":
        return
    info = {"images": len(keep), "extract_seconds": round(t1 - t0, 1), "cached": hit}
    for stage in (("softmax", "curve", "write") if args.stage == "all" else (args.stage,)):
        run_stage(stage, args, feats, list(ds.classes)[: args.classes], info)


def run_stage(stage: str, args: argparse.Namespace, feats: Features, classes: list[str], info: dict) -> None:
    """One part of the experiment; parts save ``stage_<name>.pt`` and ``write`` merges them."""
    t1 = time.time()
    if stage in ("svm", "svm-sgd", "softmax", "logreg"):  # one probe on every layer (stages can run in parallel)
        scores: dict = {}
        per_class: dict = {}
        for layer in LAYERS:  # saved after every layer, so a partial run still reports the first layers
            one = Features({layer: feats.features[layer]}, feats.labels, feats.indices)
            res = evaluate_probes(one, n_train=[30], probes=[stage], folds=5, n_test=50, seed=0, progress=True)
            scores.update(res.scores)
            per_class.update(res.per_class)
            torch.save({"scores": scores, "per_class": per_class, "seconds": time.time() - t1},
                       args.out / f"stage_{stage}.pt")
        return
    if stage == "curve":  # Fig. 9 analog on the last layer
        top = Features({"features.18": feats.features["features.18"]}, feats.labels, feats.indices)
        res = evaluate_probes(top, n_train=CURVE_N, probes=["softmax"], folds=5, seed=0, progress=True)
        torch.save({"scores": res.scores, "per_class": res.per_class, "seconds": time.time() - t1},
                   args.out / "stage_curve.pt")
        return
    parts = {p.stem[6:]: torch.load(p, weights_only=False) for p in sorted(args.out.glob("stage_*.pt"))}
    merged = [v for k, v in parts.items() if k != "curve"]
    res = ProtocolResult({k: v for d in merged for k, v in d["scores"].items()},
                         {k: v for d in merged for k, v in d["per_class"].items()}, folds=5, seed=0)
    curve = ProtocolResult(parts["curve"]["scores"], parts["curve"]["per_class"], 5, 0) if "curve" in parts else None
    transfer_report.write_transfer_outputs(args.out, res, curve=curve, class_names=classes,
                               params={"model": "mobilenet_v2 (ImageNet, TF-same padding)", "size": args.size,
                                       "classes": len(classes), "layers": LAYERS, "pool": POOL, **info,
                                       "probe_seconds": {k: round(v["seconds"], 1) for k, v in parts.items()}})
    probes = list(dict.fromkeys(k[1] for k in res.scores))
    for i, layer in enumerate(LAYERS, 1):
        cells = [f"{p} {100 * res.mean_std(layer, p, 30)[0]:.1f} ± {100 * res.mean_std(layer, p, 30)[1]:.1f}"
                 for p in probes if (layer, p, 30) in res.scores]
        print(i, layer, *cells)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
