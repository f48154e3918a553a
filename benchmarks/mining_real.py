"""Fig. 2 at dataset scale on a real CNN: mining + projecting every map, against a bare forward.

Run through ``benchmarks/mining.py --real`` (or directly). Workload: torchvision MobileNetV2 (the
ImageNet weights under ``../shared/data/models`` when present, else random weights), the
``imagenet-sample`` folder (else synthetic JPEGs written to a temporary ImageFolder), the same
DataLoader for every stage (decoding, resize 256, center crop 224), 3 block layers, every map's
top-9 projected with ``rule="auto"`` and written as PNGs, plus one labelled sheet per layer.

Stages, one pass each, in this order (the machine's load drifts: read the ratios, not the speeds):

1. bare forward: ``model(x)`` over the loader (inference mode);
2. mining: ``mine_top_activations`` (forward to the deepest layer + top-9 bookkeeping);
3. projecting: ``project_mined`` for every map of every layer (+ the sheets).

``overhead_with_projections`` = (mining + projecting) / bare forward; ``peak_rss_gb`` = the
process's peak resident memory (``ru_maxrss``; DataLoader workers, if any, are reported apart).
``--maps-limit N`` projects only the first N maps per layer and *extrapolates* the projection time
to all maps (flagged ``"extrapolated": true`` in the JSON).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from convlens.images.data import collate_skip, open_dataset
from convlens.io.artifacts import save_png
from convlens.nets.loading import load_model
from convlens.topk.mining import mine_top_activations
from convlens.topk.units import display_class_names, layer_sheets, project_mined

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def synthetic_folder(root: Path, n: int, classes: int = 10) -> Path:
    """n smooth random 256x256 JPEGs in ``classes`` class folders (an ImageFolder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(d / f"{i:05d}.jpg", quality=90)
    return root


def gb(kb: int) -> float:
    return kb / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layers", default="features.3,features.9,features.16", help="early, middle, late blocks")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: everything in this process)")
    ap.add_argument("--project-batch", type=int, default=8, help="units per project_units call")
    ap.add_argument("--maps-limit", type=int, default=None, help="project only N maps per layer; extrapolate")
    ap.add_argument("--data", type=Path, default=SHARED / "imagenet-sample")
    ap.add_argument("--weights", type=Path, default=SHARED / "models" / "mobilenet_v2_imagenet" /
                    "mobilenet_v2_imagenet.pt")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temporary folder)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # the ReLU6-as-ReLU note of the rectifying rules
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory()
    weights = args.weights if args.weights.is_file() else None
    loaded = load_model("torchvision:mobilenet_v2", weights=weights, map_location=device)
    model = loaded.model.eval()
    data = args.data if args.data.is_dir() else synthetic_folder(Path(tmp.name) / "images", args.images)
    ds = open_dataset(str(data), "train", loaded.preprocessing, limit=args.images)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_skip)
    layers = [s for s in args.layers.split(",") if s]
    out = args.out or Path(tmp.name) / "mine"
    names = display_class_names(ds.classes, loaded.class_names)

    t = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="bare forward", unit="batch"):
            model(batch[0].to(device))
    t_fwd = time.perf_counter() - t

    t = time.perf_counter()
    tops = mine_top_activations(model, loader, layers, k=9, progress=True)
    t_mine = time.perf_counter() - t

    per_layer = {}
    units_all = sum(top.values.numel() for top in tops.values())
    limit = args.maps_limit
    todo = sum(min(limit or 10**9, top.values.shape[0]) * top.values.shape[1] for top in tops.values())
    t_proj = 0.0
    with tqdm(total=todo, desc="projecting", unit="unit") as bar:
        for layer, top in tops.items():
            c = top.values.shape[0]
            maps = list(range(min(limit or c, c)))
            t = time.perf_counter()
            done = project_mined(model, ds, top, out, maps=maps, to_pixels=loaded.preprocessing.denormalize,
                                 class_names=names, batch=args.project_batch, progress=bar)
            for i, sheet in enumerate(layer_sheets(out, layer, done.entries, maps[:16], rule=done.rule,
                                                   saturated=torch.nonzero(top.saturated).flatten().tolist())):
                save_png(sheet, out / f"{layer}_grid{'' if i == 0 else f'_{i + 1}'}.png")
            dt = time.perf_counter() - t
            units = len(maps) * top.values.shape[1]
            t_proj += dt * c / len(maps)  # extrapolated to every map when --maps-limit cut them
            per_layer[layer] = {"maps": c, "rule": done.rule, "projected_units": units, "seconds": round(dt, 2),
                                "units_per_s": round(units / dt, 2), "saturated_maps": int(top.saturated.sum())}
    rss = gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    rss_children = gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    n = len(ds)
    print(f"MobileNetV2 ({'ImageNet weights' if weights else 'random weights'}), {n} images from "
          f"{'imagenet-sample' if data == args.data else 'synthetic JPEGs'}, batch {args.batch_size}, "
          f"{args.workers} workers, {device}, {torch.get_num_threads()} threads; layers {', '.join(layers)}")
    print(f"  {'stage':<34} {'seconds':>9} {'rate':>16} {'/ forward':>10}")
    print(f"  {'bare forward (full model)':<34} {t_fwd:9.1f} {n / t_fwd:12.1f} img/s {1.0:10.2f}")
    print(f"  {'mining (top-9, 3 layers)':<34} {t_mine:9.1f} {n / t_mine:12.1f} img/s {t_mine / t_fwd:10.2f}")
    print(f"  {'projecting all maps' + (' (extrap.)' if limit else ''):<34} {t_proj:9.1f} "
          f"{units_all / t_proj:11.2f} unit/s {t_proj / t_fwd:10.2f}")
    for layer, d in per_layer.items():
        print(f"    {layer:<16} {d['maps']:4d} maps, rule {d['rule']:<9} {d['units_per_s']:8.2f} unit/s, "
              f"{d['saturated_maps']} saturated maps")
    print(f"  peak RSS {rss:.2f} GB (DataLoader workers: {rss_children:.2f} GB)")
    print(json.dumps({
        "overhead_with_projections": round((t_mine + t_proj) / t_fwd, 3), "peak_rss_gb": round(rss, 3),
        "peak_rss_workers_gb": round(rss_children, 3), "images": n, "layers": per_layer, "units": units_all,
        "seconds": {"forward": round(t_fwd, 2), "mining": round(t_mine, 2), "projecting": round(t_proj, 2)},
        "extrapolated": bool(limit), "weights": "imagenet" if weights else "random",
        "data": "imagenet-sample" if data == args.data else "synthetic", "batch_size": args.batch_size,
        "project_batch": args.project_batch, "device": str(device), "threads": torch.get_num_threads(),
    }))
    tmp.cleanup()


if __name__ == "__main__":
    main()
