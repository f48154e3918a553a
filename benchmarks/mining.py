"""Cost of top-9 mining (Fig. 2) over a bare forward pass, and the projection stage's speed.

ZFNet at 224 with random weights, random images held in memory (no decoding), conv1..conv5.

* Paired per batch (the headline ``overhead``): for every batch, in alternating order, a bare
  forward to conv5 (the deepest mined layer; mining stops there too) and the same forward plus the
  top-9 bookkeeping (``TopKAccumulator.update`` on conv1..conv5), and the same plus the rows of
  the activation tables (:mod:`convlens.topk.acttable`, memory-mapped float16 files in a temporary
  folder): ``overhead_with_table``, and ``table_share`` = what the table adds to the mining step.
  Pairing batch by batch cancels the load drift of a shared machine, which swamps whole-pass timings.
* End to end: one ``mine_top_activations`` pass against one bare-forward pass and one full
  ``model(x)`` pass (noisier).
* Projection stage: the top-9 of 16 conv5 maps through ``unit_tiles`` (batched deconvnet: one
  ``project_units`` call per 64 units), beside Captum's ``NeuronDeconvolution`` one unit per call
  (``--captum N`` units), same process.

    .venv/bin/python benchmarks/mining.py [--images 512] [--repeats 2] [--device cpu] [--projection-only]

The last line is one JSON object; ``overhead`` = mining / bare forward (goal <= 1.15).

Real-model mode (``--real``, :mod:`mining_real`): torchvision MobileNetV2 (the shared ImageNet
weights when present, else random weights), the imagenet-sample folder (else synthetic JPEGs in a
temporary ImageFolder), 3 block layers, every map projected; last line JSON with
``overhead_with_projections`` and ``peak_rss_gb``.

    .venv/bin/python benchmarks/mining.py --real [--images 1000] [--layers features.3,features.9,features.16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from convlens.nets.convnet import build_model
from convlens.topk.accumulator import TopKAccumulator
from convlens.topk.acttable import ActTableWriter
from convlens.topk.mining import mine_top_activations
from convlens.topk.tiles import unit_tiles

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
    import sys

    if "--real" in sys.argv:
        from mining_real import main as real_main

        sys.argv.remove("--real")
        real_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="paired passes over all batches")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--maps", type=int, default=16, help="conv5 maps whose top-9 are projected")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--captum", type=int, default=8, help="units projected one by one with Captum (0: skip)")
    ap.add_argument("--projection-only", action="store_true", help="skip the mining timings (mine once, untimed)")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = build_model("zfnet", seed=0).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen).to(device)
    idx = torch.arange(args.images)
    batches = [(x[s:s + args.batch_size], idx[s:s + args.batch_size], idx[s:s + args.batch_size])
               for s in range(0, args.images, args.batch_size)]

    acc = TopKAccumulator(LAYERS, k=9)

    def fwd(xb: torch.Tensor) -> None:
        model.features(xb, ["conv5"])

    def mine_step(xb: torch.Tensor, ib: torch.Tensor) -> None:
        acc.update(model.features(xb, LAYERS), ib)

    acc_t = TopKAccumulator(LAYERS, k=9)
    tmp = tempfile.TemporaryDirectory()
    writer = ActTableWriter(tmp.name, args.images, LAYERS, "benchmark")
    writer.open(resume=False)

    def table_step(xb: torch.Tensor, ib: torch.Tensor) -> None:
        acc_t.update(model.features(xb, LAYERS), ib)
        for n in LAYERS:
            writer.write(n, ib, acc_t.last_image_max[n])
        writer.mark(ib, None)

    t_fwd = t_mine = t_table = 1.0
    if args.projection_only:
        args.repeats = 0
    with torch.inference_mode():
        fwd(batches[0][0])  # warm-up
        if not args.projection_only:
            t_fwd = t_mine = t_table = 0.0
        for rep in range(args.repeats):
            for b, (xb, _, ib) in enumerate(batches):
                steps = [("fwd", lambda xb=xb: fwd(xb)), ("mine", lambda xb=xb, ib=ib: mine_step(xb, ib)),
                         ("table", lambda xb=xb, ib=ib: table_step(xb, ib))]
                shift = (b + rep) % 3
                for name, step in steps[shift:] + steps[:shift]:  # rotating order
                    t = timed(step, device)
                    t_fwd, t_mine, t_table = (t_fwd + t * (name == "fwd"), t_mine + t * (name == "mine"),
                                              t_table + t * (name == "table"))
        writer.flush()
    tmp.cleanup()
    overhead = t_mine / t_fwd

    tops = {}

    def forward_loop(full: bool) -> None:
        with torch.inference_mode():
            for xb, _, _ in batches:
                model(xb) if full else fwd(xb)

    e2e = {"mining conv1-5": timed(lambda: tops.update(mine_top_activations(model, batches, LAYERS, k=9)), device)}
    if not args.projection_only:
        e2e = {"forward to conv5": timed(lambda: forward_loop(False), device), **e2e,
               "forward (full)": timed(lambda: forward_loop(True), device)}

    ds = [(x[i],) for i in range(args.images)]
    maps = list(range(args.maps))
    unit_tiles(model, ds, tops["conv5"], maps[:1])  # warm-up
    t_proj = timed(lambda: unit_tiles(model, ds, tops["conv5"], maps), device)
    n_proj = args.maps * 9
    captum_per_s = captum_rate(model, x, tops["conv5"], args.captum, device) if args.captum else None
    n = max(1, args.images * args.repeats)
    print(f"ZFNet {args.size}x{args.size}, {args.images} random images, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"paired per batch ({args.repeats} passes, alternating order):")
    print(f"  {'pass':<28} {'seconds':>8} {'images/s':>9} {'ratio':>7}")
    print(f"  {'forward to conv5':<28} {t_fwd:8.2f} {n / t_fwd:9.1f} {1.0:7.3f}")
    print(f"  {'forward + top-9 bookkeeping':<28} {t_mine:8.2f} {n / t_mine:9.1f} {overhead:7.3f}")
    print(f"  {'... + activation tables':<28} {t_table:8.2f} {n / t_table:9.1f} {t_table / t_fwd:7.3f}")
    print("end to end (one pass each, noisier):")
    for name, t in e2e.items():
        print(f"  {name:<28} {t:8.2f} {args.images / t:9.1f} {t / e2e.get('forward to conv5', t):7.3f}")
    print(f"projection (unit_tiles, conv5, {n_proj} units, batched deconvnet): {t_proj:.2f} s, "
          f"{n_proj / t_proj:.1f} projections/s")
    if captum_per_s:
        print(f"captum NeuronDeconvolution, one unit per call ({args.captum} units): {captum_per_s:.1f} projections/s "
              f"-> batched is {n_proj / t_proj / captum_per_s:.2f}x")
    timed_mining = not args.projection_only
    print(json.dumps({
        "overhead": round(overhead, 4) if timed_mining else None,
        "overhead_with_table": round(t_table / t_fwd, 4) if timed_mining else None,
        "table_share": round(t_table / t_mine - 1, 4) if timed_mining else None,
        "overhead_end_to_end": round(e2e["mining conv1-5"] / e2e["forward to conv5"], 4) if timed_mining else None,
        "overhead_end_to_end_vs_full_forward":
            round(e2e["mining conv1-5"] / e2e["forward (full)"], 4) if timed_mining else None,
        "images": args.images, "size": args.size, "batch_size": args.batch_size, "repeats": args.repeats,
        "device": str(device), "threads": torch.get_num_threads(),
        "paired_seconds": {"forward": round(t_fwd, 3), "mining": round(t_mine, 3), "mining_table": round(t_table, 3)},
        "end_to_end_seconds": {k: round(v, 3) for k, v in e2e.items()},
        "projections_per_s": round(n_proj / t_proj, 2), "projection_layer": "conv5", "projections": n_proj,
        "captum_projections_per_s": round(captum_per_s, 2) if captum_per_s else None,
    }))


def captum_rate(model: torch.nn.Module, x: torch.Tensor, top, n: int, device: torch.device) -> float:
    """Captum's NeuronDeconvolution, one call per unit (its documented use), on the mined units."""
    from captum.attr import NeuronDeconvolution

    deconv = NeuronDeconvolution(model, model.relu5)
    units = [(c, r) for c in range(top.values.shape[0]) for r in range(top.values.shape[1])][:n]

    def run() -> None:
        for c, r in units:
            i = int(top.dataset_indices[c, r])
            y, xx = top.positions[c, r].tolist()
            deconv.attribute(x[i:i + 1].clone().requires_grad_(True), neuron_selector=(c, y, xx))

    run_one = units[:1]
    deconv.attribute(x[:1].clone().requires_grad_(True), neuron_selector=(run_one[0][0], 0, 0))  # warm-up
    return n / timed(run, device)


if __name__ == "__main__":
    main()
