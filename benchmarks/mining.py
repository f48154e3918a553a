"""Cost of top-9 mining (Fig. 2) over a bare forward pass, and the projection stage's speed.

ZFNet at 224 with random weights, random images held in memory (no decoding), conv1..conv5.
The same batches go through (a) a bare forward to conv5 (the deepest mined layer: mining stops
there too), (b) a bare full forward ``model(x)`` and (c) ``mine_top_activations`` (top-9
bookkeeping, no projections), interleaved and repeated; medians are compared. Then the top-9 of
16 conv5 maps are projected with ``unit_tiles`` (batched deconvnet) for projections/s.

    .venv/bin/python benchmarks/mining.py [--images 512] [--repeats 3] [--device cpu]

The last line is one JSON object; ``overhead`` = mining / bare forward to conv5 (goal <= 1.15).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from convlens.model import build_model
from convlens.topk import mine_top_activations, unit_tiles

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--maps", type=int, default=16, help="conv5 maps whose top-9 are projected")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = build_model("zfnet", seed=0).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen).to(device)
    idx = torch.arange(args.images)
    batches = [(x[s:s + args.batch_size], idx[s:s + args.batch_size], idx[s:s + args.batch_size])
               for s in range(0, args.images, args.batch_size)]

    def forward_conv5() -> None:
        with torch.inference_mode():
            for xb, _, _ in batches:
                model.features(xb, ["conv5"])

    def forward_full() -> None:
        with torch.inference_mode():
            for xb, _, _ in batches:
                model(xb)

    tops = {}

    def mine() -> None:
        tops.update(mine_top_activations(model, batches, LAYERS, k=9))

    forward_conv5()  # warm-up (allocator, kernels)
    runs: dict[str, list[float]] = {"forward to conv5": [], "forward (full)": [], "mining conv1-5": []}
    for _ in range(args.repeats):
        runs["forward to conv5"].append(timed(forward_conv5, device))
        runs["mining conv1-5"].append(timed(mine, device))
        runs["forward (full)"].append(timed(forward_full, device))
    med = {k: statistics.median(v) for k, v in runs.items()}
    overhead = med["mining conv1-5"] / med["forward to conv5"]
    per_rep = [m / f for m, f in zip(runs["mining conv1-5"], runs["forward to conv5"])]

    ds = [(x[i],) for i in range(args.images)]
    maps = list(range(args.maps))
    unit_tiles(model, ds, tops["conv5"], maps[:1])  # warm-up
    t_proj = timed(lambda: unit_tiles(model, ds, tops["conv5"], maps), device)
    n_proj = args.maps * 9
    print(f"ZFNet {args.size}x{args.size}, {args.images} random images, batch {args.batch_size}, "
          f"{device}, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats (median)")
    print(f"{'pass':<20} {'seconds':>8} {'images/s':>9} {'x fwd-conv5':>12}")
    for name, t in med.items():
        print(f"{name:<20} {t:8.2f} {args.images / t:9.1f} {t / med['forward to conv5']:12.3f}")
    print(f"per-repeat mining/forward ratios: {', '.join(f'{r:.3f}' for r in per_rep)}")
    print(f"projection (unit_tiles, conv5, {n_proj} units, batched deconvnet): {t_proj:.2f} s, "
          f"{n_proj / t_proj:.1f} projections/s")
    print(json.dumps({
        "overhead": round(overhead, 4), "overhead_vs_full_forward": round(med["mining conv1-5"] / med["forward (full)"], 4),
        "per_repeat_overhead": [round(r, 4) for r in per_rep], "images": args.images, "size": args.size,
        "batch_size": args.batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "projections_per_s": round(n_proj / t_proj, 2), "projection_layer": "conv5", "projections": n_proj,
    }))


if __name__ == "__main__":
    main()
